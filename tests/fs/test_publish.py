"""publish: buffered bytes, name and attributes land together; a refused publish leaves nothing."""

from __future__ import annotations

import hashlib
import os

import pytest

from cartridgefs.engine.fsck import run_fsck
from cartridgefs.engine.store import Engine
from cartridgefs.errors import IsADirectory, NotFound
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


async def _published_both_ways(fs: FileSystem, body: bytes, attrs: dict) -> tuple[int, int]:
    """The same file stored by create_unlinked + write + publish and by publish_bytes."""
    ino = await fs.create_unlinked(CTX)
    if body:
        await fs.write(CTX, ino, 0, body)
    await fs.publish(CTX, ino, ROOT_INO, b"streamed", **attrs)
    return ino, await fs.publish_bytes(CTX, ROOT_INO, b"inline", body, **attrs)


@pytest.mark.parametrize("body", [b"", b"x", bytes(range(256)) * 300])
async def test_publish_bytes_stores_what_publish_stores(tmp_path, body):
    """One transaction, the same items: attributes, ETag, tagged checksums, bytes."""
    fs = FileSystem(Engine.create(str(tmp_path / "t.cart"), 20_000))
    attrs = {"md5": hashlib.md5(body).digest(), "xattrs": {b"user.a": b"1"},
             "content_xattrs": {b"user.sum": b"abc"}, "mtime_ns": 1_700_000_000_123_456_789}
    streamed, inline = await _published_both_ways(fs, body, attrs)
    a, b = await fs.getattr(streamed), await fs.getattr(inline)
    stamps = ("ino", "atime_ns", "ctime_ns", "btime_ns")
    assert {k: v for k, v in a._asdict().items() if k not in stamps} == \
           {k: v for k, v in b._asdict().items() if k not in stamps}
    assert (b.nlink, b.size, b.mtime_ns, b.etag) == (1, len(body), attrs["mtime_ns"], hashlib.md5(body).hexdigest())
    assert await fs.xattrs(streamed) == await fs.xattrs(inline) == {
        b"user.a": b"1", b"user.sum": b"%d:abc" % a.data_version}
    assert await fs.read(inline, 0, len(body) + 10) == await fs.read(streamed, 0, len(body) + 10) == body
    await fs.sync()
    assert {k: v for k, v in run_fsck(fs.engine, extra=FS_CHECKS).items() if v} == {}
    await fs.close()


async def test_publish_bytes_replaces_and_a_refused_one_stores_nothing(tmp_path):
    fs = FileSystem(Engine.create(str(tmp_path / "t.cart"), 20_000))
    await fs.mkdir(CTX, ROOT_INO, b"taken")
    await fs.sync()
    empty = fs.engine.info()["used_blocks"]
    first = await fs.publish_bytes(CTX, ROOT_INO, b"obj", b"1" * 50_000)
    second = await fs.publish_bytes(CTX, ROOT_INO, b"obj", b"2" * 50_000)
    assert (await fs.lookup(ROOT_INO, b"obj")).ino == second != first
    with pytest.raises(NotFound):
        await fs.getattr(first)  # replaced: dropped with its extents
    await fs.sync()
    used = fs.engine.info()["used_blocks"]
    with pytest.raises(IsADirectory):  # fails after its extent was written
        await fs.publish_bytes(CTX, ROOT_INO, b"taken", os.urandom(60_000))
    assert fs.engine.info()["reserved_blocks"] == 0  # given back at once
    await fs.sync()
    assert fs.engine.info()["used_blocks"] == used
    await fs.unlink(CTX, ROOT_INO, b"obj")  # the first object went when it was replaced
    await fs.sync()
    assert fs.engine.info()["used_blocks"] == empty < used
    assert [name for name, _ in await fs.listdir_sorted(ROOT_INO)] == [b"taken"]
    assert {k: v for k, v in run_fsck(fs.engine, extra=FS_CHECKS).items() if v} == {}
    await fs.close()
