"""FUSE operations: translate pyfuse3 requests into `FileSystem` calls.

Inode numbers: the live tree uses the cartridge's own inode numbers (below 2**48). A snapshot
gets a slot (1..0xFFFE, assigned on first use and kept for the life of the mount) and its inodes
are presented as `slot << 48 | ino`. `/.snapshots` itself is `SNAPDIR_INO`. File handles are
FUSE inode numbers. Every `CartridgeError` becomes `FUSEError(exc.errno)` in one place
(`_fuse_errors`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pyfuse3
import trio

from ..errors import CartridgeError, NoAttribute
from ..fs.filesystem import Change, Ctx, FileSystem, FsView
from ..fs.items import ROOT_INO, Inode, check_name_length

log = logging.getLogger(__name__)

SHIFT = 48
LOW = (1 << SHIFT) - 1
SNAPDIR_SLOT = 0xFFFF
SNAPDIR_INO = SNAPDIR_SLOT << SHIFT | ROOT_INO
SNAPDIR_NAME = b".snapshots"
TIMEOUT = 5.0
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")
CAPABILITY = b"security.capability"
ORIGIN = "fuse"
MISSES_MAX = 100_000  # negative entries tracked at most; beyond, misses are answered uncached
READDIR_BATCH = 256  # snapshot directories: entries read per worker-thread call
ATTRS_MAX = 8192  # attributes kept for reuse (about 250 bytes each)


@dataclass(frozen=True)
class AttrPolicy:
    """Overrides applied to every reported attribute (mount options uid=, gid=, umask=)."""

    uid: int | None = None
    gid: int | None = None
    umask: int | None = None


# SetattrFields flag -> FileSystem.setattr keyword -> EntryAttributes field
_SETATTR_FIELDS = (
    ("update_mode", "mode", "st_mode"), ("update_uid", "uid", "st_uid"),
    ("update_gid", "gid", "st_gid"), ("update_size", "size", "st_size"),
    ("update_atime", "atime_ns", "st_atime_ns"), ("update_mtime", "mtime_ns", "st_mtime_ns"),
    ("update_ctime", "ctime_ns", "st_ctime_ns"),
)


def _fuse_errors(fn: Callable) -> Callable:
    """Map cartridge errors to FUSE errors once, for every operation."""

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except CartridgeError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODATA, errno.EEXIST, errno.ENOTEMPTY):
                log.info("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            log.warning("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _wrap_all(cls):
    for name in ("lookup", "getattr", "setattr", "readdir", "opendir", "releasedir", "mkdir",
                 "rmdir", "create", "open", "read", "write", "flush", "release", "fsync",
                 "fsyncdir", "unlink", "rename", "link", "symlink", "readlink", "mknod", "statfs",
                 "getxattr", "setxattr", "listxattr", "removexattr", "access"):
        setattr(cls, name, _fuse_errors(getattr(cls, name)))
    return cls


def _ctx(ctx) -> Ctx:
    return Ctx(ctx.uid, ctx.gid, ORIGIN)


def _erofs() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


INVALIDATE_TIMEOUT = 5.0  # seconds an invalidation may take before we stop waiting


def _negative_entry() -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = 0
    e.entry_timeout = TIMEOUT
    e.attr_timeout = 0
    return e


_NEGATIVE = _negative_entry()  # every miss answers with it (pyfuse3 copies it into the reply)


class _Misses:
    """Names a lookup found missing that the kernel may still hold as negative entries.

    The kernel keeps a miss for TIMEOUT without asking again; a name created by another side
    is invalidated through its `Change`, but a restore names nothing, so it invalidates every
    miss listed here. Entries are listed a little longer than the kernel keeps them.
    """

    def __init__(self, ttl: float = TIMEOUT + 1.0, limit: int = MISSES_MAX) -> None:
        self._ttl = ttl
        self._limit = limit
        self._until: OrderedDict[tuple[int, bytes], float] = OrderedDict()  # oldest first

    def add(self, parent: int, name: bytes) -> bool:
        """List a miss; False when the list is full (then the miss must not be cached)."""
        now = time.monotonic()
        self._expire(now)
        key = (parent, name)
        if key not in self._until and len(self._until) >= self._limit:
            return False
        self._until[key] = now + self._ttl
        self._until.move_to_end(key)
        return True

    def current(self) -> list[tuple[int, bytes]]:
        self._expire(time.monotonic())
        return list(self._until)

    def _expire(self, now: float) -> None:
        while self._until:
            key, until = next(iter(self._until.items()))
            if until > now:
                return
            del self._until[key]


def _privileged(mode: int) -> bool:
    """Mode bits a write by an unprivileged process makes the kernel drop (setuid; setgid with
    group execute)."""
    return bool(mode & stat.S_ISUID or (mode & stat.S_ISGID and mode & stat.S_IXGRP))


def _unprivileged(mode: int) -> int:
    return mode & ~(stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0))


@_wrap_all
class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, fs: FileSystem, policy: AttrPolicy | None = None) -> None:
        super().__init__()
        self.fs = fs
        self.policy = policy or AttrPolicy()
        self._slots: dict[str, int] = {}  # snapshot name -> slot
        self._names: dict[int, str] = {}  # slot -> snapshot name
        self._views: dict[int, FsView] = {}
        self._live = fs.view()
        # The kernel's lookup count per inode (what it may cache, until it forgets it): the root
        # is known from the start and never forgotten.
        self._known: dict[int, int] = {ROOT_INO: 1}
        self._attrs: dict[int, tuple[Inode, pyfuse3.EntryAttributes]] = {}  # see _entry
        self._misses = _Misses()  # live-tree names the kernel may hold as negative entries
        self._handles: Counter[int] = Counter()  # open handles per live inode
        self._direct: set[int] = set()  # inodes one of whose open handles does direct I/O
        self._kill_on_write: set[int] = set()  # of those, inodes given privileges since (see write)
        self.initialised = trio.Event()  # set once the kernel's FUSE_INIT is answered
        fs.listeners.append(self._on_change)
        fs.holders.append(self._known.__contains__)

    def init(self) -> None:
        # Called by pyfuse3 on the loop thread while it handles FUSE_INIT (the reply follows).
        self.initialised.set()

    # --- attributes ---

    def _looked_up(self, e: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        """An entry the kernel is given (lookup, a creation, a readdirplus entry): one more
        reference it holds to the inode, until `forget`."""
        if e.st_ino:
            known = self._known
            known[e.st_ino] = known.get(e.st_ino, 0) + 1
        return e

    def _entry(self, inode: Inode, fuse_ino: int, readonly: bool = False) -> pyfuse3.EntryAttributes:
        if readonly:
            return self._attributes(inode, fuse_ino, readonly)
        # Live inodes come back as the same object while unchanged (FsView keeps decoded ones):
        # their attributes are built once (a listing after a stat of every file, `ls -l`, ...).
        cached = self._attrs.get(fuse_ino)
        if cached is not None and cached[0] is inode:
            return cached[1]
        if len(self._attrs) >= ATTRS_MAX:
            self._attrs.clear()
        e = self._attributes(inode, fuse_ino)
        self._attrs[fuse_ino] = (inode, e)
        return e

    def _attributes(self, inode: Inode, fuse_ino: int,
                    readonly: bool = False) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        p = self.policy
        mode = inode.mode
        if p.umask is not None:
            mode &= ~p.umask
        if readonly:
            mode &= ~0o222
        e.st_ino = fuse_ino  # (generation: 0, as pyfuse3 starts it)
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        e.st_mode = mode
        e.st_nlink = inode.nlink
        e.st_uid = p.uid if p.uid is not None else inode.uid
        e.st_gid = p.gid if p.gid is not None else inode.gid
        e.st_rdev = inode.rdev
        e.st_size = inode.size
        e.st_blksize = 4096
        e.st_blocks = (inode.size + 511) // 512
        e.st_atime_ns = inode.atime_ns
        e.st_mtime_ns = inode.mtime_ns
        e.st_ctime_ns = inode.ctime_ns
        e.st_birthtime_ns = inode.btime_ns
        return e

    def _miss(self, parent: int, name: bytes) -> pyfuse3.EntryAttributes:
        """A live-tree lookup that found no `name`: an entry with inode 0, which the kernel keeps
        as a negative entry for TIMEOUT (no LOOKUP for that name meanwhile). A name created by
        the kernel's own requests replaces it; any other creation invalidates it (_on_change)."""
        if not self._misses.add(parent, name):
            raise pyfuse3.FUSEError(errno.ENOENT)  # too many listed: this one is not cached
        return _NEGATIVE

    def _snapdir_entry(self) -> pyfuse3.EntryAttributes:
        root_like = Inode(ROOT_INO, stat.S_IFDIR | 0o555, nlink=2)
        engine = self.fs.engine
        t = engine.commit_ns if hasattr(engine, "commit_ns") else 0
        return self._entry(root_like.changed(atime_ns=t, mtime_ns=t, ctime_ns=t, btime_ns=t),
                           SNAPDIR_INO, readonly=True)

    # --- snapshot inode space ---

    def _slot_for(self, name: str) -> int:
        slot = self._slots.get(name)
        if slot is None:
            slot = len(self._slots) + 1
            if slot >= SNAPDIR_SLOT:
                raise pyfuse3.FUSEError(errno.ENOSPC)
            self._slots[name] = slot
            self._names[slot] = name
            self._views[slot] = self.fs.view(name)
        return slot

    def _split(self, fuse_ino: int) -> tuple[FsView | None, int]:
        """(view, cartridge inode); view None for the live tree."""
        slot = fuse_ino >> SHIFT
        if slot == 0:
            return None, fuse_ino
        view = self._views.get(slot)
        if view is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return view, fuse_ino & LOW

    def _snapshot_names(self) -> list[str]:
        return sorted(s.name for s in self.fs.engine.snapshots())

    async def _thread(self, fn: Callable, *args):
        return await trio.to_thread.run_sync(fn, *args)

    def _writable(self, fuse_ino: int) -> int:
        """The live inode for a change; EROFS inside the snapshot view."""
        if fuse_ino >> SHIFT:
            raise _erofs()
        return fuse_ino

    # --- change notifications from the other side (S3) ---

    async def _on_change(self, change: Change) -> None:
        """Make the kernel forget what a change by another side (S3, a restore) made stale.

        Awaited by the filesystem before the change's caller gets its answer, so nothing read
        through the mount afterwards is stale. Only what the kernel may hold is invalidated
        (inodes it was told about, names in directories it was told about: a name created
        here may be cached as a miss); the synchronous pyfuse3 calls run in a worker thread,
        never inside a FUSE request handler, so they cannot deadlock with one.
        """
        if change.origin == ORIGIN:
            return
        if change.ino is None and change.parent is None:  # anything may have changed
            stale = list(self._known)
            entries = [(parent, name, 0) for parent, name in self._misses.current()]
        else:
            stale = [change.ino] if change.ino in self._known else []
            named = change.parent in self._known and change.name is not None
            # A removal tells the kernel the inode lost that name: it then drops the inode once
            # unused (FORGET), and a removed directory or FIFO kept for it can be freed.
            gone = change.ino if change.removed and stale else 0
            entries = [(change.parent, change.name, gone)] if named else []
        if stale or entries:
            await self._tell_kernel(self._invalidate, entries, stale)

    @staticmethod
    async def _tell_kernel(invalidate: Callable, *args) -> None:
        """Run a synchronous pyfuse3 invalidation in a worker thread, for INVALIDATE_TIMEOUT at
        most; a failure is only logged (never let a cache hint take the mount down)."""
        with trio.move_on_after(INVALIDATE_TIMEOUT):
            try:
                await trio.to_thread.run_sync(invalidate, *args, abandon_on_cancel=True)
            except Exception as exc:
                log.debug("invalidation %s%s failed: %s", invalidate.__name__, args, exc)

    def _invalidate(self, entries: list[tuple[int, bytes, int]], stale: list[int]) -> None:
        """Entries: (directory, name, the inode that name lost or 0)."""
        for parent, name, gone in entries:
            try:
                pyfuse3.invalidate_entry(parent, name, gone)
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # the kernel did not have that name cached
                    raise
        for ino in stale:
            self._invalidate_inode(ino)

    @staticmethod
    def _invalidate_inode(ino: int, attr_only: bool = False) -> None:
        try:
            pyfuse3.invalidate_inode(ino, attr_only)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise

    # --- namespace ---

    async def lookup(self, parent_inode, name, ctx=None):
        return self._looked_up(await self._lookup(parent_inode, name))

    async def _lookup(self, parent_inode: int, name: bytes) -> pyfuse3.EntryAttributes:
        check_name_length(name)  # the kernel only refuses names over 1024 bytes for FUSE
        if parent_inode <= LOW and name != b"." and name != b".." and not (
                parent_inode == ROOT_INO and name == SNAPDIR_NAME):
            # A name in the live tree (first: by far the most frequent request).
            inode = self._live.find(parent_inode, name)
            return self._miss(parent_inode, name) if inode is None else self._entry(inode, inode.ino)
        if parent_inode == SNAPDIR_INO:
            if name == b".":
                return self._snapdir_entry()
            if name == b"..":
                return await self.getattr(ROOT_INO)
            if name.decode(errors="surrogateescape") not in self._snapshot_names():
                raise pyfuse3.FUSEError(errno.ENOENT)
            slot = self._slot_for(name.decode(errors="surrogateescape"))
            view = self._views[slot]
            inode = await self._thread(view.getattr, ROOT_INO)
            return self._entry(inode, slot << SHIFT | ROOT_INO, readonly=True)
        if parent_inode == ROOT_INO and name == SNAPDIR_NAME:
            return self._snapdir_entry()
        view, ino = self._split(parent_inode)
        if view is None:  # "." or ".." (other names are found above)
            if name == b".":
                return await self.getattr(parent_inode)
            parent = (await self.fs.getattr(ino)).parent or ROOT_INO
            return await self.getattr(parent)
        slot = parent_inode >> SHIFT
        if name == b".":
            inode = await self._thread(view.getattr, ino)
        elif name == b"..":
            if ino == ROOT_INO:
                return self._snapdir_entry()
            parent = (await self._thread(view.getattr, ino)).parent or ROOT_INO
            inode = await self._thread(view.getattr, parent)
        else:
            inode = await self._thread(view.lookup, ino, name)
        return self._entry(inode, slot << SHIFT | inode.ino, readonly=True)

    async def getattr(self, inode, ctx=None):
        if inode == SNAPDIR_INO:
            return self._snapdir_entry()
        view, ino = self._split(inode)
        if view is None:
            return self._entry(await self.fs.getattr(ino), ino)
        return self._entry(await self._thread(view.getattr, ino), inode, readonly=True)

    async def setattr(self, inode, attr, fields, fh, ctx):
        ino = self._writable(inode)
        if ino == SNAPDIR_INO:
            raise _erofs()
        kw = {name: getattr(attr, source) for flag, name, source in _SETATTR_FIELDS
              if getattr(fields, flag)}
        if not kw:
            return await self.getattr(inode)
        result = await self.fs.setattr(_ctx(ctx), ino, **kw)
        if ino in self._direct and _privileged(result.mode):
            self._kill_on_write.add(ino)
        return self._entry(result, ino)

    async def access(self, inode, mode, ctx):
        # default_permissions makes the kernel check modes; only writes to snapshots are refused.
        return not (mode & os.W_OK and inode >> SHIFT)

    async def opendir(self, inode, ctx):
        if inode != SNAPDIR_INO:
            view, ino = self._split(inode)
            if view is None:
                inode_obj = await self.fs.getattr(ino)
            else:
                inode_obj = await self._thread(view.getattr, ino)
            if not inode_obj.is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def releasedir(self, fh):
        return None

    async def readdir(self, fh, start_id, token):
        if fh == SNAPDIR_INO:
            names = self._snapshot_names()
            for name in names:
                self._slot_for(name)
            for name in sorted(names, key=self._slots.__getitem__):
                slot = self._slots[name]
                if slot <= start_id:
                    continue
                inode = await self._thread(self._views[slot].getattr, ROOT_INO)
                attr = self._entry(inode, slot << SHIFT | ROOT_INO, readonly=True)
                if not pyfuse3.readdir_reply(token, name.encode(errors="surrogateescape"), attr, slot):
                    return
                self._looked_up(attr)
            return
        view, ino = self._split(fh)
        if view is None:
            # Inline, in one reader pass that stops at the first entry the reply has no room for
            # (the kernel asks for up to 32 KiB: about 200 entries).
            with contextlib.closing(self._live.entries(ino, start_id)) as entries:
                self._reply_entries(token, entries, 0)
            return
        after = start_id
        while True:
            batch = await self._thread(view.readdir, ino, after, READDIR_BATCH)
            if not batch or not self._reply_entries(token, batch, fh >> SHIFT):
                return
            after = batch[-1][2]

    def _reply_entries(self, token, entries: Iterable[tuple[bytes, Inode, int]], slot: int) -> bool:
        """Add entries to a readdir reply; False once one did not fit (the reply is full). Each
        entry added is a lookup (readdirplus)."""
        reply, looked_up = pyfuse3.readdir_reply, self._looked_up
        if slot:
            for name, inode, offset in entries:
                attr = self._entry(inode, slot << SHIFT | inode.ino, True)
                if not reply(token, name, attr, offset):
                    return False
                looked_up(attr)
            return True
        # Live entries: _entry's reuse of built attributes inline (this runs for every entry).
        attrs = self._attrs
        for name, inode, offset in entries:
            cached = attrs.get(inode.ino)
            attr = cached[1] if cached is not None and cached[0] is inode else self._entry(inode, inode.ino)
            if not reply(token, name, attr, offset):
                return False
            looked_up(attr)
        return True

    async def mkdir(self, parent_inode, name, mode, ctx):
        parent = self._writable_parent(parent_inode, name)
        inode = await self.fs.mkdir(_ctx(ctx), parent, name, mode & ~ctx.umask)
        return self._looked_up(self._entry(inode, inode.ino))

    def _writable_parent(self, parent_inode: int, name: bytes) -> int:
        if parent_inode == SNAPDIR_INO:
            raise _erofs()
        parent = self._writable(parent_inode)
        if parent == ROOT_INO and name == SNAPDIR_NAME:
            raise pyfuse3.FUSEError(errno.EEXIST)
        return parent

    async def rmdir(self, parent_inode, name, ctx):
        parent = self._writable_parent(parent_inode, name)
        await self.fs.rmdir(_ctx(ctx), parent, name)

    async def unlink(self, parent_inode, name, ctx):
        parent = self._writable_parent(parent_inode, name)
        await self.fs.unlink(_ctx(ctx), parent, name)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old = self._writable_parent(parent_inode_old, name_old)
        new = self._writable_parent(parent_inode_new, name_new)
        await self.fs.rename(_ctx(ctx), old, name_old, new, name_new, flags)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        ino = self._writable(inode)
        parent = self._writable_parent(new_parent_inode, new_name)
        result = await self.fs.link(_ctx(ctx), ino, parent, new_name)
        return self._looked_up(self._entry(result, result.ino))

    async def symlink(self, parent_inode, name, target, ctx):
        parent = self._writable_parent(parent_inode, name)
        inode = await self.fs.symlink(_ctx(ctx), parent, name, target)
        return self._looked_up(self._entry(inode, inode.ino))

    async def readlink(self, inode, ctx):
        view, ino = self._split(inode)
        if view is None:
            return await self.fs.readlink(ino)
        return await self._thread(view.readlink, ino)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        parent = self._writable_parent(parent_inode, name)
        mode = stat.S_IFMT(mode) | (stat.S_IMODE(mode) & ~ctx.umask)
        inode = await self.fs.mknod(_ctx(ctx), parent, name, mode, rdev)
        return self._looked_up(self._entry(inode, inode.ino))

    # --- files ---

    async def create(self, parent_inode, name, mode, flags, ctx):
        parent = self._writable_parent(parent_inode, name)
        inode = await self.fs.create(_ctx(ctx), parent, name, stat.S_IMODE(mode) & ~ctx.umask)
        await self.fs.open(inode.ino)
        # A new file opened write-only gets direct I/O: each write(2) is then one WRITE request
        # and the kernel skips the GETXATTR(security.capability) it sends before every write
        # through the page cache (to drop privileges; see write). Nothing is lost: a write-only
        # handle never reads or maps the file, and the page cache was empty.
        direct = flags & os.O_ACCMODE == os.O_WRONLY and not _privileged(inode.mode)
        self._opened(inode.ino, direct)
        return pyfuse3.FileInfo(fh=inode.ino, direct_io=direct), self._looked_up(self._entry(inode, inode.ino))

    def _opened(self, ino: int, direct: bool = False) -> None:
        self._handles[ino] += 1
        if direct:
            self._direct.add(ino)

    def _closed(self, ino: int) -> None:
        self._handles[ino] -= 1
        if self._handles[ino] <= 0:
            del self._handles[ino]
            self._direct.discard(ino)
            self._kill_on_write.discard(ino)

    async def open(self, inode, flags, ctx):
        if inode == SNAPDIR_INO:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if inode >> SHIFT:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
                raise _erofs()
            self._split(inode)
            return pyfuse3.FileInfo(fh=inode)
        found = await self.fs.getattr(inode)
        if found.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        await self.fs.open(inode)
        if flags & os.O_TRUNC:
            # libfuse asks for atomic O_TRUNC: the kernel leaves the truncation to us, and with it
            # the new mtime and ctime that O_TRUNC gives even an empty file.
            try:
                await self.fs.setattr(Ctx(ctx.uid, ctx.gid, ORIGIN), inode, size=0)
            except BaseException:
                await self.fs.release(inode)  # no handle was given: the kernel will not release it
                raise
        self._opened(inode)
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh, off, size):
        if fh >> SHIFT:
            view, ino = self._split(fh)
            return await self._thread(view.read, ino, off, size)
        return await self.fs.read(fh, off, size)

    async def write(self, fh, off, buf):
        ino = self._writable(fh)
        if ino in self._kill_on_write:
            await self._drop_privileges(ino)
        return await self.fs.write(Ctx(0, 0, ORIGIN), ino, off, bytes(buf))

    async def _drop_privileges(self, ino: int) -> None:
        """Before a write: drop setuid/setgid and file capabilities that a file with a direct-I/O
        handle open was given since it was opened. The kernel does that itself before writes
        through the page cache; for direct I/O it leaves it to the filesystem, with a flag that
        pyfuse3 does not pass on. So it is done here for every writer, also for those with
        CAP_FSETID (who would keep setuid/setgid): the safe side."""
        self._kill_on_write.discard(ino)
        ctx = Ctx(0, 0, ORIGIN)
        mode = (await self.fs.getattr(ino)).mode
        changed = _privileged(mode)
        if changed:
            await self.fs.setattr(ctx, ino, mode=_unprivileged(mode))
        try:
            await self.fs.removexattr(ctx, ino, CAPABILITY)
            changed = True
        except NoAttribute:
            pass
        if changed:  # the kernel's cached mode must go (only attributes: a writer may hold pages)
            await self._tell_kernel(self._invalidate_inode, ino, True)

    async def flush(self, fh):
        if not fh >> SHIFT:
            await self.fs.flush(fh)

    async def release(self, fh):
        if not fh >> SHIFT:
            try:
                await self.fs.release(fh)
            finally:
                self._closed(fh)

    async def fsync(self, fh, datasync):
        if not fh >> SHIFT:
            await self.fs.fsync(fh)

    async def fsyncdir(self, fh, datasync):
        if not fh >> SHIFT:
            await self.fs.fsync(None)

    async def statfs(self, ctx):
        info = await self.fs.statfs()
        s = pyfuse3.StatvfsData()
        s.f_bsize = info["block_size"]
        s.f_frsize = info["block_size"]
        s.f_blocks = info["blocks"]
        s.f_bfree = info["free_blocks"]
        s.f_bavail = info["free_blocks"]
        s.f_files = max(info["files"], 1) + (1 << 32)
        s.f_ffree = 1 << 32
        s.f_favail = 1 << 32
        s.f_namemax = info["name_max"]
        return s

    # --- extended attributes ---

    @staticmethod
    def _check_xattr_name(name: bytes) -> None:
        if not name.startswith(XATTR_NAMESPACES):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)

    async def getxattr(self, inode, name, ctx):
        if not name.startswith(XATTR_NAMESPACES) or inode == SNAPDIR_INO:
            raise pyfuse3.FUSEError(errno.ENODATA)
        view, ino = self._split(inode)
        if view is None:
            return await self.fs.getxattr(ino, name)
        return await self._thread(view.getxattr, ino, name)

    async def listxattr(self, inode, ctx):
        if inode == SNAPDIR_INO:
            return []
        view, ino = self._split(inode)
        if view is None:
            names = await self.fs.listxattr(ino)
        else:
            names = await self._thread(view.listxattr, ino)
        return [n for n in names if n.startswith(XATTR_NAMESPACES)]

    async def setxattr(self, inode, name, value, ctx):
        ino = self._writable(inode)
        self._check_xattr_name(name)
        await self.fs.setxattr(_ctx(ctx), ino, name, value)
        if name == CAPABILITY and ino in self._direct:
            self._kill_on_write.add(ino)

    async def removexattr(self, inode, name, ctx):
        ino = self._writable(inode)
        if not name.startswith(XATTR_NAMESPACES):
            raise NoAttribute(f"no attribute {name!r}")
        await self.fs.removexattr(_ctx(ctx), ino, name)

    async def forget(self, inode_list):
        known = self._known
        for ino, nlookup in inode_list:
            left = known.get(ino, 0) - nlookup
            if left > 0:
                known[ino] = left
                continue
            # The kernel dropped the inode: nothing to invalidate, and a removed live inode that
            # was kept for it (see FileSystem.holders) can go.
            known.pop(ino, None)
            if not ino >> SHIFT:
                try:
                    await self.fs.let_go(ino)
                except Exception:  # forget has no reply: an error could only be logged
                    log.exception("freeing removed inode %d failed", ino)

