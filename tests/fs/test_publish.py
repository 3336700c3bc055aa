"""publish: buffered bytes, name and attributes land together; a refused publish leaves nothing."""

from __future__ import annotations

import hashlib

import pytest

from cartridgefs.engine.fsck import run_fsck
from cartridgefs.engine.store import Engine
from cartridgefs.errors import IsADirectory
from cartridgefs.fs.filesystem import Ctx, FileSystem
from cartridgefs.fs.fsck import FS_CHECKS
from cartridgefs.fs.items import ROOT_INO

CTX = Ctx(origin="test")


async def test_publish_stores_buffer_name_and_attributes_at_once(tmp_path):
    fs = FileSystem(Engine.create(str(tmp_path / "t.cart"), 20_000))
    body = bytes(range(256)) * 40
    ino = await fs.create_unlinked(CTX)
    await fs.write(CTX, ino, 0, body)
    await fs.publish(CTX, ino, ROOT_INO, b"obj", md5=hashlib.md5(body).digest(),
                     xattrs={b"user.a": b"1"}, content_xattrs={b"user.sum": b"abc"})
    inode = await fs.lookup(ROOT_INO, b"obj")
    assert (inode.ino, inode.size, inode.etag) == (ino, len(body), hashlib.md5(body).hexdigest())
    assert await fs.read(ino, 0, len(body) + 10) == body
    assert await fs.xattrs(ino, b"user.") == {b"user.a": b"1",
                                              b"user.sum": b"%d:abc" % inode.data_version}
    await fs.write(CTX, ino, 0, b"changed")  # through the mount: the tagged value goes stale
    await fs.flush(ino)
    assert (await fs.getattr(ino)).data_version != inode.data_version
    await fs.sync()
    assert {k: v for k, v in run_fsck(fs.engine, extra=FS_CHECKS).items() if v} == {}
    await fs.close()


async def test_refused_publish_stores_nothing(tmp_path):
    fs = FileSystem(Engine.create(str(tmp_path / "t.cart"), 20_000))
    await fs.mkdir(CTX, ROOT_INO, b"taken")
    await fs.sync()
    used = fs.engine.info()["used_blocks"]
    ino = await fs.create_unlinked(CTX)
    await fs.write(CTX, ino, 0, b"x" * 300_000)
    with pytest.raises(IsADirectory):
        await fs.publish(CTX, ino, ROOT_INO, b"taken")
    await fs.discard_unlinked(ino)
    await fs.sync()
    assert fs.engine.info()["used_blocks"] == used
    assert [name for name, _ in await fs.listdir_sorted(ROOT_INO)] == [b"taken"]
    assert {k: v for k, v in run_fsck(fs.engine, extra=FS_CHECKS).items() if v} == {}
    await fs.close()
