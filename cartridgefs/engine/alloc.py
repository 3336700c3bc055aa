"""Block allocation: which blocks are free, referenced, reserved or waiting to be reused.

Two bitmaps, one bit per block:

* ``persist`` — blocks referenced by the working state; this is what a commit stores (the free
  map), so after a crash nothing reserved or pending is leaked.
* ``inuse`` — blocks that must not be handed out: ``persist`` plus extents written but not yet
  linked by a transaction (*reserved*) plus blocks freed but not yet reusable (*pending*).

A block freed in generation g stays pending until g is durable (so the previous superblock stays
valid, as in LMDB) and no reader that started at generation <= g is still running.
"""

from __future__ import annotations

import threading
from collections import defaultdict

from ..errors import NoSpace

CHUNK_BLOCKS = 4096  # blocks per free-map chunk (one 512-byte tree value)
CHUNK_BYTES = CHUNK_BLOCKS // 8
_FULL = (1 << CHUNK_BLOCKS) - 1


def set_bits(bm: bytearray, start: int, count: int, on: bool) -> None:
    end = start + count
    while start < end and start & 7:
        _set_bit(bm, start, on)
        start += 1
    whole = (end - start) >> 3
    if whole:
        bm[start >> 3 : (start >> 3) + whole] = (b"\xff" if on else b"\x00") * whole
        start += whole << 3
    while start < end:
        _set_bit(bm, start, on)
        start += 1


def _set_bit(bm: bytearray, bit: int, on: bool) -> None:
    if on:
        bm[bit >> 3] |= 1 << (bit & 7)
    else:
        bm[bit >> 3] &= ~(1 << (bit & 7)) & 0xFF


def get_bit(bm: bytes | bytearray, bit: int) -> bool:
    return bool(bm[bit >> 3] >> (bit & 7) & 1)


def _free_run(free: int, count: int) -> int:
    """Lowest bit position starting `count` consecutive set bits of `free`, or -1."""
    run, have = free, 1
    while have < count:  # after this, bit i is set iff bits i..i+have-1 are all free
        step = min(have, count - have)
        run &= run >> step
        have += step
    if not run:
        return -1
    return (run & -run).bit_length() - 1


