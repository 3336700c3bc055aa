"""durable(): concurrent callers share commits, each returns only once its changes are on disk,
and a cartridge that turned read-only makes them fail instead of waiting forever."""

from __future__ import annotations

import os

import pytest
import trio

from cartridgefs.engine.alloc import get_bit
from cartridgefs.engine.blockdev import BLOCK_SIZE
from cartridgefs.engine.store import Engine
from cartridgefs.errors import ReadOnly
from cartridgefs.fs.filesystem import Ctx, FileSystem
from cartridgefs.fs.items import ROOT_INO

CTX = Ctx(origin="test")


async def test_concurrent_callers_share_commits_and_see_their_changes_durable(tmp_path):
    path = str(tmp_path / "t.cart")
    fs = FileSystem(Engine.create(path, 20_000))
    generation = fs.engine.state.gen
    made = []

    async def change_and_wait(i: int) -> None:
        await fs.mkdir(CTX, ROOT_INO, b"d%02d" % i)
        target = fs.engine.sync_target
        await fs.durable()
        assert fs.engine.durable_gen >= target
        made.append(i)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(change_and_wait, i)
    assert sorted(made) == list(range(20))
    assert fs.engine.state.gen - generation <= 3  # grouped, not one commit per caller
    fs.engine.dev.close()  # no close(): only what durable() wrote may count
    reopened = FileSystem(Engine.open(path))
    names = [name for name, _ in await reopened.listdir_sorted(ROOT_INO)]
    assert names == [b"d%02d" % i for i in range(20)]
    await reopened.close()


async def test_a_read_only_cartridge_fails_waiters_instead_of_hanging(tmp_path):
    fs = FileSystem(Engine.create(str(tmp_path / "t.cart"), 20_000))
    await fs.mkdir(CTX, ROOT_INO, b"d")
    fs.engine.readonly = True  # as after a failed commit
    with trio.fail_after(10), pytest.raises(ReadOnly):
        await fs.durable()


async def test_the_periodic_task_gives_back_the_page_cache_of_deleted_data(tmp_path, cached_pages):
    """After a delete, the periodic task has the freed blocks' pages dropped from the page cache
    (as deleting a plain file would): they are garbage and would crowd out live data."""
    path = str(tmp_path / "t.cart")
    fs = FileSystem(Engine.create(path, 20_000, compression=False))
    engine = fs.engine
    inode = await fs.create(CTX, ROOT_INO, b"big")
    await fs.open(inode.ino)
    await fs.write(CTX, inode.ino, 0, os.urandom(4 << 20))
    await fs.release(inode.ino)
    await fs.durable()
    before = bytes(engine.alloc.inuse)
    await fs.unlink(CTX, ROOT_INO, b"big")
    await fs.durable()
    freed = [b for b in range(engine.alloc.nblocks) if get_bit(before, b) and not get_bit(engine.alloc.inuse, b)]
    assert len(freed) >= (4 << 20) // BLOCK_SIZE

    def cached() -> int:
        return sum(cached_pages(path, block * BLOCK_SIZE, BLOCK_SIZE) for block in freed)

    assert cached() == len(freed)  # written a moment ago
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.commit_periodically)
            while engine.has_released_pages:
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert cached() == 0
    await fs.close()
