"""Block devices: file and memory implementations, bounds, locking, durability plumbing."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading

import pytest

from cartridgefs.engine.blockdev import BLOCK_SIZE, FileDevice, MemoryDevice, WouldBlock
from cartridgefs.errors import (
    Busy,
    CartridgeError,
    Exists,
    FormatError,
    InvalidArgument,
    IsADirectory,
    NoSpace,
    NotFound,
    ReadOnly,
)


def block(fill: int, count: int = 1) -> bytes:
    return bytes([fill]) * (BLOCK_SIZE * count)


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "storage.cart")


@pytest.fixture(params=["memory", "file"])
def dev(request, path):
    if request.param == "memory":
        yield MemoryDevice(16)
    else:
        with FileDevice.create(path, 16) as d:
            yield d


def test_round_trip(dev):
    assert dev.nblocks == 16
    assert dev.read(0, 16) == bytes(16 * BLOCK_SIZE)
    dev.write(3, block(1, 2))
    dev.write(15, memoryview(block(2)))
    dev.sync()
    assert dev.read(3, 2) == block(1, 2)
    assert dev.read(4, 1) == block(1)
    assert dev.read(15, 1) == block(2)
    assert dev.read(5, 0) == b""


def test_read_cached_never_waits_for_the_disk(path, evict_pages):
    """read_cached answers from the page cache only: blocks evicted from it give WouldBlock, and
    once read they come back whole. (The suite's disk is ext4, which reads with RWF_NOWAIT.)"""
    with FileDevice.create(path, 16) as d:
        d.write(2, block(7, 3))
        d.sync()
        evict_pages(path, 0, 16 * BLOCK_SIZE)
        with pytest.raises(WouldBlock):
            d.read_cached(2, 3)
        assert d.read(2, 3) == block(7, 3)
        assert d.read_cached(2, 3) == block(7, 3)
        evict_pages(path, 4 * BLOCK_SIZE, BLOCK_SIZE)
        with pytest.raises(WouldBlock):  # only part of the range is in memory
            d.read_cached(2, 3)
        with pytest.raises(InvalidArgument):
            d.read_cached(15, 2)


def test_memory_reads_never_wait():
    d = MemoryDevice(4)
    d.write(1, block(3))
    assert d.read_cached(1, 1) == block(3)


@pytest.mark.parametrize("size", [1, BLOCK_SIZE - 1, BLOCK_SIZE + 512])
def test_write_must_be_whole_blocks(dev, size):
    with pytest.raises(ValueError):
        dev.write(0, bytes(size))


@pytest.mark.parametrize(("start", "count"), [(-1, 1), (16, 1), (15, 2), (0, 17), (0, -1)])
def test_out_of_range(dev, start, count):
    with pytest.raises(InvalidArgument):
        dev.read(start, count)
    if count > 0:
        with pytest.raises(InvalidArgument):
            dev.write(start, block(0, count))


def test_create_file(path):
    with FileDevice.create(path, 8):
        st = os.stat(path)
        assert st.st_size == 8 * BLOCK_SIZE
        assert stat.S_IMODE(st.st_mode) & 0o077 == 0  # private to its owner
    with pytest.raises(Exists):
        FileDevice.create(path, 8)


def test_create_rejects_empty_device(path):
    with pytest.raises(InvalidArgument):
        FileDevice.create(path, 0)
    assert not os.path.exists(path)


def test_reopen_keeps_data(path):
    with FileDevice.create(path, 4) as d:
        d.write(2, block(7))
        d.sync()
    with FileDevice.open(path) as d:
        assert d.nblocks == 4
        assert d.read(2, 1) == block(7)
    with FileDevice.open(path, readonly=True) as d:
        assert d.read(2, 1) == block(7)
        d.sync()  # a no-op, not an error
        with pytest.raises(ReadOnly):
            d.write(0, block(1))


def test_open_errors(path, tmp_path):
    with pytest.raises(NotFound):
        FileDevice.open(path)
    with pytest.raises(NotFound):
        FileDevice.create(str(tmp_path / "no" / "such" / "dir.cart"), 4)
    with pytest.raises(IsADirectory):
        FileDevice.open(str(tmp_path))
    for size in (0, 100, BLOCK_SIZE + 1):
        bad = tmp_path / f"bad{size}"
        bad.write_bytes(bytes(size))
        with pytest.raises(FormatError):
            FileDevice.open(str(bad))


def test_single_writer_lock(path):
    with FileDevice.create(path, 4):
        with pytest.raises(Busy, match="already open"):
            FileDevice.open(path)
        with pytest.raises(Busy):
            FileDevice.open(path, readonly=True)
    with (
        FileDevice.open(path, readonly=True),
        FileDevice.open(path, readonly=True),
        pytest.raises(Busy),
    ):
        FileDevice.open(path)
    FileDevice.open(path).close()  # every lock was released by close


def test_lock_excludes_other_processes(path):
    code = (
        "import sys\n"
        "from cartridgefs.engine.blockdev import FileDevice\n"
        "from cartridgefs.errors import Busy\n"
        "try:\n"
        "    FileDevice.open(sys.argv[1])\n"
        "except Busy:\n"
        "    sys.exit(3)\n"
    )
    with FileDevice.create(path, 4):
        busy = subprocess.run([sys.executable, "-c", code, path], check=False)
    free = subprocess.run([sys.executable, "-c", code, path], check=False)
    assert (busy.returncode, free.returncode) == (3, 0)


def test_closed_device_refuses_io(path):
    d = FileDevice.create(path, 4)
    d.close()
    d.close()
    with pytest.raises(CartridgeError, match="closed"):
        d.write(0, block(1))
    with pytest.raises(CartridgeError, match="closed"):
        d.read(0, 1)


def test_failed_sync_turns_read_only(path, monkeypatch):
    with FileDevice.create(path, 4) as d:
        d.write(0, block(1))

        def broken(fd):
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(os, "fdatasync", broken)
        with pytest.raises(OSError):
            d.sync()
        monkeypatch.undo()
        # A retried fsync could "succeed" after the kernel dropped the dirty pages: refuse.
        with pytest.raises(ReadOnly):
            d.sync()
        with pytest.raises(ReadOnly):
            d.write(0, block(2))


def test_fallocate_fallback(path, monkeypatch):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    with FileDevice.create(path, 5) as d:
        assert os.path.getsize(path) == 5 * BLOCK_SIZE
        assert d.read(4, 1) == block(0)


def test_no_space_leaves_no_file(path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "no space")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(NoSpace):
        FileDevice.create(path, 5)
    assert not os.path.exists(path)


def test_concurrent_writers(path):
    with FileDevice.create(path, 64) as d:

        def work(fill: int) -> None:
            for i in range(fill, 64, 8):
                d.write(i, block(fill))

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(d.read(i, 1) == block(i % 8) for i in range(64))
