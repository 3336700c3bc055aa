"""The filesystem-level fsck checks pass on a busy namespace and catch broken link counts."""

from __future__ import annotations

from cartridgefs.engine.fsck import run_fsck
from cartridgefs.engine.store import Engine
from cartridgefs.fs.filesystem import Ctx, FileSystem
from cartridgefs.fs.fsck import FS_CHECKS
from cartridgefs.fs.items import DirEntry, Inode, dirent_key, inode_key

CTX = Ctx(origin="test")


def problems(engine: Engine) -> dict[str, list[str]]:
    return {name: found for name, found in run_fsck(engine, extra=FS_CHECKS).items() if found}


async def busy_namespace(tmp_path) -> tuple[FileSystem, dict[str, int]]:
    fs = FileSystem(Engine.create(str(tmp_path / "t.cart"), 20_000))
    d = await fs.mkdir(CTX, 1, b"d")
    await fs.mkdir(CTX, d.ino, b"e")
    f = await fs.create(CTX, d.ino, b"f")
    await fs.write(CTX, f.ino, 0, b"x" * 100_000)
    await fs.link(CTX, f.ino, 1, b"f2")
    await fs.symlink(CTX, 1, b"l", b"d/f")
    await fs.rename(CTX, d.ino, b"e", 1, b"e2")
    await fs.setattr(CTX, f.ino, size=5000)
    await fs.sync()
    return fs, {"d": d.ino, "f": f.ino}


async def test_clean_namespace_passes(tmp_path):
    fs, _ = await busy_namespace(tmp_path)
    assert problems(fs.engine) == {}
    await fs.close()


async def test_wrong_link_count_is_reported(tmp_path):
    fs, inos = await busy_namespace(tmp_path)
    with fs.engine.txn() as t:
        inode = Inode.decode(inos["f"], t.get("fs", inode_key(inos["f"])))
        t.put("fs", inode_key(inos["f"]), inode.changed(nlink=5).encode())
    assert problems(fs.engine) == {"link counts": [f"inode {inos['f']}: link count 5, expected 2"]}
    await fs.close()


async def test_dangling_entry_is_reported(tmp_path):
    fs, inos = await busy_namespace(tmp_path)
    with fs.engine.txn() as t:
        t.put("fs", dirent_key(inos["d"], b"ghost"), DirEntry(999_999, 0o100000, 1_000).encode())
    found = problems(fs.engine)
    assert any("missing inode 999999" in p for p in found["namespace"])
    assert any("no matching readdir cursor" in p for p in found["namespace"])
    await fs.close()
