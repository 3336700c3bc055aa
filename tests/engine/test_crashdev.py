"""CrashDevice: what survives a simulated power loss, and stopping a workload mid-way."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cartridgefs.engine.blockdev import BLOCK_SIZE
from cartridgefs.engine.crashdev import CRASH_MODES, SECTOR_SIZE, CrashDevice, SimulatedCrash
from cartridgefs.errors import InvalidArgument

NBLOCKS = 8


def block(fill: int, count: int = 1) -> bytes:
    return bytes([fill]) * (BLOCK_SIZE * count)


def test_reads_see_pending_writes_and_sync_makes_them_durable():
    dev = CrashDevice(NBLOCKS)
    dev.write(1, block(1, 2))
    assert dev.read(1, 2) == block(1, 2)
    assert dev.pending_writes == 1
    assert dev.durable[BLOCK_SIZE : 2 * BLOCK_SIZE] == bytes(BLOCK_SIZE)
    dev.sync()
    assert dev.pending_writes == 0
    assert dev.durable[BLOCK_SIZE : 3 * BLOCK_SIZE] == block(1, 2)
    rng = random.Random(0)
    for mode in CRASH_MODES:
        assert dev.crash_image(rng, mode) == dev.durable
    assert (dev.writes, dev.syncs) == (1, 1)


def test_device_contract():
    dev = CrashDevice(NBLOCKS)
    with pytest.raises(ValueError):
        dev.write(0, bytes(100))
    with pytest.raises(InvalidArgument):
        dev.write(NBLOCKS, block(0))
    with pytest.raises(InvalidArgument):
        dev.read(NBLOCKS - 1, 2)
    with pytest.raises(ValueError):
        dev.crash_image(random.Random(0), "sometimes")


def test_from_image():
    dev = CrashDevice(NBLOCKS)
    dev.write(0, block(9))
    image = dev.crash_image(random.Random(0), "keep_all")
    again = CrashDevice.from_image(image)
    assert again.nblocks == NBLOCKS
    assert again.read(0, 1) == block(9)
    assert again.pending_writes == 0
    assert again.crash_image(random.Random(0), "drop_all") == image
    with pytest.raises(ValueError):
        CrashDevice.from_image(bytes(100))


def test_crash_after_writes_stops_the_workload():
    dev = CrashDevice(NBLOCKS, crash_after_writes=4)
    dev.write(0, block(1))
    dev.sync()
    dev.write(1, block(2))
    with pytest.raises(SimulatedCrash):
        dev.sync()  # the 4th operation never happens
    assert dev.crashed
    assert (dev.writes, dev.syncs) == (2, 1)
    for op in (lambda: dev.write(2, block(3)), dev.sync, lambda: dev.read(0, 1)):
        with pytest.raises(SimulatedCrash):
            op()
    dev.close()  # cleanup code may still run
    assert dev.crash_image(random.Random(0), "drop_all")[:BLOCK_SIZE] == block(1)
    assert dev.crash_image(random.Random(0), "keep_all")[BLOCK_SIZE : 2 * BLOCK_SIZE] == block(2)


def test_simulated_crash_escapes_ordinary_error_handling():
    dev = CrashDevice(NBLOCKS, crash_after_writes=1)
    with pytest.raises(SimulatedCrash):
        try:
            dev.write(0, block(1))
        except Exception:  # what engine code catches must not hide a power cut
            pytest.fail("SimulatedCrash was caught as an Exception")


# A workload: ("w", block, count, fill) or ("s",).
ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("w"),
            st.integers(0, NBLOCKS - 1),
            st.integers(1, 3),
            st.integers(1, 255),
        ),
        st.just(("s",)),
    ),
    max_size=25,
)


def run(workload) -> tuple[CrashDevice, bytearray, bytearray, bytearray]:
    """Run on a CrashDevice and on a model: (device, durable, current, pending-region mask)."""
    dev = CrashDevice(NBLOCKS)
    durable = bytearray(NBLOCKS * BLOCK_SIZE)
    current = bytearray(durable)
    pending = bytearray(len(durable))
    for op in workload:
        if op[0] == "s":
            dev.sync()
            durable[:] = current
            pending = bytearray(len(durable))
        else:
            _, start, count, fill = op
            count = min(count, NBLOCKS - start)
            dev.write(start, block(fill, count))
            lo, hi = start * BLOCK_SIZE, (start + count) * BLOCK_SIZE
            current[lo:hi] = block(fill, count)
            pending[lo:hi] = b"\1" * (hi - lo)
    return dev, durable, current, pending


@settings(max_examples=150, deadline=None)
@given(ops, st.integers(0, 2**32))
def test_crash_images(workload, seed):
    dev, durable, current, pending = run(workload)
    rng = random.Random(seed)
    assert dev.crash_image(rng, "drop_all") == durable
    assert dev.crash_image(rng, "keep_all") == current
    assert dev.read(0, NBLOCKS) == current
    # The values each pending byte may take: durable, or what any pending write put there.
    last_sync = max((i for i, op in enumerate(workload) if op[0] == "s"), default=-1)
    unsynced = [op for op in workload[last_sync + 1 :] if op[0] == "w"]
    assert len(unsynced) == dev.pending_writes
    for mode in ("random", "torn"):
        image = dev.crash_image(rng, mode)
        garbage = 0
        for i in range(0, len(image), SECTOR_SIZE):
            got = bytes(image[i : i + SECTOR_SIZE])
            if not pending[i]:
                # Everything synced (and untouched since) is in every crash image.
                assert got == durable[i : i + SECTOR_SIZE]
                continue
            blk = i // BLOCK_SIZE
            allowed = {bytes(durable[i : i + SECTOR_SIZE])} | {
                bytes([fill]) * SECTOR_SIZE
                for _, start, count, fill in unsynced
                if start <= blk < min(start + count, NBLOCKS)
            }
            if mode == "random":
                # Whole writes only: every sector of a block comes from the same version.
                assert got in allowed
                assert image[blk * BLOCK_SIZE : (blk + 1) * BLOCK_SIZE] == got * (
                    BLOCK_SIZE // SECTOR_SIZE
                )
            else:
                garbage += got not in allowed
        assert garbage <= 1


def test_random_and_torn_modes_explore_outcomes():
    dev = CrashDevice(NBLOCKS)
    dev.write(0, block(1, 2))
    dev.write(3, block(2))
    rng = random.Random(1)
    images = {bytes(dev.crash_image(rng, "random")[: 4 * BLOCK_SIZE]) for _ in range(200)}
    assert len(images) == 4  # every subset of the two writes
    torn = [dev.crash_image(rng, "torn") for _ in range(300)]
    allowed = {bytes(SECTOR_SIZE), bytes([1]) * SECTOR_SIZE, bytes([2]) * SECTOR_SIZE}
    sectors = [
        bytes(img[i : i + SECTOR_SIZE]) for img in torn for i in range(0, len(img), SECTOR_SIZE)
    ]
    assert any(s not in allowed for s in sectors), "a garbage sector should occur"
    partial = [img[:BLOCK_SIZE] for img in torn if 0 < img[:BLOCK_SIZE].count(1) < BLOCK_SIZE]
    assert partial, "some write should be torn within a block"
    for img in torn:
        assert img[4 * BLOCK_SIZE :] == bytes(4 * BLOCK_SIZE)  # never outside pending writes
