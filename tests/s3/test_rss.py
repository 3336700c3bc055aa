"""Memory stays bounded whatever the object size: a 2 GiB PUT and GET while sampling the server's RSS."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

import pytest

MiB = 1 << 20
SIZE = 2 << 30
RSS_GROWTH_LIMIT = 100 * MiB


def rss(pid: int) -> int:
    """The resident set size of process `pid` in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class PeakRSS:
    """Samples a process's RSS every `interval` seconds in a thread while in the with-block."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss(self.pid))


def random_file(path: Path, size: int, chunk: int = 16 * MiB) -> str:
    """Write `size` random bytes to `path` chunk by chunk; returns their SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size // chunk):
            data = os.urandom(chunk)
            digest.update(data)
            f.write(data)
    return digest.hexdigest()


@pytest.mark.slow
def test_two_gib_object_with_bounded_rss(own_server, tmp_path):
    need = 2 * SIZE + (1 << 30)  # the source file, the cartridge, and margin
    assert shutil.disk_usage(tmp_path).free > need, f"{tmp_path} needs {need >> 30} GiB free"
    source = tmp_path / "source.bin"
    expected = random_file(source, SIZE)
    server = own_server(blocks=(SIZE + (256 * MiB)) // 4096)
    s3 = server.client()
    s3.create_bucket(Bucket="big")
    baseline = rss(server.proc.pid)
    with PeakRSS(server.proc.pid) as put_rss, open(source, "rb") as body:
        s3.put_object(Bucket="big", Key="two-gib", Body=body)
    source.unlink()
    digest = hashlib.sha256()
    with PeakRSS(server.proc.pid) as get_rss:
        stream = s3.get_object(Bucket="big", Key="two-gib")["Body"]
        for chunk in stream.iter_chunks(MiB):
            digest.update(chunk)
    assert digest.hexdigest() == expected
    growth = max(put_rss.peak, get_rss.peak) - baseline
    print(f"RSS baseline {baseline / MiB:.0f} MiB, peak during PUT {put_rss.peak / MiB:.0f} MiB, "
          f"during GET {get_rss.peak / MiB:.0f} MiB")
    assert growth < RSS_GROWTH_LIMIT, f"server RSS grew by {growth / MiB:.0f} MiB"
