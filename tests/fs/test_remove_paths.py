"""FileSystem.remove_paths and remove_empty_implicit (the S3 deletes, in one transaction) and the
batch reads of FsView (pinned views, getattrs, getxattrs) that listings use."""

from __future__ import annotations

import pytest

from cartridgefs.engine.fsck import run_fsck
from cartridgefs.engine.store import Engine
from cartridgefs.errors import NotADirectory, NotFound
from cartridgefs.fs.filesystem import FLAG_IMPLICIT_DIR, Change, Ctx, FileSystem, Removal
from cartridgefs.fs.fsck import FS_CHECKS
from cartridgefs.fs.items import ROOT_INO

CTX = Ctx(origin="test")
STRIP = b"cartridge.s3."


@pytest.fixture
async def fs(tmp_path):
    fs = FileSystem(Engine.create(str(tmp_path / "t.cart"), 20_000))
    yield fs
    assert {name: p for name, p in run_fsck(fs.engine, extra=FS_CHECKS).items() if p} == {}
    await fs.close()


async def mkdirs(fs: FileSystem, top: int, path: str, implicit: bool = True) -> int:
    """The directory at `path` below `top`; missing ones created (implicit ones by default)."""
    ino = top
    for name in path.split("/"):
        try:
            ino = (await fs.lookup(ino, name.encode())).ino
        except NotFound:
            ino = (await fs.mkdir(CTX, ino, name.encode(), flags=FLAG_IMPLICIT_DIR if implicit else 0)).ino
    return ino


async def put(fs: FileSystem, top: int, path: str) -> int:
    """A file at `path` below `top` holding its path, with implicit parent directories."""
    head, _, name = path.rpartition("/")
    parent = await mkdirs(fs, top, head) if head else top
    ino = (await fs.create(CTX, parent, name.encode())).ino
    await fs.write(CTX, ino, 0, path.encode())
    return ino


async def tree(fs: FileSystem, ino: int, base: str = "") -> list[str]:
    """Every path below `ino` ("d/" for directories), in name order."""
    out = []
    for name, entry in await fs.listdir_sorted(ino, b"", 10_000):
        path = base + name.decode()
        if (await fs.getattr(entry.ino)).is_dir:
            out.append(path + "/")
            out += await tree(fs, entry.ino, path + "/")
        else:
            out.append(path)
    return out


def removal(key: str) -> Removal:
    """What deleting S3 key `key` removes (as s3api.mapping.removal)."""
    names = tuple(name.encode() for name in key.rstrip("/").split("/"))
    return Removal(names, key.endswith("/"))


async def test_files_go_with_the_implicit_directories_they_leave_empty(fs):
    top = await mkdirs(fs, ROOT_INO, "bucket", implicit=False)
    for path in ("a/b/c/1", "a/b/c/2", "a/b/3", "a/x", "d/e/4", "top"):
        await put(fs, top, path)
    await mkdirs(fs, top, "d/explicit", implicit=False)
    await fs.remove_paths(CTX, top, [removal(k) for k in ("a/b/c/1", "a/b/c/2", "a/b/3", "d/e/4", "top")],
                          STRIP)
    assert await tree(fs, top) == ["a/", "a/x", "d/", "d/explicit/"]  # d stays: not empty
    await fs.remove_paths(CTX, top, [removal("a/x")], STRIP)
    assert await tree(fs, top) == ["d/", "d/explicit/"]
    # The top directory itself never goes, even when emptied and implicit.
    await fs.set_flags(CTX, top, FLAG_IMPLICIT_DIR)
    await fs.remove_paths(CTX, top, [removal("d/explicit/")], STRIP)
    assert await tree(fs, ROOT_INO) == ["bucket/"]  # "d" (implicit) went, the top stayed
    assert (await fs.getattr(top)).nlink == 2


