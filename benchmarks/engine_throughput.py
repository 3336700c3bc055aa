"""Engine write/read throughput against plain file I/O on the same disk.

    .venv/bin/python benchmarks/engine_throughput.py [--size 1G] [--dir /tmp] [--configs raw,zstd,aes]

For each configuration the same bytes are written through the engine in 1 MiB calls
(`write_data` + one transaction linking the extents per call, `sync` at the end) and read back
through a freshly opened engine (cold cache); then with plain 1 MiB `os.write` calls + `fsync`
and 1 MiB `os.read` calls. The OS page cache is dropped before every read when
/proc/sys/vm/drop_caches is writable (root), for both. Data:

* raw, aes: incompressible (random bytes);
* zstd: half compressible — each 1 MiB is 512 KiB of random bytes followed by 512 KiB of
  repetitive text-like records (zstd level 3 stores it in ~55 % of the space).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cartridgefs.cli import _parse_size  # noqa: E402
from cartridgefs.engine.btree import Ref  # noqa: E402
from cartridgefs.engine.store import Engine  # noqa: E402

MiB = 1 << 20
POOL = 16  # distinct 1 MiB buffers, reused round-robin (generating GiBs of random data is slow)
CONFIGS = {
    "raw": dict(compression=False, passphrase=None, data="random"),
    "zstd": dict(compression=True, passphrase=None, data="half"),
    "aes": dict(compression=False, passphrase=b"benchmark passphrase", data="random"),
}


def make_pool(kind: str) -> list[bytes]:
    rng = random.Random(42)
    pool = []
    for i in range(POOL):
        if kind == "random":
            pool.append(rng.randbytes(MiB))
        else:
            text = b"".join(
                b"%08d,user-%04d,/var/log/app/%d.log,status=%s\n"
                % (j, rng.randrange(10_000), rng.randrange(100), rng.choice([b"ok", b"fail", b"retry"]))
                for j in range(i * 20_000, i * 20_000 + 20_000)
            )
            pool.append(rng.randbytes(MiB // 2) + text[: MiB // 2])
    return pool


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def engine_write(path: str, pool: list[bytes], n: int, compression: bool, passphrase: bytes | None) -> None:
    nblocks = n * MiB // 4096 + n * 8 + 4096  # data + generous room for pages
    engine = Engine.create(path, nblocks, compression=compression, passphrase=passphrase, kdf_log2n=14)
    for i in range(n):
        pieces = engine.write_data(pool[i % POOL])
        with engine.txn(reserved=[p for _, p in pieces]) as t:
            for offset, ptr in pieces:
                t.put("fs", b"bench/%012d" % (i * MiB + offset), Ref(ptr))
        if engine.needs_commit:
            engine.sync()
    engine.sync()
    engine.close()


def engine_read(path: str, pool: list[bytes], n: int, passphrase: bytes | None, verify: bool) -> None:
    engine = Engine.open(path, passphrase=passphrase, readonly=True)
    total = 0
    with engine.reader() as state:
        for key, val in engine.items(state, "fs", b"bench/", b"bench0"):
            data = engine.read_extent(val.ptr)
            if verify:
                offset = int(key[6:])
                i, within = divmod(offset, MiB)
                assert data == pool[i % POOL][within : within + len(data)], key
            total += len(data)
    engine.close()
    assert total == n * MiB, (total, n * MiB)


def plain_write(path: str, pool: list[bytes], n: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for i in range(n):
            os.write(fd, pool[i % POOL])
        os.fsync(fd)
    finally:
        os.close(fd)


def plain_read(path: str, n: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    total = 0
    try:
        while chunk := os.read(fd, MiB):
            total += len(chunk)
    finally:
        os.close(fd)
    assert total == n * MiB


def run_config(name: str, n: int, directory: str, verify: bool) -> dict[str, float]:
    cfg = CONFIGS[name]
    pool = make_pool(cfg["data"])
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        cart, plain = os.path.join(tmp, "bench.cart"), os.path.join(tmp, "plain.bin")
        ew = timed(lambda: engine_write(cart, pool, n, cfg["compression"], cfg["passphrase"]))
        stored = os.path.getsize(cart)
        drop_caches()
        er = timed(lambda: engine_read(cart, pool, n, cfg["passphrase"], verify))
        os.unlink(cart)
        pw = timed(lambda: plain_write(plain, pool, n))
        drop_caches()
        pr = timed(lambda: plain_read(plain, n))
    r = {"engine_write": n / ew, "engine_read": n / er, "plain_write": n / pw, "plain_read": n / pr}
    print(
        f"{name:5s} ({cfg['data']} data): engine write {r['engine_write']:7.1f} MiB/s, read {r['engine_read']:7.1f} MiB/s"
        f" | plain write {r['plain_write']:7.1f} MiB/s, read {r['plain_read']:7.1f} MiB/s"
        f" | ratio write {r['engine_write'] / r['plain_write']:.2f}, read {r['engine_read'] / r['plain_read']:.2f}"
        f" | cartridge file {stored / MiB:.0f} MiB",
        flush=True,
    )
    return r


def run(size: int, directory: str, configs: list[str], verify: bool) -> dict[str, dict[str, float]]:
    n = max(1, size // MiB)
    dropped = drop_caches()
    print(f"{n} MiB per run in {directory}; page cache dropped before reads: {'yes' if dropped else 'NO (not root?)'}")
    results = {}
    for name in configs:
        results[name] = run_config(name, n, directory, verify)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", type=_parse_size, help="bytes to write per run (e.g. 1G, 64M)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="directory on the disk to measure")
    parser.add_argument("--configs", default="raw,zstd,aes", help="comma-separated: raw, zstd, aes")
    parser.add_argument("--verify", action="store_true", help="compare every byte read back")
    args = parser.parse_args(argv)
    results = run(args.size, args.dir, args.configs.split(","), args.verify)
    raw = results.get("raw")
    if raw:
        ok = raw["engine_write"] >= 0.5 * raw["plain_write"] and raw["engine_read"] >= 0.5 * raw["plain_read"]
        print(f"target (raw engine >= 50 % of plain for write and read): {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
