"""Background flushes: a writer fills the next buffer while the previous one is stored.

Reads, sizes, explicit times, truncation and ENOSPC must behave as if every flush had run in
the foreground. FLUSH_AT is lowered so that a few MiB make many background flushes."""

from __future__ import annotations

import random

import pytest

from cartridgefs.engine.fsck import run_fsck
from cartridgefs.engine.store import Engine
from cartridgefs.errors import NoSpace
from cartridgefs.fs import filesystem
from cartridgefs.fs.filesystem import Ctx, FileSystem
from cartridgefs.fs.fsck import FS_CHECKS
from cartridgefs.fs.items import ROOT_INO

CTX = Ctx(origin="test")
FLUSH_AT = 256 * 1024


@pytest.fixture(autouse=True)
def small_flushes(monkeypatch):
    monkeypatch.setattr(filesystem, "FLUSH_AT", FLUSH_AT)


def in_flight(fs: FileSystem, ino: int) -> bool:
    flushing = fs._open[ino].flushing
    return flushing is not None and not flushing.done.is_set()


def clean(fs: FileSystem) -> dict:
    return {k: v for k, v in run_fsck(fs.engine, extra=FS_CHECKS).items() if v}


async def test_reads_and_sizes_see_bytes_being_flushed(tmp_path):
    """Mostly sequential writes with overwrites behind the write position; every read and size
    during the run matches a model, and so does the file after a reopen."""
    path = str(tmp_path / "t.cart")
    fs = FileSystem(Engine.create(path, 20_000))
    rng = random.Random(7)
    ino = (await fs.create(CTX, ROOT_INO, b"f")).ino
    await fs.open(ino)
    model = bytearray()
    reads_in_flight = 0
    for _ in range(300):  # ~12 MiB: ~48 background flushes
        chunk = rng.randbytes(rng.randrange(1, 80_000))
        if model and rng.random() < 0.3:  # overwrite bytes that may be in the flush under way
            pos = rng.randrange(max(0, len(model) - 2 * FLUSH_AT), len(model))
        else:
            pos = len(model)
        await fs.write(CTX, ino, pos, chunk)
        model[len(model):pos] = bytes(max(0, pos - len(model)))
        model[pos:pos + len(chunk)] = chunk
        reads_in_flight += in_flight(fs, ino)
        start = rng.randrange(max(0, len(model) - 3 * FLUSH_AT), len(model))
        assert await fs.read(ino, start, 100_000) == bytes(model[start:start + 100_000])
        assert (await fs.getattr(ino)).size == len(model)
    assert reads_in_flight > 10  # the reads above did meet flushes under way
    await fs.fsync(ino)
    await fs.release(ino)
    await fs.close()

    fs = FileSystem(Engine.open(path))
    assert (await fs.getattr(ino)).size == len(model)
    assert await fs.read(ino, 0, len(model)) == bytes(model)
    assert clean(fs) == {}
    await fs.close()


async def test_explicit_mtime_wins_over_a_flush_under_way(tmp_path):
    """`touch -d` / `cp -p` set the time on the open file right after the last write."""
    fs = FileSystem(Engine.create(str(tmp_path / "t.cart"), 20_000))
    ino = (await fs.create(CTX, ROOT_INO, b"f")).ino
    await fs.open(ino)
    await fs.write(CTX, ino, 0, random.randbytes(FLUSH_AT))
    assert in_flight(fs, ino)
    await fs.setattr(CTX, ino, mtime_ns=123_000_000_000)
    assert (await fs.getattr(ino)).mtime_ns == 123_000_000_000
    await fs.release(ino)
    assert (await fs.getattr(ino)).mtime_ns == 123_000_000_000
    await fs.close()


async def test_truncate_during_a_flush(tmp_path):
    fs = FileSystem(Engine.create(str(tmp_path / "t.cart"), 20_000))
    ino = (await fs.create(CTX, ROOT_INO, b"f")).ino
    await fs.open(ino)
    body = random.randbytes(3 * FLUSH_AT)
    for pos in range(0, len(body), 64 * 1024):
        await fs.write(CTX, ino, pos, body[pos:pos + 64 * 1024])
    assert in_flight(fs, ino)
    await fs.setattr(CTX, ino, size=1000)
    await fs.write(CTX, ino, 2000, b"tail")
    await fs.release(ino)
    assert await fs.read(ino, 0, 10_000) == body[:1000] + bytes(1000) + b"tail"
    await fs.sync()
    assert clean(fs) == {}
    await fs.close()


async def test_enospc_reaches_the_writer_and_leaks_nothing(tmp_path):
    """A full cartridge: a failed background flush makes the next flush run in the foreground,
    so the writer gets ENOSPC with at most two buffers held; deleting the file frees it all."""
    fs = FileSystem(Engine.create(str(tmp_path / "t.cart"), 3_000))  # ~11 MiB
    await fs.sync()
    used = fs.engine.info()["used_blocks"]
    ino = (await fs.create(CTX, ROOT_INO, b"f")).ino
    await fs.open(ino)
    chunk = random.randbytes(64 * 1024)
    with pytest.raises(NoSpace):
        for i in range(1000):  # 64 MiB at most
            await fs.write(CTX, ino, i * len(chunk), chunk)
            st = fs._open[ino]
            held = st.dirty.nbytes + (st.flushing.dirty.nbytes if st.flushing else 0)
            assert held <= 2 * FLUSH_AT + len(chunk)
    with pytest.raises(NoSpace):
        await fs.release(ino)  # the buffered tail cannot be stored either: reported at close
    stored = (await fs.getattr(ino)).size
    assert await fs.read(ino, 0, stored) == chunk * (stored // len(chunk))
    await fs.unlink(CTX, ROOT_INO, b"f")
    await fs.sync()
    assert fs.engine.info()["used_blocks"] == used
    assert clean(fs) == {}
    await fs.close()