class Allocator:
    """Thread-safe block allocator over the two bitmaps."""

    def __init__(self, nblocks: int, persist: bytearray, system_blocks: list[int]) -> None:
        self.nblocks = nblocks
        self.nchunks = -(-nblocks // CHUNK_BLOCKS)
        size = self.nchunks * CHUNK_BYTES
        if len(persist) != size:
            raise ValueError("free map size does not match the block count")
        self.persist = persist
        before = bytes(persist)
        # Blocks past the end and the fixed system blocks are permanently "used".
        set_bits(self.persist, nblocks, self.nchunks * CHUNK_BLOCKS - nblocks, True)
        for b in system_blocks:
            set_bits(self.persist, b, 1, True)
        self.inuse = bytearray(self.persist)
        # A new cartridge's free map gets stored with its system blocks marked.
        self.dirty_chunks: set[int] = {
            c for c in range(self.nchunks)
            if before[c * CHUNK_BYTES : (c + 1) * CHUNK_BYTES] != self.persist[c * CHUNK_BYTES : (c + 1) * CHUNK_BYTES]
        }
        self.system = self.nchunks * CHUNK_BLOCKS - nblocks + len(system_blocks)
        self._lock = threading.Lock()
        self._free_in_chunk = [
            CHUNK_BLOCKS - _popcount(self.inuse[c * CHUNK_BYTES : (c + 1) * CHUNK_BYTES])
            for c in range(self.nchunks)
        ]
        self._cursor = 0
        self.meta_reserve = min(max(nblocks // 64, 32), 16384)
        self.reserved: dict[int, int] = {}
        self.pending: dict[int, list[tuple[int, int]]] = defaultdict(list)

    # --- queries ---

    @property
    def free_blocks(self) -> int:
        return sum(self._free_in_chunk)

    @property
    def used_blocks(self) -> int:
        """Blocks referenced by the working state, not counting fixed system blocks."""
        return _popcount(self.persist) - self.system

    @property
    def reserved_blocks(self) -> int:
        return sum(self.reserved.values())

    @property
    def pending_blocks(self) -> int:
        return sum(n for runs in self.pending.values() for _, n in runs)

    def chunk(self, index: int) -> bytes:
        return bytes(self.persist[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES])

    # --- allocation ---

    def _alloc(self, count: int) -> int:
        if count > CHUNK_BLOCKS:
            raise ValueError("allocation larger than a free-map chunk")
        for step in range(self.nchunks):
            c = (self._cursor + step) % self.nchunks
            if self._free_in_chunk[c] < count:
                continue
            used = int.from_bytes(self.inuse[c * CHUNK_BYTES : (c + 1) * CHUNK_BYTES], "little")
            pos = _free_run(~used & _FULL, count)
            if pos < 0:
                continue
            block = c * CHUNK_BLOCKS + pos
            set_bits(self.inuse, block, count, True)
            self._free_in_chunk[c] -= count
            self._cursor = c
            return block
        raise NoSpace(f"no run of {count} free blocks left in the cartridge")

    def reserve(self, count: int) -> int:
        """Blocks for data about to be written; not referenced until `link`.

        Data may not use the last `meta_reserve` free blocks: they are kept for the pages a
        commit writes, so a full cartridge can still commit (and then free space by deleting).
        """
        with self._lock:
            if self.free_blocks - count < self.meta_reserve:
                raise NoSpace("the cartridge is full")
            block = self._alloc(count)
            self.reserved[block] = count
            return block

    def unreserve(self, block: int) -> None:
        """Give back a reservation that was never linked (the write failed or was abandoned)."""
        with self._lock:
            count = self.reserved.pop(block)
            self._release(block, count)

    def is_reserved(self, block: int) -> bool:
        return block in self.reserved

    def link(self, block: int, count: int) -> None:
        """A reserved extent is now referenced by the working state."""
        with self._lock:
            self.reserved.pop(block, None)
            self._mark(block, count, True)

    def assign(self, count: int = 1) -> int:
        """Blocks for a page written by the commit in progress (referenced at once)."""
        with self._lock:
            block = self._alloc(count)
            self._mark(block, count, True)
            return block

    def free(self, block: int, count: int, gen: int) -> None:
        """No longer referenced by the working state of generation `gen`."""
        with self._lock:
            self._mark(block, count, False)
            self.pending[gen].append((block, count))

    def reclaim(self, durable_gen: int, oldest_reader_gen: int | None) -> list[tuple[int, int]]:
        """Make pending blocks reusable where that is safe now; returns their runs (block, count)."""
        released: list[tuple[int, int]] = []
        with self._lock:
            for gen in sorted(self.pending):
                if gen > durable_gen or (oldest_reader_gen is not None and gen >= oldest_reader_gen):
                    break
                runs = self.pending.pop(gen)
                for block, count in runs:
                    self._release(block, count)
                released += runs
        return released

    def _mark(self, block: int, count: int, on: bool) -> None:
        set_bits(self.persist, block, count, on)
        first, last = block // CHUNK_BLOCKS, (block + count - 1) // CHUNK_BLOCKS
        self.dirty_chunks.update(range(first, last + 1))

    def _release(self, block: int, count: int) -> None:
        set_bits(self.inuse, block, count, False)
        self._free_in_chunk[block // CHUNK_BLOCKS] += count
        if block // CHUNK_BLOCKS != (block + count - 1) // CHUNK_BLOCKS:
            raise AssertionError("extents never cross a free-map chunk")

    def take_dirty_chunks(self) -> list[int]:
        with self._lock:
            chunks = sorted(self.dirty_chunks)
            self.dirty_chunks.clear()
            return chunks


def _popcount(data: bytes | bytearray) -> int:
    return int.from_bytes(data, "little").bit_count()
