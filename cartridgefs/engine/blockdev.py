"""Block devices: the cartridge file (or a test double) as an array of 4096-byte blocks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from typing import Protocol

from cartridgefs.errors import (
    Busy,
    CartridgeError,
    Exists,
    FormatError,
    IntegrityError,
    InvalidArgument,
    IsADirectory,
    NoSpace,
    NotFound,
    PermissionDenied,
    ReadOnly,
)

BLOCK_SIZE = 4096


class WouldBlock(Exception):
    """A read that must not wait would have to (for the disk, or for slow decoding): the
    caller does it the usual way, in a worker thread. Never escapes the filesystem layer."""


_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)  # Linux 4.14+
_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}
_FULL = {errno.ENOSPC, errno.EDQUOT}


class BlockDevice(Protocol):
    """What the engine needs from storage: positional block I/O and a durability barrier."""

    nblocks: int

    def read(self, block: int, count: int) -> bytes:
        """Return `count` blocks starting at `block`."""
        ...

    def read_cached(self, block: int, count: int) -> bytes:
        """`read`, but WouldBlock rather than wait for the disk (for reads on an event loop)."""
        ...

    def write(self, block: int, data: bytes | memoryview) -> None:
        """Write whole blocks starting at `block`."""
        ...

    def sync(self) -> None:
        """Make every completed write durable."""
        ...

    def forget_cached(self, block: int, count: int) -> None:
        """A hint: these blocks are free now; drop their copies from the OS page cache."""
        ...

    def close(self) -> None:
        """Release the device."""
        ...


def check_range(nblocks: int, block: int, count: int) -> None:
    """Raise InvalidArgument unless blocks [block, block + count) lie on a device of nblocks."""
    if block < 0 or count < 0 or block + count > nblocks:
        raise InvalidArgument(f"blocks {block}..{block + count} outside device of {nblocks} blocks")


def block_count(data: bytes | memoryview) -> int:
    """Number of whole blocks in `data`; ValueError if it is not a multiple of BLOCK_SIZE."""
    size = memoryview(data).nbytes
    if size % BLOCK_SIZE:
        raise ValueError(f"write of {size} bytes is not a multiple of {BLOCK_SIZE}")
    return size // BLOCK_SIZE


class FileDevice:
    """A cartridge file accessed with pread/pwrite (positional, hence thread-safe) and flock."""

    def __init__(self, fd: int, path: str, nblocks: int, readonly: bool) -> None:
        self._fd = fd
        self.path = path
        self.nblocks = nblocks
        self.readonly = readonly
        # Set when fdatasync fails: Linux may drop the dirty pages and report success on a retry,
        # so nothing written afterwards could be trusted to be durable.
        self._sync_error: OSError | None = None
        self._nowait = _RWF_NOWAIT != 0  # cleared if the file's filesystem refuses RWF_NOWAIT

    @classmethod
    def create(cls, path: str, nblocks: int) -> FileDevice:
        """Create a new preallocated cartridge file of `nblocks` zero blocks; Exists if present."""
        if nblocks < 1:
            raise InvalidArgument(f"a device needs at least one block, not {nblocks}")
        size = nblocks * BLOCK_SIZE
        # 0600: the file holds a whole filesystem; sharing is the job of FUSE and S3.
        fd = _open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _lock(fd, path, readonly=False)
            _preallocate(fd, path, size)
            os.fsync(fd)
            _fsync_dir(os.path.dirname(os.path.abspath(path)))
        except BaseException:
            # The file is ours (O_EXCL) and unusable: do not leave a half-made cartridge behind.
            os.close(fd)
            os.unlink(path)
            raise
        return cls(fd, path, nblocks, readonly=False)

    @classmethod
    def open(cls, path: str, readonly: bool = False) -> FileDevice:
        """Open an existing cartridge file, locked against concurrent writers."""
        fd = _open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        try:
            _lock(fd, path, readonly)
            size = os.fstat(fd).st_size
            if size == 0 or size % BLOCK_SIZE:
                raise FormatError(
                    f"{path} is not a cartridge file (size {size} is not a whole number of blocks)"
                )
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path, size // BLOCK_SIZE, readonly)

    def read(self, block: int, count: int) -> bytes:
        """Return `count` blocks starting at `block`."""
        fd = self._live_fd()
        check_range(self.nblocks, block, count)
        size, offset = count * BLOCK_SIZE, block * BLOCK_SIZE
        data = os.pread(fd, size, offset)
        if len(data) == size:
            return data
        # Short reads happen only for requests over ~2 GiB or a file truncated behind our back.
        parts, got = [data], len(data)
        while got < size:
            chunk = os.pread(fd, size - got, offset + got)
            if not chunk:
                raise IntegrityError(
                    f"{self.path}: file ends inside block {block + got // BLOCK_SIZE}"
                )
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def read_cached(self, block: int, count: int) -> bytes:
        """`read` if the blocks are all in the page cache (preadv2 with RWF_NOWAIT), else
        WouldBlock."""
        fd = self._live_fd()
        check_range(self.nblocks, block, count)
        if not self._nowait:
            raise WouldBlock("the cartridge's filesystem cannot read without waiting")
        buf = bytearray(count * BLOCK_SIZE)
        try:
            got = os.preadv(fd, [buf], block * BLOCK_SIZE, _RWF_NOWAIT)
        except BlockingIOError:
            raise WouldBlock("not in the page cache") from None
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            self._nowait = False
            raise WouldBlock("the cartridge's filesystem cannot read without waiting") from None
        if got != len(buf):  # partly cached (or the file shrank: `read` will say so)
            raise WouldBlock("not all in the page cache")
        return bytes(buf)

    def write(self, block: int, data: bytes | memoryview) -> None:
        """Write whole blocks starting at `block`."""
        fd = self._live_fd()
        count = block_count(data)
        check_range(self.nblocks, block, count)
        self._check_writable()
        view = memoryview(data).cast("B")
        offset, done = block * BLOCK_SIZE, 0
        try:
            while done < len(view):
                done += os.pwrite(fd, view[done:], offset + done)
        except OSError as err:
            if err.errno in _FULL:
                raise NoSpace(f"{self.path}: no space left on the host filesystem") from err
            raise

    def sync(self) -> None:
        """fdatasync: every completed write is durable when this returns."""
        fd = self._live_fd()
        if self.readonly:
            return
        self._check_writable()
        try:
            os.fdatasync(fd)
        except OSError as err:
            self._sync_error = err
            raise

    def forget_cached(self, block: int, count: int) -> None:
        """posix_fadvise(DONTNEED): the kernel drops the clean cached pages of these blocks (a
        freed block's pages would otherwise stay cached until memory runs short, where a deleted
        file's are freed at once). Only a hint: the contents stay as they are, and a failure is
        ignored."""
        fd = self._live_fd()
        check_range(self.nblocks, block, count)
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, block * BLOCK_SIZE, count * BLOCK_SIZE, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        """Close the file (and release the lock); idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> FileDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live_fd(self) -> int:
        # A closed fd number may be reused by another file; never write through a stale one.
        if self._fd < 0:
            raise CartridgeError(f"{self.path}: device is closed")
        return self._fd

    def _check_writable(self) -> None:
        if self.readonly:
            raise ReadOnly(f"{self.path} is open read-only")
        if self._sync_error is not None:
            raise ReadOnly(
                f"{self.path}: an earlier sync failed ({self._sync_error}); reopen the cartridge"
            )


def _open(path: str, flags: int, mode: int = 0o600) -> int:
    """os.open with the usual failures as Cartridge errors."""
    try:
        return os.open(path, flags, mode)
    except FileExistsError:
        raise Exists(f"{path} already exists") from None
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file or directory") from None
    except PermissionError:
        raise PermissionDenied(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise IsADirectory(f"{path} is a directory") from None


def _lock(fd: int, path: str, readonly: bool) -> None:
    """Exclusive flock for writers, shared for readers, failing at once if held elsewhere."""
    mode = fcntl.LOCK_SH if readonly else fcntl.LOCK_EX
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = "for writing" if readonly else "by another reader or writer"
        raise Busy(f"{path} is already open {holder} (another process or handle)") from None


def _preallocate(fd: int, path: str, size: int) -> None:
    """Reserve the blocks now so that later writes cannot fail for lack of space."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno in _FULL:
            raise NoSpace(f"{path}: not enough space for {size} bytes") from err
        if err.errno not in _NO_FALLOCATE:
            raise
        os.ftruncate(fd, size)


def _fsync_dir(path: str) -> None:
    """fsync a directory so that a new entry in it survives power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MemoryDevice:
    """A bytearray-backed device for fast unit tests; `buffer` is exposed for corruption tests."""

    def __init__(self, nblocks: int) -> None:
        self.nblocks = nblocks
        self.buffer = bytearray(nblocks * BLOCK_SIZE)

    def read(self, block: int, count: int) -> bytes:
        """Return `count` blocks starting at `block`."""
        check_range(self.nblocks, block, count)
        return bytes(memoryview(self.buffer)[block * BLOCK_SIZE : (block + count) * BLOCK_SIZE])

    read_cached = read  # memory never waits

    def write(self, block: int, data: bytes | memoryview) -> None:
        """Write whole blocks starting at `block`."""
        count = block_count(data)
        check_range(self.nblocks, block, count)
        self.buffer[block * BLOCK_SIZE : (block + count) * BLOCK_SIZE] = memoryview(data).cast("B")

    def sync(self) -> None:
        """Nothing to do: memory is as durable as it gets."""

    def forget_cached(self, block: int, count: int) -> None:
        """Nothing to do: there is no cache below memory."""

    def close(self) -> None:
        """Nothing to release."""