async def test_names_of_other_kinds_or_missing_are_left_alone(fs):
    top = await mkdirs(fs, ROOT_INO, "bucket", implicit=False)
    await put(fs, top, "f")
    await put(fs, top, "dir/g")
    await mkdirs(fs, top, "implicit-empty")
    await fs.symlink(CTX, top, b"link", b"f")
    before = await tree(fs, top)
    await fs.remove_paths(CTX, top, [removal(k) for k in (
        "f/",  # a file is no directory marker
        "dir",  # a directory is no file
        "dir/",  # non-empty, but already implicit: nothing to do
        "implicit-empty/",  # an implicit directory is no marker
        "link",  # a symlink is no object
        "f/under",  # a path through a file
        "missing/x", "missing", "dir/missing",
    )], STRIP)
    assert await tree(fs, top) == before


async def test_directory_markers(fs):
    top = await mkdirs(fs, ROOT_INO, "bucket", implicit=False)
    await mkdirs(fs, top, "p")
    full = await mkdirs(fs, top, "p/full", implicit=False)
    await put(fs, top, "p/full/obj")
    await mkdirs(fs, top, "p/empty", implicit=False)
    await fs.setxattr(CTX, full, STRIP + b"content-type", b"text/plain")
    await fs.setxattr(CTX, full, b"user.kept", b"1")
    await fs.remove_paths(CTX, top, [removal("p/full/"), removal("p/empty/")], STRIP)
    # The empty marker went; the full one became implicit, without its S3 metadata.
    assert await tree(fs, top) == ["p/", "p/full/", "p/full/obj"]
    assert (await fs.getattr(full)).flags & FLAG_IMPLICIT_DIR
    assert await fs.listxattr(full) == [b"user.kept"]
    # ... so it goes with its last object, and so does "p" (implicit, created for the key).
    await fs.remove_paths(CTX, top, [removal("p/full/obj")], STRIP)
    assert await tree(fs, top) == []


async def test_order_within_one_call(fs):
    top = await mkdirs(fs, ROOT_INO, "bucket", implicit=False)
    await mkdirs(fs, top, "m", implicit=False)
    await put(fs, top, "m/a")
    await put(fs, top, "m/b")
    # The marker first (made implicit while m holds a and b), then its objects: m goes with b.
    await fs.remove_paths(CTX, top, [removal("m/"), removal("m/a"), removal("m/b")], STRIP)
    assert await tree(fs, top) == []
    await mkdirs(fs, top, "n", implicit=False)
    await put(fs, top, "n/a")
    # The object first: the marker then names an empty explicit directory, which goes.
    await fs.remove_paths(CTX, top, [removal("n/a"), removal("n/"), removal("n/a")], STRIP)
    assert await tree(fs, top) == []


async def test_every_removed_name_is_announced(fs):
    top = await mkdirs(fs, ROOT_INO, "bucket", implicit=False)
    a = await mkdirs(fs, top, "a")
    b = await mkdirs(fs, top, "a/b")
    one, two, three = [await put(fs, top, p) for p in ("a/b/1", "a/b/2", "a/3")]
    marker = await mkdirs(fs, top, "m", implicit=False)
    await put(fs, top, "m/keep")
    seen: list[Change] = []

    async def listener(change: Change) -> None:
        seen.append(change)

    fs.listeners.append(listener)
    await fs.remove_paths(CTX, top, [removal(k) for k in ("a/b/1", "a/b/2", "nothing", "m/", "a/3")], STRIP)
    assert seen == [
        Change("test", ino=one, parent=b, name=b"1", removed=True),
        Change("test", ino=two, parent=b, name=b"2", removed=True),
        Change("test", ino=b, parent=a, name=b"b", removed=True),  # left empty: removed
        Change("test", ino=marker),  # made implicit
        Change("test", ino=three, parent=a, name=b"3", removed=True),
        Change("test", ino=a, parent=top, name=b"a", removed=True),
    ]


