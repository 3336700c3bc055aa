"""The filesystem API shared by the FUSE adapter and the S3 layer (see docs/filesystem.md).

Concurrency (docs/concurrency.md): methods are called from the one trio loop. Metadata
transactions on cached pages take microseconds and run on the loop thread when the engine's
writer lock is free at once, else in a worker thread; everything that touches file data (extent
I/O, compression, encryption, hashing) and every commit runs in a worker thread. Per open file, a
`trio.Lock` orders writes, reads, flushes and truncation.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import logging
import os
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import trio

from ..engine.blockdev import WouldBlock
from ..engine.btree import Value
from ..engine.store import Engine
from ..engine.txn import State, Txn
from ..errors import (
    Exists,
    InvalidArgument,
    IsADirectory,
    NoAttribute,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    ReadOnly,
)
from . import data
from .buffer import DirtyRanges
from .items import (
    ROOT_INO,
    Decoded,
    DirEntry,
    Inode,
    check_name,
    dirent_key,
    dirent_prefix,
    dirseq_key,
    inode_key,
    inode_prefix,
    next_prefix,
    orphan_key,
    symlink_key,
    xattr_key,
    xattr_prefix,
)

FLAG_IMPLICIT_DIR = 1  # a directory created for an S3 key, removed again when empty
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2
XATTR_MAX = 64 * 1024
FLUSH_AT = 8 * 1024 * 1024  # dirty bytes of one file that trigger a flush
INLINE_FLUSH_MAX = 64 * 1024  # smaller flushes run on the loop thread when the writer lock is free
INLINE_REMOVALS = 16  # `remove_paths` of more names (~50 µs each) runs in a worker thread
READ_CHUNK = 1024 * 1024
INLINE_READ_MAX = 128 * 1024  # reads up to this size try the loop thread first (see `_read`)
CPUS = len(os.sched_getaffinity(0))  # the CPUs this process may run on
# Engine jobs in worker threads at once: one per CPU, 2 to 4. More only add contention: with 4 on
# 2 CPUs, four parallel uploads spent ~15 % more CPU per MiB (most of it in the kernel, writers
# of the cartridge file waiting on its inode lock) and ran ~8 % slower than with 2.
WORKER_THREADS = max(2, min(4, CPUS))
COMMIT_INTERVAL = 2.0  # seconds: unsynced changes are committed at least this often
COMMIT_POLL = 0.25

log = logging.getLogger("cartridge.fs")


@dataclass(frozen=True)
class Ctx:
    """Who asks: owner for new inodes, and the side (`fuse`, `s3`) for change notifications."""

    uid: int = 0
    gid: int = 0
    origin: str = ""


def _setgid_inherited(pdir: Inode, mode: int, ctx: Ctx) -> tuple[int, Ctx]:
    """The mode and owner of a new inode in `pdir`. A setgid directory passes on its group, and
    its setgid bit to new directories; a new file keeps a setgid bit only if its creator is root
    or in that group. Linux filesystems do this themselves (`inode_init_owner`): under FUSE the
    kernel leaves it to us. Only the creator's primary group is known here."""
    if not pdir.mode & stat.S_ISGID:
        return mode, ctx
    if stat.S_ISDIR(mode):
        mode |= stat.S_ISGID
    elif ctx.uid != 0 and ctx.gid != pdir.gid and mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode, replace(ctx, gid=pdir.gid)


@dataclass(frozen=True)
class Change:
    """Something changed: an inode's attributes/content, and/or a name in a directory
    (`removed`: the name of inode `ino` was removed)."""

    origin: str
    ino: int | None = None
    parent: int | None = None
    name: bytes | None = None
    removed: bool = False


@dataclass(frozen=True)
class Removal:
    """A name for `remove_paths`: its path from the top directory (directories, then the name),
    and whether it must name a regular file or an explicit directory."""

    path: tuple[bytes, ...]
    directory: bool = False


@dataclass
class _Flushing:
    """Dirty bytes being stored by a background flush; `failed` once it is over, if it failed."""

    dirty: DirtyRanges
    done: trio.Event = field(default_factory=trio.Event)
    failed: bool = False


class _InodeLock:
    """The lock of an open inode: a `trio.Lock` that is taken without a pass through the
    scheduler when it is free (a created file takes it three times: write, flush, release)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = trio.Lock()

    def locked(self) -> bool:
        return self._lock.locked()

    async def __aenter__(self) -> None:
        if self._lock.locked():
            await self._lock.acquire()
        else:
            self._lock.acquire_nowait()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


@dataclass
class _Open:
    """State of an inode while some handle has it open."""

    count: int = 0
    dirty: DirtyRanges = field(default_factory=DirtyRanges)
    flushing: _Flushing | None = None  # older than `dirty`; settled under `lock`
    lock: _InodeLock = field(default_factory=_InodeLock)
    size: int | None = None  # size including dirty and flushing bytes, while there are any
    mtime_ns: int | None = None


SWITCH_INTERVAL = 0.001  # seconds; Python's default is 0.005


def keep_loop_responsive() -> None:
    """Shorten the GIL switch interval for a serving process. Each time the loop thread makes a
    system call (a socket send, a FUSE reply) a worker thread running Python (a commit encoding
    pages) may take the GIL, and keeps it up to the switch interval before the loop gets it
    back: at the default 5 ms that wait dominated small S3 requests."""
    sys.setswitchinterval(SWITCH_INTERVAL)


GC_YOUNG = 10_000  # new container objects between young collections (Python's default: 700)


def tune_gc() -> None:
    """Make the cyclic garbage collector cheaper for a serving process; call it once set up.

    The objects alive by then (modules, functions, classes: most of the ~60 000 the collector
    tracks) are moved out of its reach (`gc.freeze`), and young collections run every GC_YOUNG
    new objects instead of 700. Decoded inodes kept for reuse count as new objects: at the
    defaults a `stat` of 5000 files through the mount met a full collection of ~25 ms, and the
    collector took ~1 µs per request overall; at these settings ~0.2 µs.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])


def _now() -> int:
    return time.time_ns()


