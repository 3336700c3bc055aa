"""What the FUSE adapter lets the kernel cache, and its own caches, without a mount: negative
entries and their invalidation, direct I/O for new write-only files (and the privileges a write
then drops), reused attributes, and the decoded items FsView keeps per tree version."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from types import SimpleNamespace

import pyfuse3
import pytest

from cartridgefs.engine.store import Engine
from cartridgefs.errors import NotADirectory, NotFound
from cartridgefs.fs.filesystem import Change, Ctx, FileSystem, FsView
from cartridgefs.fs.items import ROOT_INO, DirEntry, Inode
from cartridgefs.fuse import ops as ops_module
from cartridgefs.fuse.ops import TIMEOUT, Operations

S3 = Ctx(0, 0, "s3")  # a change the kernel does not know of
REQUEST = SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)  # a FUSE request's context
NO_UMASK = SimpleNamespace(uid=0, gid=0, pid=1, umask=0)


def fields(**updates) -> SimpleNamespace:
    names = ("atime", "mtime", "ctime", "mode", "uid", "gid", "size")
    return SimpleNamespace(**{f"update_{n}": n in updates for n in names})


@pytest.fixture
async def fs(tmp_path):
    fs = FileSystem(Engine.create(str(tmp_path / "c.cart"), 4096))
    yield fs
    await fs.close()


@pytest.fixture
def invalidated(monkeypatch) -> list[tuple]:
    """The invalidations sent to the kernel (there is none here: ENOENT, 'not cached')."""
    calls: list[tuple] = []

    def record(*args):
        calls.append(args)
        raise OSError(errno.ENOENT, "not cached")

    def entry(parent: int, name: bytes, deleted: int = 0) -> None:
        record(*(("deleted", parent, name, deleted) if deleted else ("entry", parent, name)))

    monkeypatch.setattr(pyfuse3, "invalidate_entry", entry)
    monkeypatch.setattr(pyfuse3, "invalidate_inode", lambda *a: record("inode", *a))
    return calls


async def test_a_miss_is_a_negative_entry_the_kernel_may_keep(fs):
    ops = Operations(fs)
    await ops.getattr(ROOT_INO)  # the kernel knows the root
    miss = await ops.lookup(ROOT_INO, b"absent", REQUEST)
    assert miss.st_ino == 0 and miss.entry_timeout == TIMEOUT
    with pytest.raises(pyfuse3.FUSEError) as exc:  # a missing parent is an error, not cached
        await ops.lookup(9999, b"x", REQUEST)
    assert exc.value.errno == errno.ENOENT


async def test_a_name_created_elsewhere_drops_the_negative_entry(fs, invalidated):
    ops = Operations(fs)
    await ops.getattr(ROOT_INO)
    d = await fs.mkdir(S3, ROOT_INO, b"bucket")
    await ops.lookup(ROOT_INO, b"bucket", REQUEST)  # the kernel knows the directory
    assert (await ops.lookup(d.ino, b"key", REQUEST)).st_ino == 0
    invalidated.clear()
    await fs.create(S3, d.ino, b"key")  # e.g. a PutObject: the kernel must forget the miss
    assert ("entry", d.ino, b"key") in invalidated
    assert (await ops.lookup(d.ino, b"key", REQUEST)).st_ino != 0


async def test_a_removal_elsewhere_is_a_deletion_for_the_kernel(fs, invalidated):
    """So that the kernel drops the inode once unused (FORGET), and the cartridge can free it."""
    ops = Operations(fs)
    d = await fs.mkdir(S3, ROOT_INO, b"bucket")
    sub = await fs.mkdir(S3, d.ino, b"sub")
    await ops.lookup(ROOT_INO, b"bucket", REQUEST)
    await ops.lookup(d.ino, b"sub", REQUEST)
    invalidated.clear()
    await fs.rmdir(S3, d.ino, b"sub")
    assert ("deleted", d.ino, b"sub", sub.ino) in invalidated
    assert (await fs.getattr(sub.ino)).nlink == 0  # kept: the kernel still holds it
    await ops.forget([(sub.ino, 1)])
    with pytest.raises(NotFound):
        await fs.getattr(sub.ino)


async def test_a_restore_drops_every_negative_entry(fs, invalidated):
    ops = Operations(fs)
    await ops.getattr(ROOT_INO)
    for name in (b"a", b"b"):
        await ops.lookup(ROOT_INO, name, REQUEST)
    await fs.emit(Change("control"))  # a snapshot restore: anything may have changed
    assert {("entry", ROOT_INO, b"a"), ("entry", ROOT_INO, b"b")} <= set(invalidated)


async def test_misses_beyond_the_limit_are_not_cached(fs, monkeypatch):
    ops = Operations(fs)
    monkeypatch.setattr(ops, "_misses", ops_module._Misses(limit=2))
    for name in (b"a", b"b"):
        assert (await ops.lookup(ROOT_INO, name, REQUEST)).st_ino == 0
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await ops.lookup(ROOT_INO, b"c", REQUEST)
    assert exc.value.errno == errno.ENOENT
    assert (await ops.lookup(ROOT_INO, b"a", REQUEST)).st_ino == 0  # listed already: refreshed


def test_misses_expire():
    misses = ops_module._Misses(ttl=0.0)
    misses.add(1, b"a")
    assert misses.current() == []


async def test_new_write_only_files_get_direct_io(fs):
    ops = Operations(fs)
    cases = [(os.O_WRONLY, 0o644, True), (os.O_RDWR, 0o644, False),
             (os.O_WRONLY, 0o4755, False), (os.O_WRONLY, 0o2775, False)]
    for i, (access, mode, direct) in enumerate(cases):
        info, _ = await ops.create(ROOT_INO, b"f%d" % i, stat.S_IFREG | mode,
                                   access | os.O_CREAT, NO_UMASK)
        assert info.direct_io == direct, (access, oct(mode))
        await ops.release(info.fh)
    assert not ops._handles and not ops._direct


async def test_privileges_given_while_a_direct_handle_is_open_go_at_the_next_write(
        fs, invalidated):
    ops = Operations(fs)
    info, entry = await ops.create(ROOT_INO, b"tool", stat.S_IFREG | 0o755,
                                   os.O_WRONLY | os.O_CREAT, REQUEST)
    assert info.direct_io
    ino = entry.st_ino
    await ops.write(info.fh, 0, b"first")
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = stat.S_IFREG | 0o6755
    await ops.setattr(ino, attr, fields(mode=True), info.fh, REQUEST)
    await ops.setxattr(ino, b"security.capability", b"\x01" * 20, REQUEST)
    assert stat.S_IMODE((await fs.getattr(ino)).mode) == 0o6755
    await ops.write(info.fh, 5, b" second")  # as the kernel does for the page cache path
    assert stat.S_IMODE((await fs.getattr(ino)).mode) == 0o755
    assert b"security.capability" not in await fs.listxattr(ino)
    assert ("inode", ino, True) in invalidated  # the kernel's cached mode is dropped
    await ops.flush(info.fh)
    await ops.release(info.fh)
    assert await fs.read(ino, 0, 100) == b"first second"
    # A setgid bit without group execute is no privilege: it stays (as with the kernel).
    info, entry = await ops.create(ROOT_INO, b"locked", stat.S_IFREG | 0o644,
                                   os.O_WRONLY | os.O_CREAT, REQUEST)
    attr.st_mode = stat.S_IFREG | 0o2644
    await ops.setattr(entry.st_ino, attr, fields(mode=True), info.fh, REQUEST)
    await ops.write(info.fh, 0, b"x")
    assert stat.S_IMODE((await fs.getattr(entry.st_ino)).mode) == 0o2644
    await ops.release(info.fh)


async def test_reused_attributes_follow_every_change(fs):
    ops = Operations(fs)
    f = await fs.create(S3, ROOT_INO, b"f")
    first = await ops.getattr(f.ino)
    assert await ops.getattr(f.ino) is first  # unchanged: built once
    await fs.write(S3, f.ino, 0, b"12345")  # buffered: the tree is unchanged, the size is not
    assert (await ops.getattr(f.ino)).st_size == 5
    await fs.flush(f.ino)
    await fs.setattr(S3, f.ino, mode=0o600)
    again = await ops.getattr(f.ino)
    assert (again.st_size, stat.S_IMODE(again.st_mode)) == (5, 0o600)


async def test_decoded_items_follow_every_version_of_the_tree(fs):
    view = fs.view()
    d = await fs.mkdir(S3, ROOT_INO, b"d")
    assert view.find(d.ino, b"x") is None
    x = await fs.create(S3, d.ino, b"x")
    assert view.find(d.ino, b"x").ino == x.ino  # a miss kept for the old version is not served
    assert [name for name, _, _ in view.entries(d.ino, 0)] == [b"x"]
    await fs.rename(S3, d.ino, b"x", d.ino, b"y")
    assert view.find(d.ino, b"x") is None
    assert [name for name, _, _ in view.entries(d.ino, 0)] == [b"y"]
    with pytest.raises(NotADirectory):
        view.find(x.ino, b"z")
    with pytest.raises(NotFound):
        view.lookup(d.ino, b"x")
    assert isinstance(view.getattr(x.ino), Inode)
    assert DirEntry.decode(DirEntry(5, stat.S_IFDIR, 7).encode()) == (5, stat.S_IFDIR, 7)


async def test_a_listing_stopped_early_releases_its_reader(fs):
    for i in range(10):
        await fs.create(S3, ROOT_INO, b"f%d" % i)
    entries = fs.view().entries(ROOT_INO, 0)
    assert next(entries)[0] == b"f0"
    assert fs.engine._readers  # pinned while the listing is open
    entries.close()
    assert not fs.engine._readers
    batch = fs.view().readdir(ROOT_INO, 0, 3)
    assert [name for name, _, _ in batch] == [b"f0", b"f1", b"f2"]
    rest = fs.view().readdir(ROOT_INO, batch[-1][2], 100)
    assert [name for name, _, _ in rest] == [b"f%d" % i for i in range(3, 10)]
    assert not fs.engine._readers


async def test_answers_found_in_the_memo_pin_no_reader(fs, monkeypatch):
    view = fs.view()
    d = await fs.mkdir(S3, ROOT_INO, b"d")
    f = await fs.create(S3, d.ino, b"f")
    assert view.find(d.ino, b"f").ino == f.ino  # read from the tree, and kept
    assert view.find(d.ino, b"g") is None  # a miss, kept too
    with pytest.raises(NotADirectory):
        view.find(f.ino, b"x")
    readers = []
    reader = fs.engine.reader
    monkeypatch.setattr(fs.engine, "reader", lambda *a: readers.append(a) or reader(*a))
    assert view.find(d.ino, b"f").ino == f.ino
    assert view.find(d.ino, b"g") is None
    assert view.getattr(f.ino) == view.find(d.ino, b"f")
    assert readers == []
    with pytest.raises(NotADirectory):  # a miss kept under a file is still an error
        view.find(f.ino, b"x")
    readers.clear()
    await fs.open(f.ino)
    await fs.write(S3, f.ino, 0, b"abc")  # buffered: the same tree, another size
    assert view.find(d.ino, b"f").size == 3 and view.getattr(f.ino).size == 3
    assert readers == []
    await fs.release(f.ino)  # stored: a new version of the tree, which the memo follows
    assert view.getattr(f.ino).size == 3 and readers == []
    g = await fs.create(S3, d.ino, b"g")
    assert view.find(d.ino, b"g").ino == g.ino  # the kept miss was replaced by the new entry
    assert readers == []


async def test_the_memo_follows_transactions_and_serves_no_other_version(fs, monkeypatch):
    view = fs.view()
    d = await fs.mkdir(S3, ROOT_INO, b"d")
    a = await fs.create(S3, d.ino, b"a")
    b = await fs.create(S3, d.ino, b"b")
    assert view.find(d.ino, b"a").ino == a.ino and view.find(d.ino, b"z") is None
    readers = []
    reader = fs.engine.reader
    monkeypatch.setattr(fs.engine, "reader", lambda *a: readers.append(a) or reader(*a))
    with view.pinned() as before:  # holds the version before the rename
        await fs.rename(S3, d.ino, b"a", d.ino, b"b")  # replaces b
        await fs.setattr(S3, a.ino, mode=0o600)
        # The live view: the transactions' own items, without reading the tree.
        readers.clear()
        assert view.find(d.ino, b"a") is None
        assert view.find(d.ino, b"b").ino == a.ino and stat.S_IMODE(view.getattr(a.ino).mode) == 0o600
        assert readers == []
        with pytest.raises(NotFound):
            view.getattr(b.ino)
        # The pinned view: its own version, whatever the memo holds, and nothing kept from it.
        assert before.find(d.ino, b"a").ino == a.ino and before.find(d.ino, b"b").ino == b.ino
        assert stat.S_IMODE(before.getattr(a.ino).mode) == 0o644
        assert [name for name, _, _ in before.entries(d.ino, 0)] == [b"a", b"b"]
    assert view.find(d.ino, b"b").ino == a.ino and view.find(d.ino, b"a") is None
    assert [(name, inode.ino) for name, inode, _ in view.entries(d.ino, 0)] == [(b"b", a.ino)]


async def test_a_full_memo_starts_over_and_stays_right(fs, monkeypatch):
    view = fs.view()
    memo = FsView._decoded
    monkeypatch.setattr(memo, "limit", 8)
    d = await fs.mkdir(S3, ROOT_INO, b"d")
    made = [await fs.create(S3, d.ino, b"f%d" % i) for i in range(30)]
    assert len(memo.inodes) <= 8 + 2 and len(memo.entries) <= 8 + 1  # one create's items over
    for i, inode in enumerate(made):
        assert view.find(d.ino, b"f%d" % i).ino == inode.ino
    assert len(memo.inodes) <= 8 + 2 and len(memo.entries) <= 8 + 1


async def test_a_listing_reply_reuses_attributes_and_shows_buffered_sizes(fs, monkeypatch,
                                                                          invalidated):
    ops = Operations(fs)
    d = await fs.mkdir(S3, ROOT_INO, b"d")
    files = [await fs.create(S3, d.ino, b"f%d" % i) for i in range(5)]
    built = await ops.getattr(files[0].ino)
    await fs.open(files[1].ino)
    await fs.write(S3, files[1].ino, 0, b"12345")
    replied: list[tuple[bytes, pyfuse3.EntryAttributes, int]] = []
    room = [3]

    def reply(token, name, attr, offset):
        if len(replied) >= room[0]:
            return False  # full
        replied.append((name, attr, offset))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    await ops.readdir(d.ino, 0, None)
    assert [name for name, _, _ in replied] == [b"f0", b"f1", b"f2"]
    assert replied[0][1] is built  # unchanged: built once
    assert replied[1][1].st_size == 5  # bytes not stored yet count
    # Each entry added is a lookup the kernel will forget; the one that did not fit is not.
    assert [ops._known.get(f.ino) for f in files[:4]] == [1, 1, 1, None]
    room[0] = 10
    await ops.readdir(d.ino, replied[-1][2], None)  # the next reply goes on from there
    assert [name for name, _, _ in replied] == [b"f%d" % i for i in range(5)]
    await fs.release(files[1].ino)


async def test_memo_readers_and_writers_in_threads_never_go_back_in_time(fs):
    """A thread changes a file's mtime, one transaction after the other, while this thread reads
    it through the live view (never an older value after a newer one) and through pinned views
    (always their own version's value), whose reads of older versions must not reach the memo."""
    view = fs.view()
    d = await fs.mkdir(S3, ROOT_INO, b"d")
    f = await fs.create(S3, d.ino, b"f")
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        while not stop.is_set() and written[0] < 200_000:
            written[0] += 1
            fs._setattr(f.ino, None, None, None, None, None, written[0], None)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            now = view.getattr(f.ino).mtime_ns
            assert now >= seen
            seen = view.find(d.ino, b"f").mtime_ns
            assert seen >= now
            with view.pinned() as pinned:
                first = pinned.find(d.ino, b"f").mtime_ns
                for _ in range(5):
                    assert pinned.getattr(f.ino).mtime_ns == first
                    assert [inode.mtime_ns for _, inode, _ in pinned.entries(d.ino, 0)] == [first]
    finally:
        stop.set()
        thread.join(timeout=30)
    assert written[0] > 10  # the writer did run beside the reads
    assert view.getattr(f.ino).mtime_ns == written[0]
