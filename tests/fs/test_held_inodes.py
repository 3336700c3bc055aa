"""A removed directory, FIFO or socket that a holder (the kernel, for a mount) still knows stays,
as an orphan, until the holder lets go; then, or at the next open, its space is freed."""

from __future__ import annotations

import stat

import pytest

from cartridgefs.engine.fsck import run_fsck
from cartridgefs.engine.store import Engine
from cartridgefs.errors import NotFound
from cartridgefs.fs.filesystem import Ctx, FileSystem
from cartridgefs.fs.fsck import FS_CHECKS
from cartridgefs.fs.items import inode_key, orphan_key
from cartridgefs.fs.multipart import Uploads

CTX = Ctx(origin="test")


def fsck_problems(engine: Engine) -> dict[str, list[str]]:
    return {name: found for name, found in run_fsck(engine, extra=FS_CHECKS).items() if found}


def stored(fs: FileSystem, ino: int) -> tuple[bool, bool]:
    """(whether the inode exists, whether an orphan record keeps it)."""
    with fs.engine.txn() as t:
        return t.get("fs", inode_key(ino)) is not None, t.get("meta", orphan_key(ino)) is not None


async def held_fs(tmp_path) -> tuple[FileSystem, set[int]]:
    fs = FileSystem(Engine.create(str(tmp_path / "t.cart"), 20_000))
    held: set[int] = set()
    fs.holders.append(held.__contains__)
    return fs, held


async def test_removed_special_files_stay_while_held(tmp_path):
    fs, held = await held_fs(tmp_path)
    d = await fs.mkdir(CTX, 1, b"d")
    fifo = await fs.mknod(CTX, 1, b"p", stat.S_IFIFO | 0o644)
    held.update({d.ino, fifo.ino})
    await fs.rmdir(CTX, 1, b"d")
    await fs.unlink(CTX, 1, b"p")

    assert stored(fs, d.ino) == (True, True) and stored(fs, fifo.ino) == (True, True)
    assert (await fs.getattr(d.ino)).nlink == 0
    changed = await fs.setattr(CTX, fifo.ino, mode=stat.S_IFIFO | 0o600)  # fchmod of the open FIFO
    assert changed.nlink == 0 and stat.S_IMODE(changed.mode) == 0o600
    assert fsck_problems(fs.engine) == {}

    # Nothing can be made in a removed directory (ENOENT, as on Linux).
    with pytest.raises(NotFound):
        await fs.create(CTX, d.ino, b"f")
    with pytest.raises(NotFound):
        await fs.mkdir(CTX, d.ino, b"sub")

    await fs.let_go(d.ino)  # still held: nothing happens
    assert stored(fs, d.ino) == (True, True)
    held.clear()
    await fs.let_go(d.ino)
    await fs.let_go(fifo.ino)
    assert stored(fs, d.ino) == (False, False) and stored(fs, fifo.ino) == (False, False)
    assert fsck_problems(fs.engine) == {}
    await fs.close()


async def test_a_held_regular_file_is_freed_at_its_last_name(tmp_path):
    """Regular files are kept by open handles only (their space must not wait for the kernel)."""
    fs, held = await held_fs(tmp_path)
    f = await fs.create(CTX, 1, b"f")
    await fs.write(CTX, f.ino, 0, b"x" * 300_000)
    await fs.sync()
    held.add(f.ino)
    free_before = (await fs.statfs())["free_blocks"]
    await fs.unlink(CTX, 1, b"f")
    await fs.sync()
    assert stored(fs, f.ino) == (False, False)
    assert (await fs.statfs())["free_blocks"] > free_before
    await fs.close()


async def test_orphans_of_a_holder_are_freed_at_the_next_open(tmp_path):
    path = str(tmp_path / "t.cart")
    fs, held = await held_fs(tmp_path)
    d = await fs.mkdir(CTX, 1, b"d")
    held.add(d.ino)
    await fs.rmdir(CTX, 1, b"d")
    await fs.close()  # the holder never let go (a crash, or an unmount before the kernel forgot)

    fs = FileSystem(Engine.open(path))
    assert stored(fs, d.ino) == (False, False)
    assert fsck_problems(fs.engine) == {}
    await fs.close()


async def test_a_removed_bucket_drops_its_uploads_at_once_even_when_held(tmp_path):
    fs, held = await held_fs(tmp_path)
    bucket = await fs.mkdir(CTX, 1, b"bucket")
    uploads = Uploads(fs)
    upload = await uploads.create(bucket.ino, "bucket", b"key", {}, {})
    part = await uploads.new_part_file(CTX)
    await fs.write(CTX, part, 0, b"y" * 200_000)
    await uploads.commit_part(bucket.ino, upload.upload_id, 1, part, b"\0" * 16, {})
    held.add(bucket.ino)
    await fs.rmdir(CTX, 1, b"bucket")
    assert await uploads.list(bucket.ino) == []
    assert stored(fs, part) == (False, False)
    assert fsck_problems(fs.engine) == {}
    await fs.close()
