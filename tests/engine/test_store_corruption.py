"""Damage on disk is detected, never returned as data, and turns the engine read-only.

Bits are flipped inside the stored bytes of used objects (tree pages of every tree, data extents,
spilled values), located by walking the trees; the padding after an object's stored bytes is
not covered by its seal (it is never read as data). Superblocks and headers have a fallback.
"""

from __future__ import annotations

import random

import pytest

from cartridgefs.engine.blockdev import MemoryDevice
from cartridgefs.engine.fsck import run_fsck
from cartridgefs.engine.seal import KIND_BLOB, KIND_EXTENT, KIND_NODE
from cartridgefs.engine.store import Engine
from cartridgefs.errors import IntegrityError, ReadOnly

NBLOCKS = 1200
FILES = {b"file-%d" % i: random.Random(i).randbytes(20_000 + 3000 * i) for i in range(6)}


def build(store, compression: bool = True) -> MemoryDevice:
    """A cartridge with several pages per tree, extents, spilled values and a snapshot."""
    dev = MemoryDevice(NBLOCKS)
    engine = Engine.format(dev, compression=compression)
    for key, data in FILES.items():
        store.write_file(engine, key, data, extent_max=8192)
    with engine.txn() as t:
        for i in range(300):
            t.put("fs", b"name-%04d" % i, b"v" * (i % 50))
            t.put("meta", b"m-%04d" % i, bytes([i % 256]) * 30)
        t.put("fs", b"spilled", b"S" * 3000)
    engine.snapshot_create("before")
    with engine.txn() as t:
        for i in range(0, 300, 3):
            t.delete("fs", b"name-%04d" % i)
    engine.sync()
    store.assert_fsck_clean(engine)
    engine.close()
    return dev


def copy_of(dev: MemoryDevice) -> MemoryDevice:
    new = MemoryDevice(dev.nblocks)
    new.buffer[:] = dev.buffer
    return new


def read_everything(store, engine: Engine) -> None:
    """Every page and every byte of data reachable from the live state and the snapshots."""
    store.dump(engine)
    with engine.reader() as state:
        for tree in ("rc", "snap"):
            list(engine.items(state, tree))


def targets(store, dev: MemoryDevice) -> list[tuple[str, int, int]]:
    """(description, block, stored length) of used objects of each tree and kind."""
    engine = Engine.open_device(copy_of(dev))
    found: dict[str, list[tuple[int, int]]] = {}
    for tree, ptr in store.objects(engine).values():
        kind = {KIND_NODE: "page", KIND_EXTENT: "extent", KIND_BLOB: "blob"}[ptr.kind]
        found.setdefault(f"{tree} {kind}", []).append((ptr.block, ptr.stored_len))
    engine.close()
    assert {"fs page", "fs extent", "fs blob", "meta page", "rc page", "snap page", "free page"} <= set(found)
    rng = random.Random(5)
    return [(name, *rng.choice(objs)) for name, objs in sorted(found.items()) for _ in range(3)]


@pytest.fixture
def built(store) -> MemoryDevice:
    return build(store)


def test_every_used_object_is_verified(store, built) -> None:
    rng = random.Random(11)
    checked = set()
    for name, block, stored_len in targets(store, built):
        checked.add(name)
        dev = copy_of(built)
        store.flip_byte(dev.buffer, block, stored_len, rng)
        try:
            engine = Engine.open_device(dev)
        except IntegrityError:
            assert name == "free page", name  # the free map is read at open
            continue
        with pytest.raises(IntegrityError):
            read_everything(store, engine)
        assert engine.damaged, name
        with pytest.raises(ReadOnly), engine.txn() as t:
            t.put("meta", b"k", b"v")
        with pytest.raises(ReadOnly):
            engine.write_data(b"more")
        problems = run_fsck(engine)
        assert problems["trees"], (name, problems)
        engine.close()
    assert len(checked) >= 7


def test_the_next_commit_records_needs_check(store, built) -> None:
    dev = copy_of(built)
    engine = Engine.open_device(dev)
    ptr = store.objects_of_kind(engine, KIND_EXTENT)[0]
    engine.close()
    store.flip_byte(dev.buffer, ptr.block, ptr.stored_len, random.Random(1))
    engine = Engine.open_device(dev)
    with pytest.raises(IntegrityError):
        engine.read_extent(ptr)
    engine.close()
    assert Engine.open_device(dev).readonly


def test_unchanged_copy_reads_back(store, built) -> None:
    """Control: without a flip, the same reads succeed with the right bytes."""
    engine = Engine.open_device(copy_of(built))
    read_everything(store, engine)
    for key, data in FILES.items():
        assert store.digest(store.read_file(engine, key)) == store.digest(data)
    assert not engine.damaged


def _latest_slot(dev: MemoryDevice) -> tuple[int, int]:
    engine = Engine.open_device(dev, readonly=True)
    gen = engine.durable_gen
    engine.close()
    return 1 + gen % 2, gen


def test_damaged_newest_superblock_falls_back_to_the_previous_generation(store) -> None:
    dev = MemoryDevice(200)
    engine = Engine.format(dev)
    with engine.txn() as t:
        t.put("fs", b"k", b"old")
    engine.sync()
    with engine.txn() as t:
        t.put("fs", b"k", b"new")
    engine.sync()
    engine.close()
    slot, gen = _latest_slot(dev)
    dev.buffer[slot * 4096 + 40] ^= 0x10
    ro = Engine.open_device(dev, readonly=True)
    assert ro.durable_gen == gen - 1
    assert store.dump(ro)["fs"] == {b"k": b"old"}
    assert run_fsck(ro)["superblocks"]  # the bad slot is reported
    ro.close()
    # A writable open commits at once, so both slots are valid again.
    engine = Engine.open_device(dev)
    assert store.dump(engine)["fs"] == {b"k": b"old"}
    store.assert_fsck_clean(engine)
    engine.close()


def test_both_superblocks_damaged_refuses_to_open() -> None:
    dev = MemoryDevice(100)
    Engine.format(dev).close()
    for block in (1, 2):
        dev.buffer[block * 4096 + 35] ^= 1
    with pytest.raises(IntegrityError):
        Engine.open_device(dev)


@pytest.mark.parametrize("block", ["primary", "backup"])
def test_damaged_header_copy_uses_the_other(store, block) -> None:
    dev = MemoryDevice(100)
    engine = Engine.format(dev)
    with engine.txn() as t:
        t.put("fs", b"k", b"v")
    engine.close()
    where = 0 if block == "primary" else dev.nblocks - 1
    dev.buffer[where * 4096 + 17] ^= 0x01  # block count field
    engine = Engine.open_device(dev)
    assert store.dump(engine)["fs"] == {b"k": b"v"}
    assert run_fsck(engine)["header"]
    engine.close()
    dev.buffer[0:4096] = bytes(4096)  # now the primary is gone too for "backup"
    if block == "backup":
        with pytest.raises(IntegrityError):
            Engine.open_device(dev)
