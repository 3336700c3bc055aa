"""Small reads are served on the event loop when their bytes are at hand (in the cache, or in
the page cache and stored as they are), else in a worker thread. Both paths give the same bytes,
holes and damage included."""

from __future__ import annotations

import random

import pytest
import trio

from cartridgefs.engine.store import Engine
from cartridgefs.errors import IntegrityError
from cartridgefs.fs.filesystem import INLINE_READ_MAX, Ctx, FileSystem
from cartridgefs.fs.items import ROOT_INO

CTX = Ctx(origin="test")
PASSPHRASE = b"read paths"
MODES = {
    "plain": {"compression": False},
    "zstd": {"compression": True},
    "encrypted": {"compression": False, "passphrase": PASSPHRASE, "kdf_log2n": 10},
}


async def read_on_loop(fs: FileSystem, ino: int, offset: int, size: int) -> bytes | None:
    """The bytes if `fs.read` answers without leaving the loop, None if it went to a thread: in
    a cancelled scope, the thread hop's checkpoint raises Cancelled (no handle is open, so no
    lock is taken first)."""
    with trio.CancelScope() as scope:
        scope.cancel()
        return await fs.read(ino, offset, size)
    return None


async def make_file(path: str, options: dict, rng: random.Random) -> bytes:
    """A closed, committed file `f`: random bytes, compressible bytes, a hole, a tail."""
    fs = FileSystem(Engine.create(path, 4000, **options))
    ino = (await fs.create(CTX, ROOT_INO, b"f")).ino
    model = bytearray(rng.randbytes(300_000) + b"compressible " * 25_000)
    tail_at = len(model) + 200_000
    tail = rng.randbytes(50_000)
    await fs.open(ino)
    await fs.write(CTX, ino, 0, bytes(model))
    await fs.write(CTX, ino, tail_at, tail)
    await fs.release(ino)
    await fs.close()
    model += bytes(tail_at - len(model)) + tail
    return bytes(model)


@pytest.mark.parametrize("mode", MODES)
async def test_both_paths_give_the_stored_bytes(tmp_path, mode, evict_pages):
    rng = random.Random(mode)
    path = str(tmp_path / "t.cart")
    options = MODES[mode]
    model = await make_file(path, options, rng)
    fs = FileSystem(Engine.open(path, passphrase=options.get("passphrase")))
    ino = (await fs.lookup(ROOT_INO, b"f")).ino
    evict_pages(path)  # the whole cartridge file, synced by the close

    ranges = [(rng.randrange(len(model) + 1000), rng.randrange(1, INLINE_READ_MAX + 1))
              for _ in range(300)]
    in_threads = on_loop = 0
    for offset, size in ranges:  # cold: a thread reads what is not in memory yet
        in_threads += await read_on_loop(fs, ino, offset, size) is None
        assert await fs.read(ino, offset, size) == model[offset:offset + size]
    assert in_threads > 0
    for offset, size in ranges:  # warm: the page cache (and the cache, for partial reads)
        got = await read_on_loop(fs, ino, offset, size)
        if got is not None:
            on_loop += 1
            assert got == model[offset:offset + size]
    if mode == "plain":
        assert on_loop == len(ranges)  # everything is in the page cache now
    else:  # encrypted or compressed extents are decoded on the loop only if cached already
        assert 0 < on_loop <= len(ranges)
    await fs.close()


async def test_damage_is_caught_on_the_loop_too(tmp_path):
    """A flipped byte in an extent that sits in the page cache: the read on the loop verifies
    the checksum, reports the damage and the cartridge turns read-only, as in a thread."""
    rng = random.Random(3)
    path = str(tmp_path / "t.cart")
    model = await make_file(path, MODES["plain"], rng)
    with open(path, "r+b") as f:
        raw = f.read()
        at = raw.index(model[200_000:200_064])
        f.seek(at)
        f.write(bytes([raw[at] ^ 1]))  # through the page cache: the read below finds it there
    fs = FileSystem(Engine.open(path))
    ino = (await fs.lookup(ROOT_INO, b"f")).ino
    assert await read_on_loop(fs, ino, 0, 4096) == model[:4096]  # an intact extent
    with pytest.raises(IntegrityError):
        await read_on_loop(fs, ino, 200_000, 4096)
    assert fs.engine.damaged
    await fs.close()