class FileSystem:
    """POSIX semantics over the engine; one transaction per operation."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        engine.on_publish.append(FsView.follow(engine))
        self.listeners: list[Callable[[Change], Awaitable[None]]] = []
        # Who else may still use an inode by number after its last name is gone (the kernel, for
        # a mount): such a nameless inode stays, as an orphan, until `let_go` (see _in_use).
        self.holders: list[Callable[[int], bool]] = []
        self._kept_for_holders: set[int] = set()  # such orphans made by this process (let_go)
        self._open: dict[int, _Open] = {}
        self._limiter = trio.CapacityLimiter(WORKER_THREADS)
        self._committing: trio.Event | None = None  # set when the running durable() commit ends
        if not engine.readonly:
            self._initialise()

    # --- running engine work ---

    async def _meta(self, fn: Callable, *args, inline: bool = True):
        """A metadata transaction: inline when the writer lock is free (and the caller did not
        say it is a long one: `inline`), else in a thread."""
        lock = self.engine._writer
        if inline and lock.acquire(blocking=False):
            try:
                result = fn(*args)
            finally:
                lock.release()
        else:
            result = await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        if self.engine.needs_commit:
            # Bounds the memory held by changes not yet committed.
            await self._blocking(self.engine.sync)
        return result

    @property
    def threads_in_use(self) -> int:
        """Worker threads running engine work of this filesystem now."""
        return int(self._limiter.borrowed_tokens)

    async def _blocking(self, fn: Callable, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def emit(self, change: Change) -> None:
        """Tell the listeners about a change and wait for them (the FUSE side invalidates the
        kernel's caches, so an S3 answer that follows never meets stale names or bytes).
        `Change(origin)` with no inode and no name means anything may have changed."""
        for listener in self.listeners:
            await listener(change)

    # --- set-up ---

    def _initialise(self) -> None:
        """Create the root directory on a new cartridge; free orphans left by a crash."""
        with self.engine.txn() as t:
            if t.get("fs", inode_key(ROOT_INO)) is None:
                now = _now()
                root = Inode(ROOT_INO, stat.S_IFDIR | 0o755, nlink=2, atime_ns=now, mtime_ns=now,
                             ctime_ns=now, btime_ns=now, parent=ROOT_INO)
                t.put("fs", inode_key(ROOT_INO), root.encode())
            for key, _ in list(t.items("meta", b"orphan", next_prefix(b"orphan"))):
                ino = int.from_bytes(key[6:], "big")
                inode = self._inode_or_none(t, ino)
                if inode is not None and inode.nlink == 0:
                    self._drop(t, inode)
                t.delete("meta", key)

    # --- reading the namespace ---

    def _inode_or_none(self, t: Txn | State, ino: int) -> Inode | None:
        raw = t.get("fs", inode_key(ino)) if isinstance(t, Txn) else self.engine.get(t, "fs", inode_key(ino))
        return None if raw is None else Inode.decode(ino, raw)

    def _inode(self, t: Txn | State, ino: int) -> Inode:
        inode = self._inode_or_none(t, ino)
        if inode is None:
            raise NotFound(f"inode {ino} does not exist")
        return inode

    def _entry(self, t: Txn | State, parent: int, name: bytes) -> DirEntry | None:
        key = dirent_key(parent, name)
        raw = t.get("fs", key) if isinstance(t, Txn) else self.engine.get(t, "fs", key)
        return None if raw is None else DirEntry.decode(raw)

    def _dir(self, t: Txn | State, ino: int) -> Inode:
        inode = self._inode(t, ino)
        if not inode.is_dir:
            raise NotADirectory(f"inode {ino} is not a directory")
        if inode.nlink == 0:  # removed, still held open: nothing can be made in it
            raise NotFound(f"directory {ino} was removed")
        return inode

    def _with_open_state(self, inode: Inode) -> Inode:
        """Attributes as the user sees them: dirty bytes not stored yet count."""
        st = self._open.get(inode.ino)
        if st is None or st.size is None:
            return inode
        return inode.changed(size=st.size, mtime_ns=st.mtime_ns or inode.mtime_ns)

    def view(self, snapshot: str | None = None) -> FsView:
        return FsView(self, snapshot)

    async def lookup(self, parent: int, name: bytes) -> Inode:
        return self.view().lookup(parent, name)

    async def getattr(self, ino: int) -> Inode:
        return self.view().getattr(ino)

    async def listdir_sorted(self, ino: int, start_after: bytes = b"", limit: int = 1000) -> list[tuple[bytes, DirEntry]]:
        """Entries in name (byte) order after `start_after`, for S3 listings."""
        return self.view().listdir_sorted(ino, start_after, limit)

    async def readlink(self, ino: int) -> bytes:
        return self.view().readlink(ino)

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        return self.view().getxattr(ino, name)

    async def listxattr(self, ino: int) -> list[bytes]:
        return self.view().listxattr(ino)

    async def xattrs(self, ino: int, prefix: bytes = b"") -> dict[bytes, bytes]:
        """Every attribute whose name starts with `prefix`, read in one pass."""
        return self.view().xattrs(ino, prefix)

    async def resolve(self, names: list[bytes], start: int = ROOT_INO) -> Inode:
        """Follow a path of names (no symlink resolution) from `start`."""
        with self.engine.reader() as state:
            inode = self._inode(state, start)
            for name in names:
                if not inode.is_dir:
                    raise NotADirectory(f"{name!r}: parent is not a directory")
                entry = self._entry(state, inode.ino, name)
                if entry is None:
                    raise NotFound(f"{name!r} not found")
                inode = self._inode(state, entry.ino)
            return self._with_open_state(inode)

    # --- creating and removing names ---

    def _add_entry(self, t: Txn, parent: Inode, name: bytes, child: Inode, now: int) -> Inode:
        seq = parent.next_dir_seq
        t.put("fs", dirent_key(parent.ino, name), DirEntry(child.ino, stat.S_IFMT(child.mode), seq).encode())
        t.put("fs", dirseq_key(parent.ino, seq), name)
        parent = parent.changed(
            next_dir_seq=seq + 1, mtime_ns=now, ctime_ns=now,
            nlink=parent.nlink + (1 if child.is_dir else 0),
        )
        t.put("fs", inode_key(parent.ino), parent.encode())
        return parent

    def _remove_entry(self, t: Txn, parent: Inode, name: bytes, entry: DirEntry, now: int) -> Inode:
        t.delete("fs", dirent_key(parent.ino, name))
        t.delete("fs", dirseq_key(parent.ino, entry.seq))
        parent = parent.changed(
            mtime_ns=now, ctime_ns=now, nlink=parent.nlink - (1 if stat.S_ISDIR(entry.dtype) else 0)
        )
        t.put("fs", inode_key(parent.ino), parent.encode())
        return parent

    def _new_inode(self, t: Txn, ctx: Ctx, mode: int, now: int, **fields) -> Inode:
        ino = t.alloc_inode()
        inode = Inode(ino, mode, uid=ctx.uid, gid=ctx.gid, atime_ns=now, mtime_ns=now,
                      ctime_ns=now, btime_ns=now, **fields)
        t.put("fs", inode_key(ino), inode.encode())
        return inode

    def _make(self, ctx: Ctx, parent: int, name: bytes, mode: int, rdev: int = 0,
              target: bytes | None = None, flags: int = 0) -> Inode:
        check_name(name)
        now = _now()
        with self.engine.txn() as t:
            pdir = self._dir(t, parent)
            if self._entry(t, parent, name) is not None:
                raise Exists(f"{name!r} exists")
            is_dir = stat.S_ISDIR(mode)
            mode, ctx = _setgid_inherited(pdir, mode, ctx)
            child = self._new_inode(t, ctx, mode, now, nlink=2 if is_dir else 1, rdev=rdev,
                                    flags=flags, parent=parent if is_dir else 0,
                                    size=len(target) if target is not None else 0)
            if target is not None:
                t.put("fs", symlink_key(child.ino), target)
            self._add_entry(t, pdir, name, child, now)
        return child

    async def _make_named(self, ctx: Ctx, parent: int, name: bytes, mode: int, rdev: int = 0,
                          target: bytes | None = None, flags: int = 0) -> Inode:
        """`_make` as one transaction, then the change notification (on the loop thread)."""
        child = await self._meta(self._make, ctx, parent, name, mode, rdev, target, flags)
        await self.emit(Change(ctx.origin, ino=parent, parent=parent, name=name))
        return child

    async def mkdir(self, ctx: Ctx, parent: int, name: bytes, mode: int = 0o755, flags: int = 0) -> Inode:
        return await self._make_named(ctx, parent, name, stat.S_IFDIR | (mode & 0o7777), 0, None, flags)

    async def mknod(self, ctx: Ctx, parent: int, name: bytes, mode: int, rdev: int = 0) -> Inode:
        if stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
            raise InvalidArgument("mknod makes files, fifos, sockets and devices")
        if not stat.S_IFMT(mode):
            mode |= stat.S_IFREG
        return await self._make_named(ctx, parent, name, mode, rdev)

    async def create(self, ctx: Ctx, parent: int, name: bytes, mode: int = 0o644) -> Inode:
        """A new empty regular file (EEXIST when the name exists)."""
        return await self._make_named(ctx, parent, name, stat.S_IFREG | (mode & 0o7777))

    async def symlink(self, ctx: Ctx, parent: int, name: bytes, target: bytes) -> Inode:
        if not target or len(target) > 4095 or b"\0" in target:
            raise InvalidArgument("invalid symlink target")
        return await self._make_named(ctx, parent, name, stat.S_IFLNK | 0o777, 0, target)

    async def link(self, ctx: Ctx, ino: int, new_parent: int, new_name: bytes) -> Inode:
        def op() -> Inode:
            check_name(new_name)
            now = _now()
            with self.engine.txn() as t:
                inode = self._inode(t, ino)
                if inode.is_dir:
                    raise NotPermitted("hard links to directories are not allowed")
                pdir = self._dir(t, new_parent)
                if self._entry(t, new_parent, new_name) is not None:
                    raise Exists(f"{new_name!r} exists")
                inode = inode.changed(nlink=inode.nlink + 1, ctime_ns=now)
                t.put("fs", inode_key(ino), inode.encode())
                t.delete("meta", orphan_key(ino))
                self._add_entry(t, pdir, new_name, inode, now)
                return inode

        inode = await self._meta(op)
        await self.emit(Change(ctx.origin, ino=ino, parent=new_parent, name=new_name))
        return self._with_open_state(inode)

    def _unlink_inode(self, t: Txn, inode: Inode, now: int) -> None:
        """One name of `inode` is gone: drop it when it was the last and nobody uses it."""
        if inode.is_dir:
            inode = inode.changed(nlink=0, ctime_ns=now)
            self._abort_uploads(t, inode)
        else:
            inode = inode.changed(nlink=inode.nlink - 1, ctime_ns=now)
        if inode.nlink > 0:
            t.put("fs", inode_key(inode.ino), inode.encode())
        elif self._in_use(inode):
            t.put("fs", inode_key(inode.ino), inode.encode())
            t.put("meta", orphan_key(inode.ino), b"")
        else:
            self._drop(t, inode)

    def _in_use(self, inode: Inode) -> bool:
        """Whether a nameless inode must stay: open here, or, for a directory, FIFO, socket or
        device (used without an open that reaches us: a working directory, an open FIFO), still
        known to a holder. A regular file is only used through open handles; keeping it while
        the kernel merely caches it would hold its space until the kernel evicts it, which for
        a name removed over S3 may be much later. Symlinks are not kept either: only an
        O_PATH descriptor can hold one, as for a regular file, and keeping each removed one
        until the kernel's FORGET costs a second transaction (`rm -r` of symlinks)."""
        if inode.ino in self._open:
            return True
        if inode.is_reg or inode.is_link or not self.holders:
            return False
        # Noted before the holders are asked (this may run in a worker thread): a holder that
        # lets go meanwhile then finds it in let_go.
        self._kept_for_holders.add(inode.ino)
        if any(held(inode.ino) for held in self.holders):
            return True
        self._kept_for_holders.discard(inode.ino)
        return False

    def _abort_uploads(self, t: Txn, directory: Inode) -> None:
        """A removed bucket takes its unfinished multipart uploads with it, as DeleteBucket does
        on AWS: their records are keyed by its inode (any directory: it may have been moved)."""
        from .multipart import Uploads  # multipart builds on this module

        uploads = Uploads(self)
        for upload in uploads.uploads_in(t, directory.ino):
            uploads.abort_in(t, upload)

    def _drop(self, t: Txn, inode: Inode) -> None:
        """Delete every item of an inode (its extents lose a reference and may be freed)."""
        prefix = inode_prefix(inode.ino)
        for key, _ in list(t.items("fs", prefix, next_prefix(prefix))):
            t.delete("fs", key)

    def _remove(self, ctx: Ctx, parent: int, name: bytes, want_dir: bool) -> int:
        now = _now()
        with self.engine.txn() as t:
            pdir = self._dir(t, parent)
            entry = self._entry(t, parent, name)
            if entry is None:
                raise NotFound(f"{name!r} not found")
            inode = self._inode(t, entry.ino)
            if want_dir:
                if not inode.is_dir:
                    raise NotADirectory(f"{name!r} is not a directory")
                if self._has_entries(t, inode.ino):
                    raise NotEmpty(f"{name!r} is not empty")
            elif inode.is_dir:
                raise IsADirectory(f"{name!r} is a directory")
            self._remove_entry(t, pdir, name, entry, now)
            self._unlink_inode(t, inode, now)
            return entry.ino

    def _has_entries(self, t: Txn, ino: int) -> bool:
        prefix = dirent_prefix(ino)
        return next(iter(t.items("fs", prefix, next_prefix(prefix))), None) is not None

    async def unlink(self, ctx: Ctx, parent: int, name: bytes) -> None:
        ino = await self._meta(self._remove, ctx, parent, name, False)
        await self.emit(Change(ctx.origin, ino=ino, parent=parent, name=name, removed=True))

    async def rmdir(self, ctx: Ctx, parent: int, name: bytes) -> None:
        ino = await self._meta(self._remove, ctx, parent, name, True)
        await self.emit(Change(ctx.origin, ino=ino, parent=parent, name=name, removed=True))

    async def rename(self, ctx: Ctx, old_parent: int, old_name: bytes, new_parent: int,
                     new_name: bytes, flags: int = 0) -> None:
        await self._meta(self._rename, old_parent, old_name, new_parent, new_name, flags)
        await self.emit(Change(ctx.origin, ino=old_parent, parent=old_parent, name=old_name))
        await self.emit(Change(ctx.origin, ino=new_parent, parent=new_parent, name=new_name))

    def _rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int) -> None:
        check_name(new_name)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise InvalidArgument("unsupported rename flags")
        now = _now()
        with self.engine.txn() as t:
            src_dir = self._dir(t, old_parent)
            dst_dir = self._dir(t, new_parent)
            src = self._entry(t, old_parent, old_name)
            if src is None:
                raise NotFound(f"{old_name!r} not found")
            dst = self._entry(t, new_parent, new_name)
            if old_parent == new_parent and old_name == new_name:
                return
            src_inode = self._inode(t, src.ino)
            if src_inode.is_dir:
                self._check_not_ancestor(t, src.ino, new_parent)
            if flags & RENAME_EXCHANGE:
                if dst is None:
                    raise NotFound(f"{new_name!r} not found")
                dst_inode = self._inode(t, dst.ino)
                if dst_inode.is_dir:
                    self._check_not_ancestor(t, dst.ino, old_parent)
                self._swap(t, src_dir, old_name, src, src_inode, dst_dir, new_name, dst, dst_inode, now)
                return
            if dst is not None:
                if flags & RENAME_NOREPLACE:
                    raise Exists(f"{new_name!r} exists")
                dst_inode = self._inode(t, dst.ino)
                if dst.ino == src.ino:
                    return  # two names of one file: POSIX says do nothing
                if src_inode.is_dir and not dst_inode.is_dir:
                    raise NotADirectory(f"{new_name!r} is not a directory")
                if not src_inode.is_dir and dst_inode.is_dir:
                    raise IsADirectory(f"{new_name!r} is a directory")
                if dst_inode.is_dir and next(iter(t.items(
                        "fs", dirent_prefix(dst.ino), next_prefix(dirent_prefix(dst.ino)))), None):
                    raise NotEmpty(f"{new_name!r} is not empty")
                dst_dir = self._remove_entry(t, dst_dir, new_name, dst, now)
                self._unlink_inode(t, dst_inode, now)
            src_dir = self._remove_entry(t, self._dir(t, old_parent), old_name, src, now)
            dst_dir = self._dir(t, new_parent)
            self._add_entry(t, dst_dir, new_name, src_inode, now)
            moved = src_inode.changed(ctime_ns=now, parent=new_parent if src_inode.is_dir else 0)
            t.put("fs", inode_key(src.ino), moved.encode())

    def _swap(self, t, a_dir, a_name, a, a_inode, b_dir, b_name, b, b_inode, now) -> None:
        t.put("fs", dirent_key(a_dir.ino, a_name), DirEntry(b.ino, b.dtype, a.seq).encode())
        t.put("fs", dirent_key(b_dir.ino, b_name), DirEntry(a.ino, a.dtype, b.seq).encode())
        if a_dir.ino != b_dir.ino and a_inode.is_dir != b_inode.is_dir:
            delta = 1 if a_inode.is_dir else -1
            a_dir = self._inode(t, a_dir.ino).changed(nlink=a_dir.nlink - delta)
            b_dir = self._inode(t, b_dir.ino).changed(nlink=b_dir.nlink + delta)
            t.put("fs", inode_key(a_dir.ino), a_dir.encode())
            t.put("fs", inode_key(b_dir.ino), b_dir.encode())
        for d in {a_dir.ino, b_dir.ino}:
            t.put("fs", inode_key(d), self._inode(t, d).changed(mtime_ns=now, ctime_ns=now).encode())
        for inode, parent in ((a_inode, b_dir.ino), (b_inode, a_dir.ino)):
            moved = self._inode(t, inode.ino).changed(ctime_ns=now, parent=parent if inode.is_dir else 0)
            t.put("fs", inode_key(inode.ino), moved.encode())

    def _check_not_ancestor(self, t: Txn, dir_ino: int, target_parent: int) -> None:
        """EINVAL when moving directory `dir_ino` under itself."""
        ino = target_parent
        for _ in range(10_000):
            if ino == dir_ino:
                raise InvalidArgument("cannot move a directory into itself")
            if ino == ROOT_INO:
                return
            ino = self._inode(t, ino).parent
        raise InvalidArgument("directory tree too deep")

    # --- attributes ---

    async def setattr(self, ctx: Ctx, ino: int, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None, atime_ns: int | None = None,
                      mtime_ns: int | None = None, ctime_ns: int | None = None) -> Inode:
        st = self._open.get(ino)
        if st is None:
            inode = await self._meta(self._setattr, ino, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns)
        else:
            async with st.lock:
                if size is not None:
                    await self._flush_locked(ino, st)
                else:
                    # A background flush stores the time of the writes it carries: it must be over
                    # before an explicit time is set, which then wins over buffered writes.
                    await self._settle(st)
                    if mtime_ns is not None:
                        st.mtime_ns = None
                inode = await self._meta(self._setattr, ino, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns)
        await self.emit(Change(ctx.origin, ino=ino))
        return self._with_open_state(inode)

    def _setattr(self, ino, mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns) -> Inode:
        now = _now()
        with self.engine.txn() as t:
            inode = self._inode(t, ino)
            fields: dict = {"ctime_ns": ctime_ns or now}
            if mode is not None:
                fields["mode"] = stat.S_IFMT(inode.mode) | (mode & 0o7777)
            if uid is not None:
                fields["uid"] = uid
            if gid is not None:
                fields["gid"] = gid
            if atime_ns is not None:
                fields["atime_ns"] = atime_ns
            if mtime_ns is not None:
                fields["mtime_ns"] = mtime_ns
            if size is not None:
                if inode.is_dir:
                    raise IsADirectory("cannot truncate a directory")
                if size < inode.size:
                    data.punch(t, ino, size, inode.size)
                fields.update(size=size, data_version=inode.data_version + 1)
                if mtime_ns is None:
                    fields["mtime_ns"] = now
            inode = inode.changed(**fields)
            t.put("fs", inode_key(ino), inode.encode())
            return inode

    # --- extended attributes ---

    async def setxattr(self, ctx: Ctx, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        if not name or len(name) > 255:
            raise InvalidArgument("invalid attribute name")
        if len(value) > XATTR_MAX:
            raise InvalidArgument(f"attribute values are limited to {XATTR_MAX} bytes")

        def op() -> None:
            with self.engine.txn() as t:
                inode = self._inode(t, ino)
                exists = t.get("fs", xattr_key(ino, name)) is not None
                if flags & XATTR_CREATE and exists:
                    raise Exists(f"attribute {name!r} exists")
                if flags & XATTR_REPLACE and not exists:
                    raise NoAttribute(f"no attribute {name!r}")
                t.put("fs", xattr_key(ino, name), bytes(value))
                t.put("fs", inode_key(ino), inode.changed(ctime_ns=_now()).encode())

        await self._meta(op)
        await self.emit(Change(ctx.origin, ino=ino))

    async def removexattr(self, ctx: Ctx, ino: int, name: bytes) -> None:
        def op() -> None:
            with self.engine.txn() as t:
                inode = self._inode(t, ino)
                if not t.delete("fs", xattr_key(ino, name)):
                    raise NoAttribute(f"no attribute {name!r}")
                t.put("fs", inode_key(ino), inode.changed(ctime_ns=_now()).encode())

        await self._meta(op)
        await self.emit(Change(ctx.origin, ino=ino))

    # --- file contents ---

    async def open(self, ino: int) -> None:
        """Count an open handle (an unlinked file stays readable until the last release)."""
        st = self._open.setdefault(ino, _Open())
        st.count += 1

    async def release(self, ino: int) -> None:
        st = self._open.get(ino)
        if st is None:
            return
        try:
            try:
                async with st.lock:
                    await self._flush_locked(ino, st)
            finally:
                # The handle goes away whatever happened (a flush error is reported at close): on
                # the last release, data that cannot be stored (e.g. ENOSPC) is dropped, not kept
                # and retried forever.
                st.count -= 1
                if st.count <= 0:
                    st.dirty.take()
                    st.size = st.mtime_ns = None
                    self._open.pop(ino, None)
        finally:
            if st.count <= 0:
                await self._meta(self._drop_if_orphan, ino)

    async def let_go(self, ino: int) -> None:
        """A holder let go of `ino`: free it if it was kept for a holder and nobody uses it any
        more. (A transaction costs ~16 µs: not run for the many inodes the kernel forgets that
        still have names, e.g. after each unlink.)"""
        if ino in self._kept_for_holders:
            await self._meta(self._drop_if_orphan, ino)

    def _drop_if_orphan(self, ino: int) -> None:
        with self.engine.txn() as t:
            inode = self._inode_or_none(t, ino)
            # A nameless inode held by something else (a multipart upload's part) stays.
            if (inode is not None and inode.nlink == 0 and not self._in_use(inode)
                    and t.delete("meta", orphan_key(ino))):
                self._drop(t, inode)

    async def read(self, ino: int, offset: int, size: int, streaming: bool = False) -> bytes:
        """File bytes; `streaming` for a reader going through the file once (not cached)."""
        st = self._open.get(ino)
        if st is None:
            return await self._read(ino, offset, size, None, streaming)
        async with st.lock:
            return await self._read(ino, offset, size, st, streaming)

    async def _read(self, ino: int, offset: int, size: int, st: _Open | None, streaming: bool) -> bytes:
        # Taken before the reader's snapshot: bytes a background flush stores meanwhile are
        # overlaid from here, whether or not the snapshot has them.
        flushing = st.flushing if st is not None else None

        def op(nowait: bool = False) -> bytes:
            with self.engine.reader() as state:
                inode = self._inode(state, ino)
                if inode.is_dir:
                    raise IsADirectory("is a directory")
                file_size = st.size if st is not None and st.size is not None else inode.size
                n = max(0, min(size, file_size - offset))
                stored = data.read_range(self.engine, state, ino, offset, n, streaming, nowait) if n else b""
            layers = [] if flushing is None else [flushing.dirty]
            if st is not None and st.dirty:
                layers.append(st.dirty)
            if not layers:
                return stored
            buf = bytearray(stored)
            for dirty in layers:
                dirty.overlay(buf, offset)
            return bytes(buf)

        if size <= INLINE_READ_MAX:
            # A small read of bytes already in memory costs less than the thread hop (~40 µs
            # against ~170 µs of CPU for a 4 KiB read here): done on the loop unless it would
            # wait for the disk or decode.
            try:
                return op(nowait=True)
            except WouldBlock:
                pass
        return await self._blocking(op)

    async def write(self, ctx: Ctx, ino: int, offset: int, payload: bytes) -> int:
        st = self._open.get(ino)
        if st is None:
            await self.open(ino)
            try:
                return await self.write(ctx, ino, offset, payload)
            finally:
                await self.release(ino)
        async with st.lock:
            if st.size is None:
                st.size = (await self.getattr(ino)).size
            st.dirty.write(offset, payload)
            st.size = max(st.size, offset + len(payload))
            st.mtime_ns = _now()
            if st.dirty.nbytes >= FLUSH_AT:
                await self._flush_locked(ino, st, background=True)
        await self.emit(Change(ctx.origin, ino=ino))
        return len(payload)

    async def flush(self, ino: int) -> None:
        st = self._open.get(ino)
        if st is not None:
            async with st.lock:
                await self._flush_locked(ino, st)

    async def fsync(self, ino: int | None = None) -> None:
        """Durable: buffered data of `ino` (or of every file) is committed and synced."""
        targets = [ino] if ino is not None else list(self._open)
        for i in targets:
            await self.flush(i)
        await self._blocking(self.engine.sync)

    async def durable(self) -> None:
        """Return once everything published so far is committed and synced (group commit).

        One caller at a time runs the commit in a worker thread; the others wait on the loop
        (not each in a thread of its own) and then either find their changes durable or start
        the next commit, which takes everything published meanwhile."""
        target = self.engine.sync_target
        while self.engine.durable_gen < target:
            if self.engine.readonly:  # a commit failed (sync would return at once: no retry loop)
                raise ReadOnly("the cartridge turned read-only before these changes were committed")
            running = self._committing
            if running is not None:
                await running.wait()
                continue
            self._committing = trio.Event()
            try:
                await self._blocking(self.engine.sync)
            finally:
                self._committing.set()
                self._committing = None

    async def commit_periodically(self, interval: float = COMMIT_INTERVAL) -> None:
        """Run by a server: store buffered data and commit every `interval` s (sooner when many
        changes wait), so nothing unsynced is older than that; and drop the page cache of freed
        blocks soon after they become reusable."""
        engine = self.engine
        last = time.monotonic()
        while True:
            await trio.sleep(COMMIT_POLL)
            if engine.has_released_pages:  # (after deletes: give their page cache back)
                await self._blocking(engine.drop_released_pages)
            if engine.readonly:
                continue
            if time.monotonic() - last < interval and not engine.needs_commit:
                continue
            last = time.monotonic()
            try:
                await self.flush_all()
            except Exception as exc:  # e.g. ENOSPC for one file: still commit everything else
                log.warning("periodic flush: %s", exc)
            try:
                await self.durable()
            except Exception:
                log.exception("periodic commit failed")

    async def flush_all(self) -> None:
        """Flush every open file; one failing file does not stop the others (first error raised)."""
        error: BaseException | None = None
        for ino in list(self._open):
            try:
                await self.flush(ino)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    async def _flush_locked(self, ino: int, st: _Open, then: Callable[[Txn], None] | None = None,
                            background: bool = False) -> None:
        """Store the dirty ranges of an open file as extents (caller holds st.lock); `then`
        changes more in the same transaction (e.g. gives the file its name).

        `background` returns once the store has started, so that the writer fills the next
        buffer meanwhile (see `_settle`) — unless the previous background store failed: then
        this one runs in the foreground, so the writer gets the error and the buffer stays
        bounded."""
        if await self._settle(st):
            background = False
        if not st.dirty and then is None:
            if st.size is not None and st.mtime_ns is None:
                st.size = None
            return
        if background:
            st.flushing = _Flushing(st.dirty)
            st.dirty = DirtyRanges()
            store = functools.partial(self._store, ino, st.flushing.dirty.ranges(), st.size, st.mtime_ns, None)
            trio.lowlevel.spawn_system_task(self._store_in_background, store, st.flushing)
            return
        ranges = st.dirty.take()
        try:
            # Small files (the common case of create/write/close) skip the thread hop, which costs
            # more than storing a few KiB; like `_meta`, only when no commit holds the lock.
            small = sum(len(chunk) for _, chunk in ranges) <= INLINE_FLUSH_MAX
            if small and self.engine._writer.acquire(blocking=False):
                try:
                    self._store(ino, ranges, st.size, st.mtime_ns, then)
                finally:
                    self.engine._writer.release()
            else:
                await self._blocking(self._store, ino, ranges, st.size, st.mtime_ns, then)
        except BaseException:
            self._restore(st, ranges)
            raise
        if ranges:
            st.size = None
            st.mtime_ns = None

    async def _settle(self, st: _Open) -> bool:
        """Wait for the background flush of `st`, if any (caller holds st.lock). If it failed, its
        bytes go back into the buffer, under any written since. Returns whether it failed."""
        flushing = st.flushing
        if flushing is None:
            return False
        await flushing.done.wait()
        st.flushing = None
        if flushing.failed:
            self._restore(st, flushing.dirty.take())
            return True
        if not st.dirty:
            st.size = st.mtime_ns = None  # the flush stored them
        return False

    async def _store_in_background(self, store: Callable[[], None], flushing: _Flushing) -> None:
        """A system task: nothing awaits it but `_settle`, which learns the outcome from `flushing`
        (the error itself comes again from the foreground retry)."""
        try:
            await self._blocking(store)
        except BaseException as exc:
            flushing.failed = True
            log.warning("background flush failed, retried in the foreground: %s", exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            flushing.done.set()

    @staticmethod
    def _restore(st: _Open, ranges: list[tuple[int, bytearray]]) -> None:
        """Put bytes that were not stored back into the buffer, under any written since."""
        newer = st.dirty.take()
        for start, chunk in ranges + newer:
            st.dirty.write(start, chunk)

    def _store(self, ino: int, ranges: list[tuple[int, bytearray]], size: int | None,
               mtime: int | None, then: Callable[[Txn], None] | None) -> None:
        """Write `ranges` as extents and link them to `ino` (and run `then`) in one transaction;
        on failure nothing is stored and no space is held."""
        written = []
        try:
            for start, chunk in ranges:
                written.append((start, len(chunk), self.engine.write_data(chunk)))
            reserved = [ptr for _, _, ptrs in written for _, ptr in ptrs]
            with self.engine.txn(reserved=reserved) as t:
                if written:
                    self._link_written(t, ino, written, size, mtime)
                if then is not None:
                    then(t)
        except BaseException:
            self.engine.abandon([ptr for _, _, ptrs in written for _, ptr in ptrs])
            raise

    def _link_written(self, t: Txn, ino: int, written: list, size: int | None, mtime: int | None) -> None:
        """Within `t`: make the extents just written the file's bytes at their offsets."""
        inode = self._inode(t, ino)
        for start, length, ptrs in written:
            data.punch(t, ino, start, start + length)
            data.link(t, ino, start, ptrs)
        fields = {"size": max(size, inode.size) if size is not None else inode.size,
                  "data_version": inode.data_version + 1}
        if mtime is not None:
            fields.update(mtime_ns=mtime, ctime_ns=mtime)
        t.put("fs", inode_key(ino), inode.changed(**fields).encode())

    # --- content hash (ETag) ---

    async def etag(self, ino: int) -> str:
        """MD5 of the content in hex, computed when the stored one is stale, and remembered."""
        await self.flush(ino)
        inode = await self.getattr(ino)
        if inode.etag is not None:
            return inode.etag

        def compute() -> tuple[int, bytes]:
            with self.engine.reader() as state:
                current = self._inode(state, ino)
                md5 = hashlib.md5()
                for pos in range(0, current.size, READ_CHUNK):
                    md5.update(data.read_range(
                        self.engine, state, ino, pos, min(READ_CHUNK, current.size - pos), streaming=True))
                return current.data_version, md5.digest()

        version, digest = await self._blocking(compute)

        def store() -> None:
            with self.engine.txn() as t:
                current = self._inode_or_none(t, ino)
                if current is not None and current.data_version == version:
                    t.put("fs", inode_key(ino), current.changed(etag_version=version, etag_md5=digest).encode())

        if not self.engine.readonly:
            await self._meta(store)
        return digest.hex()

    # --- what the S3 side needs ---

    async def create_unlinked(self, ctx: Ctx, mode: int = 0o644) -> int:
        """A new file with no name yet (freed at the next mount if never published)."""

        def op() -> int:
            with self.engine.txn() as t:
                inode = self._new_inode(t, ctx, stat.S_IFREG | mode, _now(), nlink=0)
                t.put("meta", orphan_key(inode.ino), b"")
                return inode.ino

        ino = await self._meta(op)
        await self.open(ino)
        return ino

    async def discard_unlinked(self, ino: int) -> None:
        st = self._open.get(ino)
        if st is not None:
            st.dirty.take()
            st.size = None
        await self.release(ino)

    async def publish(self, ctx: Ctx, ino: int, parent: int, name: bytes, *, md5: bytes | None = None,
                      xattrs: dict[bytes, bytes] | None = None, content_xattrs: dict[bytes, bytes] | None = None,
                      mtime_ns: int | None = None) -> None:
        """Atomically give the open unlinked file `ino` the name `name`, replacing a file of that
        name; its buffered bytes are stored in the same transaction. Closes the file."""
        check_name(name)
        st = self._open.get(ino)
        if st is None:
            raise InvalidArgument(f"inode {ino} is not open")

        def give_name(t: Txn) -> None:
            self.name_unlinked(t, ino, parent, name, md5=md5, xattrs=xattrs,
                               content_xattrs=content_xattrs, mtime_ns=mtime_ns)

        async with st.lock:
            await self._flush_locked(ino, st, then=give_name)
        await self.release(ino)
        await self.emit(Change(ctx.origin, ino=parent, parent=parent, name=name))

    async def publish_bytes(self, ctx: Ctx, parent: int, name: bytes, payload: bytes, *,
                            mode: int = 0o644, md5: bytes | None = None,
                            xattrs: dict[bytes, bytes] | None = None,
                            content_xattrs: dict[bytes, bytes] | None = None,
                            mtime_ns: int | None = None) -> int:
        """`create_unlinked`, `write` and `publish` of a file held in memory, as one transaction:
        a new file holding `payload`, named `name` (replacing a file of that name). No orphan
        record and no open state are needed, and a failure stores nothing and holds no space.
        Returns the new inode number."""
        check_name(name)

        def op() -> int:
            ptrs = self.engine.write_data(payload) if payload else []
            # `reserved`: the extents are given back unless the transaction links them.
            with self.engine.txn(reserved=[ptr for _, ptr in ptrs]) as t:
                now = _now()
                # Not `_new_inode`, which would store it here and `_give_name` again. data_version
                # as `write` + `publish` leave it: 1 once bytes were stored.
                inode = Inode(t.alloc_inode(), stat.S_IFREG | mode, uid=ctx.uid, gid=ctx.gid,
                              size=len(payload), atime_ns=now, mtime_ns=now, ctime_ns=now,
                              btime_ns=now, data_version=1 if ptrs else 0)
                data.link(t, inode.ino, 0, ptrs)
                self._give_name(t, inode, parent, name, now, md5=md5, xattrs=xattrs,
                                content_xattrs=content_xattrs, mtime_ns=mtime_ns)
                return inode.ino

        # Small files are stored on the loop thread when the writer lock is free, as flushes are.
        ino = await self._meta(op, inline=len(payload) <= INLINE_FLUSH_MAX)
        await self.emit(Change(ctx.origin, ino=parent, parent=parent, name=name))
        return ino

    def name_unlinked(self, t: Txn, ino: int, parent: int, name: bytes, *, md5: bytes | None = None,
                      xattrs: dict[bytes, bytes] | None = None, content_xattrs: dict[bytes, bytes] | None = None,
                      mtime_ns: int | None = None) -> None:
        """Within transaction `t`: `publish` without the flush (also used to complete multipart
        uploads, whose assembly must happen in the same transaction)."""
        self._give_name(t, self._inode(t, ino), parent, name, _now(), md5=md5, xattrs=xattrs,
                        content_xattrs=content_xattrs, mtime_ns=mtime_ns)
        t.delete("meta", orphan_key(ino))

    def _give_name(self, t: Txn, inode: Inode, parent: int, name: bytes, now: int, *,
                   md5: bytes | None, xattrs: dict[bytes, bytes] | None,
                   content_xattrs: dict[bytes, bytes] | None, mtime_ns: int | None) -> None:
        """Within `t`: store the nameless file `inode` (as given: it need not be stored yet) with
        link count 1, its ETag and attributes, under `name` in `parent`, replacing a file of that
        name."""
        pdir = self._dir(t, parent)
        old = self._entry(t, parent, name)
        if old is not None:
            old_inode = self._inode(t, old.ino)
            if old_inode.is_dir:
                raise IsADirectory(f"{name!r} is a directory")
            pdir = self._remove_entry(t, pdir, name, old, now)
            self._unlink_inode(t, old_inode, now)
        fields: dict = {"nlink": 1, "ctime_ns": now}
        if mtime_ns is not None:
            fields["mtime_ns"] = mtime_ns
        if md5 is not None:
            fields.update(etag_version=inode.data_version, etag_md5=md5)
        inode = inode.changed(**fields)
        t.put("fs", inode_key(inode.ino), inode.encode())
        for key, value in (xattrs or {}).items():
            t.put("fs", xattr_key(inode.ino, key), value)
        # Attributes that describe this content only (checksums): tagged with its version, so a
        # later write through the mount makes them visibly stale.
        for key, value in (content_xattrs or {}).items():
            t.put("fs", xattr_key(inode.ino, key), b"%d:%s" % (inode.data_version, value))
        self._add_entry(t, pdir, name, inode, now)

    async def replace_xattrs(self, ctx: Ctx, ino: int, prefix: bytes, values: dict[bytes, bytes],
                             mtime_ns: int | None = None) -> None:
        """Replace every attribute whose name starts with `prefix` (S3 metadata) in one transaction."""

        def op() -> None:
            with self.engine.txn() as t:
                inode = self._inode(t, ino)
                self._drop_xattrs(t, ino, prefix)
                for key, value in values.items():
                    t.put("fs", xattr_key(ino, key), value)
                fields: dict = {"ctime_ns": _now()}
                if mtime_ns is not None:
                    fields["mtime_ns"] = mtime_ns
                t.put("fs", inode_key(ino), inode.changed(**fields).encode())

        await self._meta(op)
        await self.emit(Change(ctx.origin, ino=ino))

    def _drop_xattrs(self, t: Txn, ino: int, prefix: bytes) -> None:
        start = xattr_key(ino, prefix)
        for key, _ in list(t.items("fs", start, next_prefix(start))):
            t.delete("fs", key)

    async def set_flags(self, ctx: Ctx, ino: int, flags: int) -> Inode:
        """Set the inode's `flags` word (e.g. clear FLAG_IMPLICIT_DIR when S3 makes a directory
        explicit with a "dir/" marker, or set it when the marker is deleted)."""

        def op() -> Inode:
            with self.engine.txn() as t:
                inode = self._inode(t, ino).changed(flags=flags, ctime_ns=_now())
                t.put("fs", inode_key(ino), inode.encode())
                return inode

        inode = await self._meta(op)
        await self.emit(Change(ctx.origin, ino=ino))
        return inode

    async def remove_paths(self, ctx: Ctx, top: int, removals: Sequence[Removal],
                           strip_prefix: bytes | None = None) -> None:
        """Remove names below directory `top`, in order, in one transaction (all or nothing; the
        S3 DeleteObject(s) rules of docs/s3-mapping.md). A removal naming a regular file unlinks
        it; one naming an explicit directory (`directory`) removes it when empty, else makes it
        implicit (FLAG_IMPLICIT_DIR: it goes with its last entry) without its xattrs starting
        with `strip_prefix`. A path naming nothing of the kind, or running through a missing
        directory, is left alone. Each removal is followed by `remove_empty_implicit`'s walk."""
        changes = await self._meta(self._remove_paths, ctx.origin, top, removals, strip_prefix,
                                   inline=len(removals) <= INLINE_REMOVALS)
        for change in changes:
            await self.emit(change)

    async def remove_empty_implicit(self, ctx: Ctx, top: int, names: Sequence[bytes]) -> None:
        """Remove the implicit directories along `names` below `top` that are empty, bottom-up,
        stopping at the first explicit or non-empty one and never removing `top`."""

        def op() -> list[Change]:
            with self.engine.txn() as t:
                chain = self._dirs_along(t, top, names)
                return self._prune_implicit(t, ctx.origin, chain, names, _now())

        for change in await self._meta(op):
            await self.emit(change)

    def _remove_paths(self, origin: str, top: int, removals: Sequence[Removal],
                      strip_prefix: bytes | None) -> list[Change]:
        now = _now()
        changes: list[Change] = []
        with self.engine.txn() as t:
            last: tuple[tuple[bytes, ...], list[Inode]] | None = None
            for removal in removals:
                parents = removal.path[:-1]
                # Names in one directory mostly come in a row: they share the chain of its
                # directories, kept current, until a directory is removed or changed.
                chain = last[1] if last and last[0] == parents else self._dirs_along(t, top, parents)
                done = self._remove_path(t, origin, chain, removal, strip_prefix, now)
                changes += done
                dirs_changed = removal.directory or len(done) > 1  # > 1: implicit ones removed
                last = None if dirs_changed else (parents, chain)
        return changes

    def _remove_path(self, t: Txn, origin: str, chain: list[Inode], removal: Removal,
                     strip_prefix: bytes | None, now: int) -> list[Change]:
        """One removal of `remove_paths`; `chain`: the directories along its path, as far as
        they exist (`_dirs_along`)."""
        *parents, name = removal.path
        entry = self._entry(t, chain[-1].ino, name) if len(chain) > len(parents) else None
        if entry is None:
            return []
        inode = self._inode(t, entry.ino)
        if removal.directory:
            if not inode.is_dir or inode.flags & FLAG_IMPLICIT_DIR:
                return []
            if self._has_entries(t, inode.ino):
                self._make_implicit(t, inode, strip_prefix, now)
                return [Change(origin, ino=inode.ino)]
        elif not inode.is_reg:
            return []
        chain[-1] = self._remove_entry(t, chain[-1], name, entry, now)
        self._unlink_inode(t, inode, now)
        return [Change(origin, ino=inode.ino, parent=chain[-1].ino, name=name, removed=True),
                *self._prune_implicit(t, origin, chain, parents, now)]

    def _dirs_along(self, t: Txn, top: int, names: Sequence[bytes]) -> list[Inode]:
        """Directory `top` and those along `names` below it, as far as they exist."""
        chain = [self._dir(t, top)]
        for name in names:
            entry = self._entry(t, chain[-1].ino, name)
            if entry is None or not stat.S_ISDIR(entry.dtype):
                break
            chain.append(self._inode(t, entry.ino))
        return chain

    def _prune_implicit(self, t: Txn, origin: str, chain: list[Inode], names: Sequence[bytes],
                        now: int) -> list[Change]:
        """Remove the empty implicit directories at the end of `chain` (chain[i + 1] is named
        names[i] in chain[i]) bottom-up, never chain[0]; `chain` is kept current."""
        changes = []
        for depth in range(len(chain) - 1, 0, -1):
            inode, name = chain[depth], names[depth - 1]
            if not inode.flags & FLAG_IMPLICIT_DIR or self._has_entries(t, inode.ino):
                break
            entry = self._entry(t, chain[depth - 1].ino, name)
            assert entry is not None and entry.ino == inode.ino
            chain[depth - 1] = self._remove_entry(t, chain[depth - 1], name, entry, now)
            self._unlink_inode(t, inode, now)
            changes.append(Change(origin, ino=inode.ino, parent=chain[depth - 1].ino, name=name,
                                  removed=True))
        return changes

    def _make_implicit(self, t: Txn, inode: Inode, strip_prefix: bytes | None, now: int) -> None:
        if strip_prefix is not None:
            self._drop_xattrs(t, inode.ino, strip_prefix)
        inode = inode.changed(flags=inode.flags | FLAG_IMPLICIT_DIR, ctime_ns=now)
        t.put("fs", inode_key(inode.ino), inode.encode())

    async def get_setting(self, key: bytes) -> bytes | None:
        """A small value stored in the `meta` tree (e.g. the S3 server's generated credentials)."""
        with self.engine.reader() as state:
            value = self.engine.get(state, "meta", b"setting" + key)
        return None if value is None else bytes(value)

    async def set_setting(self, key: bytes, value: bytes) -> None:
        def op() -> None:
            with self.engine.txn() as t:
                t.put("meta", b"setting" + key, value)

        await self._meta(op)

    # --- whole filesystem ---

    async def statfs(self) -> dict:
        info = self.engine.info()
        return {
            "block_size": info["block_size"],
            "blocks": info["blocks"],
            "free_blocks": info["free_blocks"],
            "files": self.engine.state.next_inode,
            "name_max": 255,
        }

    async def sync(self) -> None:
        await self.fsync(None)

    async def close(self) -> None:
        try:
            await self.flush_all()
        finally:
            await self._blocking(self.engine.close)


class FsView:
    """Read-only operations on the live tree or a snapshot."""

    def __init__(self, fs: FileSystem, snapshot: str | None, state: State | None = None) -> None:
        self.fs = fs
        self.snapshot = snapshot
        self._held = state

    def _state(self) -> contextlib.AbstractContextManager[State]:
        if self._held is not None:
            return contextlib.nullcontext(self._held)
        return self.fs.engine.reader(self.snapshot)

    @contextlib.contextmanager
    def pinned(self) -> Iterator[FsView]:
        """This view with one reader held throughout: many reads (a listing page) from one
        consistent state, without the cost of a reader each."""
        with self._state() as state:
            yield FsView(self.fs, self.snapshot, state)

    def getattrs(self, inos: Iterable[int]) -> dict[int, Inode]:
        """`getattr` of many inodes from one state; those that do not exist are left out."""
        fs = self.fs
        found = {}
        with self._state() as state:
            for ino in inos:
                inode = fs._inode_or_none(state, ino)
                if inode is not None:
                    found[ino] = self._seen(inode)
        return found

    def getxattrs(self, inos: Iterable[int], name: bytes) -> dict[int, bytes]:
        """The values of attribute `name` of many inodes from one state; where it is unset (or
        the inode does not exist), left out."""
        found = {}
        with self._state() as state:
            for ino in inos:
                value = self.fs.engine.get(state, "fs", xattr_key(ino, name))
                if value is not None:
                    assert isinstance(value, bytes)
                    found[ino] = value
        return found

    def _seen(self, inode: Inode) -> Inode:
        """The inode as the user sees it (live tree: bytes written but not stored yet count)."""
        return inode if self.snapshot else self.fs._with_open_state(inode)

    # One memo of decoded items (see Decoded), shared by every view: of the live tree's current
    # version while transactions change it (`follow`), else of the version read last. A reader
    # of an older version or of a snapshot does not take it from the live tree's.
    _decoded = Decoded()

    def _memo(self, state: State) -> object:
        """The root of `state`'s version of the tree, once the memo keeps items of that version
        if it may."""
        root = state.roots.get("fs")
        memo = FsView._decoded
        if memo.root is not root:
            live = self.fs.engine.state.roots.get("fs")
            if root is live or memo.root is not live:
                memo.start(root)
        return root

    @staticmethod
    def follow(engine: Engine) -> Callable[[Txn, State], None]:
        """The `Engine.on_publish` hook that takes the memo from the live tree's version to the
        one each transaction makes (hooks run one at a time, under the writer lock)."""
        def carry(t: Txn, before: State) -> None:
            old, new = before.roots.get("fs"), engine.state.roots.get("fs")
            if new is old:
                return
            memo = FsView._decoded
            if "fs" in t.replaced:  # a snapshot restored: nothing is known of the new version
                memo.start(new)
                return
            try:
                memo.follow(old, new, t.changes.get("fs", {}))
            except BaseException:
                memo.start(new)  # never a memo half taken to the new version
                raise
        return carry

    def _live_root(self) -> object | None:
        """The live tree's current version, for answers made only of items the memo keeps: they
        read nothing from the tree, so they need no reader (a reader costs about as much as the
        rest of such an answer). None for a snapshot view or a view holding a state."""
        if self.snapshot is not None or self._held is not None:
            return None
        return self.fs.engine.state.roots.get("fs")

    def _inode(self, state: State, root: object, ino: int) -> Inode:
        memo = FsView._decoded
        inode = memo.inode(root, ino)
        if inode is memo:  # (not kept)
            inode = memo.keep_inode(root, ino, self.fs._inode_or_none(state, ino))
        if inode is None:
            raise NotFound(f"inode {ino} does not exist")
        return inode

    def _dir(self, state: State, root: object, ino: int) -> Inode:
        inode = self._inode(state, root, ino)
        if not inode.is_dir:
            raise NotADirectory(f"inode {ino} is not a directory")
        return inode

    def _entry(self, state: State, root: object, parent: int, name: bytes) -> DirEntry | None:
        memo = FsView._decoded
        entry = memo.entry(root, parent, name)
        if entry is memo:
            entry = memo.keep_entry(root, parent, name, self.fs._entry(state, parent, name))
        return entry

    def getattr(self, ino: int) -> Inode:
        root = self._live_root()
        inode = FsView._decoded.inode(root, ino) if root is not None else None
        if not isinstance(inode, Inode):
            with self._state() as state:
                inode = self._inode(state, self._memo(state), ino)
        return self._seen(inode)

    def find(self, parent: int, name: bytes) -> Inode | None:
        """The inode named `name` in directory `parent`; None when the directory has no such name
        (NotFound or NotADirectory when `parent` itself is missing or not a directory)."""
        root = self._live_root()
        if root is not None:  # answered from the memo when both items are there
            entry, found = FsView._decoded.found(root, parent, name)
            if found is not None:  # (None too when the entry is not kept)
                if entry is not None:
                    return self._seen(found)
                if found.is_dir:
                    return None
        with self._state() as state:
            root = self._memo(state)
            entry = self._entry(state, root, parent, name)
            if entry is None:
                self._dir(state, root, parent)  # only a directory has entries: checked on a miss
                return None
            inode = self._inode(state, root, entry.ino)
        return self._seen(inode)

    def lookup(self, parent: int, name: bytes) -> Inode:
        inode = self.find(parent, name)
        if inode is None:
            raise NotFound(f"{name!r} not found")
        return inode

    def entries(self, ino: int, after: int) -> Iterator[tuple[bytes, Inode, int]]:
        """Entries after readdir offset `after`: (name, inode, offset of this entry), read lazily
        in one reader pass, so a caller takes just what it can use. The reader stays pinned
        until the iterator is exhausted or closed: close it at once."""
        with self._state() as state:
            root = self._memo(state)
            self._dir(state, root, ino)
            start = dirseq_key(ino, after + 1)
            opened = None if self.snapshot else self.fs._open  # see _seen
            memo = FsView._decoded
            for key, name in self.fs.engine.items(state, "fs", start, next_prefix(start[:9])):
                entry, inode = memo.found(root, ino, name)  # (both at once: this runs for every entry)
                if entry is memo:
                    entry = self._entry(state, root, ino, name)
                if entry is None:
                    continue
                if inode is None:
                    inode = self._inode(state, root, entry.ino)
                if opened and inode.ino in opened:
                    inode = self._seen(inode)
                yield name, inode, int.from_bytes(key[9:], "big")

    def readdir(self, ino: int, after: int, limit: int) -> list[tuple[bytes, Inode, int]]:
        out: list[tuple[bytes, Inode, int]] = []
        entries = self.entries(ino, after)
        try:
            for item in entries:
                out.append(item)
                if len(out) >= limit:
                    break
        finally:
            entries.close()
        return out

    def listdir_sorted(self, ino: int, start_after: bytes, limit: int) -> list[tuple[bytes, DirEntry]]:
        fs = self.fs
        out = []
        with self._state() as state:
            prefix = dirent_prefix(ino)
            for key, raw in fs.engine.items(state, "fs", prefix + start_after + b"\0" if start_after else prefix,
                                            next_prefix(prefix)):
                out.append((key[len(prefix):], DirEntry.decode(raw)))
                if len(out) >= limit:
                    break
        return out

    def readlink(self, ino: int) -> bytes:
        with self._state() as state:
            inode = self.fs._inode(state, ino)
            if not inode.is_link:
                raise InvalidArgument("not a symbolic link")
            target = self.fs.engine.get(state, "fs", symlink_key(ino))
        assert isinstance(target, bytes)
        return target

    def getxattr(self, ino: int, name: bytes) -> bytes:
        with self._state() as state:
            value = self.fs.engine.get(state, "fs", xattr_key(ino, name))
            if value is None:
                self.fs._inode(state, ino)  # NotFound for a missing inode (an attribute needs one)
        if value is None:
            raise NoAttribute(f"no attribute {name!r}")
        assert isinstance(value, bytes)
        return value

    def listxattr(self, ino: int) -> list[bytes]:
        with self._state() as state:
            return [name for name, _ in self._xattr_items(state, ino, b"")]

    def xattrs(self, ino: int, prefix: bytes = b"") -> dict[bytes, bytes]:
        engine = self.fs.engine
        out = {}
        with self._state() as state:
            for name, raw in self._xattr_items(state, ino, prefix):
                value = engine.value(raw)  # (a spilled value is read only here, not to list names)
                assert isinstance(value, bytes)
                out[name] = value
        return out

    def _xattr_items(self, state: State, ino: int, prefix: bytes) -> Iterator[tuple[bytes, Value]]:
        """(name, stored value) of the inode's attributes whose name starts with `prefix`."""
        self.fs._inode(state, ino)
        start = xattr_key(ino, prefix)
        skip = len(xattr_prefix(ino))
        for key, raw in self.fs.engine.items(state, "fs", start, next_prefix(start)):
            yield key[skip:], raw

    def read(self, ino: int, offset: int, size: int) -> bytes:
        with self._state() as state:
            inode = self.fs._inode(state, ino)
            n = max(0, min(size, inode.size - offset))
            return data.read_range(self.fs.engine, state, ino, offset, n) if n else b""

