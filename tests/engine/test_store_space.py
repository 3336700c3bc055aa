"""A full cartridge fails cleanly and recovers; blocks a reader can see are not reused."""

from __future__ import annotations

import random

import pytest

from cartridgefs.engine.alloc import get_bit
from cartridgefs.engine.blockdev import BLOCK_SIZE, MemoryDevice
from cartridgefs.engine.store import Engine
from cartridgefs.errors import NoSpace

FILE_SIZE = 64 * 1024


def fill(store, engine: Engine, rng: random.Random, files: dict[bytes, bytes], limit: int = 200) -> None:
    """Write random files (each synced) until the cartridge is full; NoSpace must come."""
    for _ in range(limit):
        key = b"file-%03d" % len(files)
        data = rng.randbytes(FILE_SIZE)
        try:
            store.write_file(engine, key, data)
            engine.sync()
        except NoSpace:
            return
        files[key] = data
    pytest.fail(f"still not full after {limit} files")


def check_state(store, engine: Engine, files: dict[bytes, bytes]) -> None:
    assert engine.info()["reserved_blocks"] == 0
    store.assert_fsck_clean(engine)
    store.assert_blocks_add_up(engine)
    for key, data in files.items():
        assert store.digest(store.read_file(engine, key)) == store.digest(data), key


@pytest.mark.parametrize("passphrase", [None, b"pw"], ids=["plain", "encrypted"])
def test_fill_delete_refill(store, rng, passphrase) -> None:
    dev = MemoryDevice(600)
    engine = Engine.format(dev, compression=False, passphrase=passphrase, kdf_log2n=10)
    files: dict[bytes, bytes] = {}
    fill(store, engine, rng, files)
    assert len(files) >= 5
    check_state(store, engine, files)

    # Full: the metadata reserve still lets a deletion commit.
    doomed = sorted(files)[::2]
    with engine.txn() as t:
        for key in doomed:
            for k, _ in list(t.items("fs", key, key + b"\xff" * 9)):
                t.delete("fs", k)
    for key in doomed:
        del files[key]
    engine.sync()
    engine.sync()  # freed blocks are reusable once the freeing generation is durable
    check_state(store, engine, files)

    more: dict[bytes, bytes] = {}
    store.write_file(engine, b"after-delete", rng.randbytes(FILE_SIZE))
    engine.sync()
    fill(store, engine, rng, more)
    files.update(more)
    check_state(store, engine, files)
    engine.close()
    engine = Engine.open_device(dev, passphrase=passphrase)
    check_state(store, engine, files)


def test_transaction_running_out_of_space_is_rolled_back(store, rng) -> None:
    """Spilled values allocate inside the transaction; NoSpace midway must undo all of it."""
    dev = MemoryDevice(600)
    engine = Engine.format(dev, compression=False)
    files: dict[bytes, bytes] = {}
    for i in range(3):
        files[b"file-%d" % i] = rng.randbytes(FILE_SIZE)
        store.write_file(engine, b"file-%d" % i, files[b"file-%d" % i])
    engine.sync()
    before = store.dump(engine)
    accounting = store.accounting(engine)
    with pytest.raises(NoSpace), engine.txn() as t:
        for i in range(5000):
            t.put("meta", b"big-%05d" % i, rng.randbytes(2000))
    assert store.accounting(engine) == accounting
    assert store.dump(engine) == before
    check_state(store, engine, files)
    with engine.txn() as t:  # still writable
        t.put("meta", b"small", b"ok")
    engine.sync()
    check_state(store, engine, files)


def test_commit_of_many_small_values_in_a_full_cartridge(store, rng) -> None:
    """Pages are only allocated at commit: a too-big commit fails without damaging the disk."""
    dev = MemoryDevice(300)
    engine = Engine.format(dev, compression=False)
    files: dict[bytes, bytes] = {}
    fill(store, engine, rng, files)
    durable = store.dump(engine)
    try:
        with engine.txn() as t:
            for i in range(20_000):
                t.put("meta", b"small-%06d" % i, rng.randbytes(100))
        engine.sync()
    except NoSpace:
        pass
    else:
        pytest.fail("2 MB of values fit in a full cartridge")
    engine.close()
    # What is on disk is the last durable state, intact.
    engine = Engine.open_device(dev)
    assert store.dump(engine) == durable
    check_state(store, engine, files)