async def test_a_failing_call_changes_nothing(fs, monkeypatch):
    top = await mkdirs(fs, ROOT_INO, "bucket", implicit=False)
    for path in ("a/1", "a/2", "b/3"):
        await put(fs, top, path)
    before = await tree(fs, top)
    calls = []
    unlink_inode = fs._unlink_inode

    def failing(t, inode, now):
        calls.append(inode.ino)
        if len(calls) == 3:
            raise OSError("disk on fire")
        unlink_inode(t, inode, now)

    monkeypatch.setattr(fs, "_unlink_inode", failing)
    with pytest.raises(OSError):
        await fs.remove_paths(CTX, top, [removal(k) for k in ("a/1", "a/2", "b/3")], STRIP)
    assert len(calls) == 3
    assert await tree(fs, top) == before
    monkeypatch.undo()
    a_file = (await fs.resolve([b"bucket", b"a", b"1"])).ino
    with pytest.raises(NotADirectory):  # the top must be a directory
        await fs.remove_paths(CTX, a_file, [removal("x")], STRIP)
    with pytest.raises(NotFound):
        await fs.remove_paths(CTX, 999_999, [removal("x")], STRIP)
    assert await tree(fs, top) == before


async def test_many_names_in_one_call(fs):
    """More names than run inline (they run in a worker thread), across directories."""
    top = await mkdirs(fs, ROOT_INO, "bucket", implicit=False)
    paths = [f"d{i % 3}/sub{i % 2}/{i:03d}" for i in range(60)] + ["d0/kept/x"]
    for path in paths:
        await put(fs, top, path)
    await fs.remove_paths(CTX, top, [removal(p) for p in paths[:-1]], STRIP)
    assert await tree(fs, top) == ["d0/", "d0/kept/", "d0/kept/x"]


async def test_remove_empty_implicit(fs):
    top = await mkdirs(fs, ROOT_INO, "bucket", implicit=False)
    await mkdirs(fs, top, "x/y/z")
    await mkdirs(fs, top, "e", implicit=False)
    await mkdirs(fs, top, "e/f/g")
    await fs.remove_empty_implicit(CTX, top, [b"x", b"y", b"z"])
    await fs.remove_empty_implicit(CTX, top, [b"e", b"f", b"g"])  # stops at explicit "e"
    await fs.remove_empty_implicit(CTX, top, [b"missing", b"deeper"])
    assert await tree(fs, top) == ["e/"]
    await put(fs, top, "p/q/file")
    await fs.remove_empty_implicit(CTX, top, [b"p", b"q"])  # not empty: stays
    assert await tree(fs, top) == ["e/", "p/", "p/q/", "p/q/file"]


async def test_pinned_view_batch_reads(fs):
    top = await mkdirs(fs, ROOT_INO, "bucket", implicit=False)
    inos = [await put(fs, top, f"f{i}") for i in range(5)]
    await fs.setxattr(CTX, inos[1], b"user.a", b"one")
    await fs.setxattr(CTX, inos[3], b"user.a", b"x" * 5000)  # spilled out of the tree page
    with fs.view().pinned() as view:
        await fs.unlink(CTX, top, b"f4")  # after pinning: the view still sees it
        got = view.getattrs([*inos, 999_999])
        assert list(got) == inos
        assert got[inos[4]].size == 2
        assert view.getxattrs([*inos, 999_999], b"user.a") == {inos[1]: b"one", inos[3]: b"x" * 5000}
        assert [name for name, _ in view.listdir_sorted(top, b"", 10)] == [b"f0", b"f1", b"f2", b"f3", b"f4"]
    live = fs.view()
    assert list(live.getattrs(inos)) == inos[:4]
    assert live.getattrs(inos[:4]) == {ino: await fs.getattr(ino) for ino in inos[:4]}
    # Live views see the bytes written but not stored yet, as getattr does.
    await fs.open(inos[0])
    await fs.write(CTX, inos[0], 0, b"longer than before")
    assert live.getattrs([inos[0]])[inos[0]].size == len(b"longer than before")
    await fs.release(inos[0])
