"""File contents as extent items: reading a range, punching a range, linking new extents."""

from __future__ import annotations

from collections.abc import Iterator

from ..engine.btree import Ref
from ..engine.seal import Ptr
from ..engine.store import Engine
from ..engine.txn import State, Txn
from .items import decode_extent_extra, encode_extent_extra, extent_key, extent_offset

Item = tuple[int, int, Ref]  # file offset, length, reference


def _items(it: Iterator[tuple[bytes, object]]) -> Iterator[Item]:
    for key, ref in it:
        assert isinstance(ref, Ref)
        _skip, length = decode_extent_extra(ref.extra)
        yield extent_offset(key), length, ref


def overlapping(items_fn, ino: int, start: int, end: int) -> Iterator[Item]:
    """Extent items of `ino` overlapping [start, end); `items_fn(start_key, end_key, reverse)`."""
    before = next(_items(items_fn(extent_key(ino, 0), extent_key(ino, start) + b"\0", True)), None)
    if before is not None and before[0] < start and before[0] + before[1] > start:
        yield before
    yield from _items(items_fn(extent_key(ino, start), extent_key(ino, end), False))


def read_range(
    engine: Engine, state: State, ino: int, start: int, size: int, streaming: bool = False,
    nowait: bool = False,
) -> bytes:
    """Bytes [start, start+size) of the file as stored (holes read as zeros).

    Extents read whole, and every extent of a `streaming` read, are not added to the cache.
    `nowait`: see `Engine.read_extent`.
    The pieces are joined once at the end (a read of exactly one whole extent is its bytes,
    not a copy): a reader spends its CPU on one copy, not on zero-filling a buffer and then
    copying each extent into it and the buffer out again.
    """
    pieces: list[bytes | memoryview] = []
    pos, end = start, start + size

    def items_fn(lo: bytes, hi: bytes, reverse: bool):
        return engine.items(state, "fs", lo, hi, reverse)

    for offset, length, ref in overlapping(items_fn, ino, start, end):
        skip, _ = decode_extent_extra(ref.extra)
        a, b = max(start, offset), min(end, offset + length)
        if a > pos:
            pieces.append(bytes(a - pos))  # a hole
        whole = skip == 0 and a == offset and b - a == ref.ptr.raw_len
        data = engine.read_extent(ref.ptr, cache=not (whole or streaming), nowait=nowait)
        pieces.append(data if whole else memoryview(data)[skip + a - offset : skip + b - offset])
        pos = b
    if end > pos:
        pieces.append(bytes(end - pos))
    return b"".join(pieces)


def punch(t: Txn, ino: int, start: int, end: int) -> None:
    """Remove file bytes [start, end) from the extent items (a hole is left)."""

    def items_fn(lo: bytes, hi: bytes, reverse: bool):
        return t.items("fs", lo, hi, reverse)

    for offset, length, ref in list(overlapping(items_fn, ino, start, end)):
        skip, _ = decode_extent_extra(ref.extra)
        if offset + length > end:  # keep the tail
            tail = Ref(ref.ptr, encode_extent_extra(skip + end - offset, offset + length - end))
            t.put("fs", extent_key(ino, end), tail)
        if offset < start:  # keep the head
            t.put("fs", extent_key(ino, offset), Ref(ref.ptr, encode_extent_extra(skip, start - offset)))
        else:
            t.delete("fs", extent_key(ino, offset))


def link(t: Txn, ino: int, start: int, ptrs: list[tuple[int, Ptr]]) -> None:
    """Make new extents (from `Engine.write_data`) the bytes of the file from `start` on."""
    for rel, ptr in ptrs:
        t.put("fs", extent_key(ino, start + rel), Ref(ptr, encode_extent_extra(0, ptr.raw_len)))

