"""Helpers shared by tests of several layers, reached through fixtures (test modules do not
import conftest.py)."""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Callable

import pytest

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def _evict_pages(path: str, offset: int = 0, length: int = 0) -> None:
    """Drop bytes [offset, offset+length) of a synced file (length 0: to its end) from the page
    cache; clean pages go at once."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _cached_pages(path: str, offset: int, length: int) -> int:
    """How many pages of bytes [offset, offset+length) of a file are in the page cache (mincore
    of a mapping that is never touched: unlike a read, the question brings nothing in)."""
    assert offset % mmap.PAGESIZE == 0 and length > 0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, offset)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            vec = (ctypes.c_ubyte * (-(-length // mmap.PAGESIZE)))()
            if _libc.mincore(addr, length, vec):
                raise OSError(ctypes.get_errno(), "mincore failed")
            return sum(v & 1 for v in vec)
        finally:
            _libc.munmap(addr, length)
    finally:
        os.close(fd)


@pytest.fixture
def evict_pages() -> Callable[..., None]:
    return _evict_pages


@pytest.fixture
def cached_pages() -> Callable[[str, int, int], int]:
    return _cached_pages
