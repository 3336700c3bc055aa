"""Memory stays bounded whatever the object size: a 2 GiB PUT and GET while sampling the server's RSS."""

from __future__ import annotations

import hashlib
import io
import random
import shutil

import pytest

from benchmarks.procstat import PeakRSS, rss

MiB = 1 << 20
SIZE = 2 << 30
RSS_GROWTH_LIMIT = 100 * MiB


class PatternBody(io.RawIOBase):
    """`size` pseudo-random bytes generated on demand (seekable, so clients can hash and rewind):
    a 2 GiB body needs neither 2 GiB of memory nor of disk in the test."""

    def __init__(self, size: int) -> None:
        self.size, self.pos = size, 0
        self._cached: tuple[int, bytes] = (-1, b"")

    def block(self, index: int) -> bytes:
        if self._cached[0] != index:  # clients read in small pieces: make each block once
            self._cached = (index, random.Random(index).randbytes(MiB))
        return self._cached[1]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, min(self.size, base + offset))
        return self.pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.size - self.pos, MiB - self.pos % MiB)
        start = self.pos % MiB
        buffer[:n] = self.block(self.pos // MiB)[start : start + n]
        self.pos += n
        return n

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for index in range(-(-self.size // MiB)):
            digest.update(self.block(index)[: min(MiB, self.size - index * MiB)])
        return digest.hexdigest()


@pytest.mark.slow
def test_two_gib_object_with_bounded_rss(own_server, tmp_path):
    need = SIZE + (512 * MiB)  # the cartridge, and margin
    assert shutil.disk_usage(tmp_path).free > need, f"{tmp_path} needs {need >> 30} GiB free"
    body = PatternBody(SIZE)
    expected = body.sha256()
    server = own_server(blocks=(SIZE + (256 * MiB)) // 4096)
    s3 = server.client()
    s3.create_bucket(Bucket="big")
    baseline = rss(server.proc.pid)
    with PeakRSS(server.proc.pid) as put_rss:
        s3.put_object(Bucket="big", Key="two-gib", Body=body)
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
