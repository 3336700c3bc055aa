"""Helpers shared by tests of several layers, reached through fixtures (test modules do not
import conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest


def _evict_pages(path: str, offset: int = 0, length: int = 0) -> None:
    """Drop bytes [offset, offset+length) of a synced file (length 0: to its end) from the page
    cache; clean pages go at once."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture
def evict_pages() -> Callable[..., None]:
    return _evict_pages