def test_reader_keeps_deleted_extents_alive(store, rng) -> None:
    dev = MemoryDevice(400)
    engine = Engine.format(dev, compression=False)
    old = rng.randbytes(5 * FILE_SIZE)
    ptrs = store.write_file(engine, b"old", old)
    engine.sync()
    engine.close()
    engine = Engine.open_device(dev, cache_bytes=0)  # every read goes to the disk
    old_blocks = {p.block + i for p in ptrs for i in range(p.nblocks)}

    with engine.reader() as view:
        with engine.txn() as t:
            for k, _ in list(t.items("fs", b"old", b"old\xff")):
                t.delete("fs", k)
        engine.sync()
        engine.sync()
        assert engine.info()["pending_blocks"] >= len(old_blocks)
        # Use up all the free space: none of it may be the old file's blocks.
        filled: dict[bytes, bytes] = {}
        fill(store, engine, rng, filled)
        assert all(get_bit(engine.alloc.inuse, b) for b in old_blocks)
        assert store.digest(store.read_file(engine, b"old", state=view)) == store.digest(old)

    # The reader has ended: the blocks are free again and get reused.
    assert not any(get_bit(engine.alloc.inuse, b) for b in old_blocks)
    reused = set()
    for i in range(10):
        new = store.write_file(engine, b"reuse-%d" % i, rng.randbytes(FILE_SIZE))
        engine.sync()
        reused |= {p.block + j for p in new for j in range(p.nblocks)} & old_blocks
        if reused:
            break
    assert reused
    with engine.reader() as view:
        assert engine.get(view, "fs", b"old" + bytes(8)) is None
    store.assert_fsck_clean(engine)


def cached_blocks(cached_pages, path: str, ptrs) -> int:
    """How many blocks of these extents are in the page cache."""
    return sum(cached_pages(path, p.block * BLOCK_SIZE, p.nblocks * BLOCK_SIZE) for p in ptrs)


def test_freed_blocks_leave_the_page_cache(store, rng, tmp_path, cached_pages) -> None:
    """Blocks that became reusable have their cached pages dropped (a deleted file's pages
    leave the page cache at once; a cartridge's freed blocks must not hold on to theirs), but
    not while a reader may still read them, and never a live block's."""
    path = str(tmp_path / "c.cart")
    engine = Engine.create(path, 2048, compression=False)
    keep = rng.randbytes(4 * FILE_SIZE)
    kept = store.write_file(engine, b"keep", keep)
    old = store.write_file(engine, b"old", rng.randbytes(8 * FILE_SIZE))
    engine.sync()
    engine.drop_released_pages()

    def cached(ptrs) -> int:
        return cached_blocks(cached_pages, path, ptrs)

    def blocks(ptrs) -> int:
        return sum(p.nblocks for p in ptrs)

    assert cached(kept + old) == blocks(kept + old)  # just written
    with engine.reader():
        with engine.txn() as t:
            for k, _ in list(t.items("fs", b"old", b"old\xff")):
                t.delete("fs", k)
        engine.sync()
        engine.drop_released_pages()
        assert cached(old) == blocks(old)  # the reader may still read them
    # The reader has ended, so the old file's blocks are reusable now.
    assert engine.has_released_pages
    assert engine.drop_released_pages() >= blocks(old)
    assert not engine.has_released_pages
    assert cached(old) == 0
    assert cached(kept) == blocks(kept)
    assert store.digest(store.read_file(engine, b"keep")) == store.digest(keep)
    store.assert_fsck_clean(engine)
    engine.close()


def test_released_runs_waiting_for_a_drop_are_bounded(store, rng, tmp_path, cached_pages, monkeypatch) -> None:
    """Runs waiting for their pages to be dropped are merged and, past the bound, only the
    largest are kept (nothing else depends on them: the blocks are free either way)."""
    monkeypatch.setattr("cartridgefs.engine.store.RELEASED_RUNS_MAX", 8)
    path = str(tmp_path / "c.cart")
    engine = Engine.create(path, 4096, compression=False)
    sizes = [BLOCK_SIZE * (1 + i % 3) for i in range(30)]
    sizes[7] = 16 * FILE_SIZE  # the largest run: its pages must still be dropped
    doomed = []
    for i, size in enumerate(sizes):
        doomed.append(store.write_file(engine, b"doomed-%02d" % i, rng.randbytes(size)))
        store.write_file(engine, b"keep-%02d" % i, rng.randbytes(BLOCK_SIZE))  # keeps runs apart
    engine.sync()
    engine.drop_released_pages()
    with engine.txn() as t:
        for k, _ in list(t.items("fs", b"doomed-", b"doomed-\xff")):
            t.delete("fs", k)
    engine.sync()
    assert len(engine._released) <= 8
    engine.drop_released_pages()
    big = doomed[7]
    assert cached_blocks(cached_pages, path, big) == 0
    store.assert_fsck_clean(engine)
    engine.close()
