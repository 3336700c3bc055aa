"""A block device that simulates power loss, after SQLite's test6.c.

Writes go to a volatile layer until `sync()`; `crash_image()` returns what the disk could hold if
power were cut now: the durable image plus any subset of the pending writes, applied in any order
(no ordering is promised between two syncs), optionally torn at sector granularity.
"""

from __future__ import annotations

import random
import threading

from cartridgefs.engine.blockdev import BLOCK_SIZE, block_count, check_range

SECTOR_SIZE = 512
CRASH_MODES = ("drop_all", "keep_all", "random", "torn")


class SimulatedCrash(BaseException):
    """Power was cut; a BaseException so that engine error handling cannot swallow it."""


class CrashDevice:
    """In-memory BlockDevice with a durable image and a list of writes not yet synced."""

    def __init__(self, nblocks: int, *, crash_after_writes: int | None = None) -> None:
        self._setup(bytearray(nblocks * BLOCK_SIZE), crash_after_writes)

    @classmethod
    def from_image(
        cls, image: bytes | bytearray, *, crash_after_writes: int | None = None
    ) -> CrashDevice:
        """Reopen a (crashed) image: it becomes the durable content of a fresh device."""
        dev = cls.__new__(cls)
        dev._setup(bytearray(image), crash_after_writes)
        return dev

    def _setup(self, image: bytearray, crash_after_writes: int | None) -> None:
        if len(image) % BLOCK_SIZE:
            raise ValueError(f"image of {len(image)} bytes is not a whole number of blocks")
        if crash_after_writes is not None and crash_after_writes < 1:
            raise ValueError("crash_after_writes counts from 1")
        self.nblocks = len(image) // BLOCK_SIZE
        self.durable = image
        # What reads see: durable image overlaid with the pending writes, in issue order.
        self._current = bytearray(image)
        self._pending: list[tuple[int, bytes]] = []
        self.crash_after_writes = crash_after_writes
        self.writes = 0
        self.syncs = 0
        self.crashed = False
        self._lock = threading.Lock()

    @property
    def pending_writes(self) -> int:
        """Number of writes issued since the last sync."""
        return len(self._pending)

    def read(self, block: int, count: int) -> bytes:
        """Return `count` blocks as the running system sees them."""
        check_range(self.nblocks, block, count)
        with self._lock:
            self._check_alive()
            view = memoryview(self._current)[block * BLOCK_SIZE : (block + count) * BLOCK_SIZE]
            return bytes(view)

    read_cached = read  # memory never waits

    def write(self, block: int, data: bytes | memoryview) -> None:
        """Record a volatile write of whole blocks."""
        count = block_count(data)
        check_range(self.nblocks, block, count)
        with self._lock:
            self._tick()
            offset = block * BLOCK_SIZE
            payload = bytes(data)
            self._current[offset : offset + count * BLOCK_SIZE] = payload
            if payload:
                self._pending.append((offset, payload))
            self.writes += 1

    def sync(self) -> None:
        """Make every pending write durable."""
        with self._lock:
            self._tick()
            for offset, payload in self._pending:
                self.durable[offset : offset + len(payload)] = payload
            self._pending.clear()
            self.syncs += 1

    def forget_cached(self, block: int, count: int) -> None:
        """Nothing to do: this device has no cache to drop."""

    def close(self) -> None:
        """Nothing to release; harmless after a crash so that cleanup code can run."""

    def crash_image(self, rng: random.Random, mode: str = "random") -> bytearray:
        """What the disk could contain after power loss at this instant."""
        if mode not in CRASH_MODES:
            raise ValueError(f"unknown crash mode {mode!r}; choose from {CRASH_MODES}")
        with self._lock:
            if mode == "keep_all":
                return bytearray(self._current)
            image = bytearray(self.durable)
            if mode == "drop_all":
                return image
            # Draw the keep-probability itself so that near-empty and near-full subsets are common.
            keep = rng.random()
            chosen = [w for w in self._pending if rng.random() < keep]
            rng.shuffle(chosen)
            for offset, payload in chosen:
                if mode == "random" or rng.random() < 0.5:
                    image[offset : offset + len(payload)] = payload
                else:
                    _apply_torn(image, offset, payload, rng)
            if mode == "torn" and self._pending and rng.random() < 0.5:
                # A sector being written as power failed may hold anything.
                offset, payload = rng.choice(self._pending)
                start = offset + rng.randrange(len(payload) // SECTOR_SIZE) * SECTOR_SIZE
                image[start : start + SECTOR_SIZE] = rng.randbytes(SECTOR_SIZE)
            return image

    def _tick(self) -> None:
        """Count one write or sync, cutting the power if this is the chosen one."""
        self._check_alive()
        crash_at = self.crash_after_writes
        if crash_at is not None and self.writes + self.syncs + 1 >= crash_at:
            self.crashed = True
            raise SimulatedCrash(f"power cut at write/sync #{crash_at}")

    def _check_alive(self) -> None:
        if self.crashed:
            raise SimulatedCrash("the device lost power")


def _apply_torn(image: bytearray, offset: int, payload: bytes, rng: random.Random) -> None:
    """Apply a random subset of the 512-byte sectors of one write."""
    keep = rng.random()
    for start in range(0, len(payload), SECTOR_SIZE):
        if rng.random() < keep:
            end = start + SECTOR_SIZE
            image[offset + start : offset + end] = payload[start:end]
