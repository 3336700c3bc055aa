"""FUSE operations: translate pyfuse3 requests into `FileSystem` calls.

Inode numbers: the live tree uses the cartridge's own inode numbers (below 2**48). A snapshot
gets a slot (1..0xFFFE, assigned on first use and kept for the life of the mount) and its inodes
are presented as `slot << 48 | ino`. `/.snapshots` itself is `SNAPDIR_INO`. File handles are
FUSE inode numbers. Every `CartridgeError` becomes `FUSEError(exc.errno)` in one place
(`_fuse_errors`).
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3
import trio

from ..errors import CartridgeError, NoAttribute
from ..fs.filesystem import Change, Ctx, FileSystem, FsView
from ..fs.items import ROOT_INO, Inode

log = logging.getLogger(__name__)

SHIFT = 48
LOW = (1 << SHIFT) - 1
SNAPDIR_SLOT = 0xFFFF
SNAPDIR_INO = SNAPDIR_SLOT << SHIFT | ROOT_INO
SNAPDIR_NAME = b".snapshots"
TIMEOUT = 5.0
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")
ORIGIN = "fuse"


@dataclass(frozen=True)
class AttrPolicy:
    """Overrides applied to every reported attribute (mount options uid=, gid=, umask=)."""

    uid: int | None = None
    gid: int | None = None
    umask: int | None = None


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
        self._known: set[int] = set()  # inodes the kernel was told about and not yet forgot
        self.initialised = trio.Event()  # set once the kernel's FUSE_INIT is answered
        fs.listeners.append(self._on_change)

    def init(self) -> None:
        # Called by pyfuse3 on the loop thread while it handles FUSE_INIT (the reply follows).
        self.initialised.set()

    # --- attributes ---

    def _entry(self, inode: Inode, fuse_ino: int, readonly: bool = False) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        p = self.policy
        mode = inode.mode
        if p.umask is not None:
            mode &= ~p.umask
        if readonly:
            mode &= ~0o222
        e.st_ino = fuse_ino
        self._known.add(fuse_ino)  # what the kernel may cache, for a restore to invalidate
        e.generation = 0
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        e.st_mode = mode
        e.st_nlink = inode.nlink
        e.st_uid = p.uid if p.uid is not None else inode.uid
        e.st_gid = p.gid if p.gid is not None else inode.gid
        e.st_rdev = inode.rdev
        e.st_size = inode.size
        e.st_blksize = 4096
        e.st_blocks = math.ceil(inode.size / 512)
        e.st_atime_ns = inode.atime_ns
        e.st_mtime_ns = inode.mtime_ns
        e.st_ctime_ns = inode.ctime_ns
        e.st_birthtime_ns = inode.btime_ns
        return e

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
        (inodes it was told about); the synchronous pyfuse3 calls run in a worker thread,
        never inside a FUSE request handler, so they cannot deadlock with one.
        """
        if change.origin == ORIGIN:
            return
        if change.ino is None and change.parent is None:  # anything may have changed
            stale = list(self._known)
        else:
            stale = [change.ino] if change.ino in self._known else []
        entry = change.parent in self._known and change.name is not None
        if not stale and not entry:
            return
        with trio.move_on_after(INVALIDATE_TIMEOUT):
            try:
                await trio.to_thread.run_sync(self._invalidate, change, stale, abandon_on_cancel=True)
            except Exception as exc:  # never let a cache hint take the mount down
                log.debug("invalidation of %s failed: %s", change, exc)

    def _invalidate(self, change: Change, stale: list[int]) -> None:
        if change.parent in self._known and change.name is not None:
            try:
                pyfuse3.invalidate_entry(change.parent, change.name)
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # the kernel did not have that name cached
                    raise
        for ino in stale:
            self._invalidate_inode(ino)

    @staticmethod
    def _invalidate_inode(ino: int) -> None:
        try:
            pyfuse3.invalidate_inode(ino)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise

    # --- namespace ---

    async def lookup(self, parent_inode, name, ctx=None):
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
        if view is None:
            if name == b".":
                return await self.getattr(parent_inode)
            if name == b"..":
                parent = (await self.fs.getattr(ino)).parent or ROOT_INO
                return await self.getattr(parent)
            inode = await self.fs.lookup(ino, name)
            return self._entry(inode, inode.ino)
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
        kw: dict = {}
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_size:
            kw["size"] = attr.st_size
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if fields.update_ctime:
            kw["ctime_ns"] = attr.st_ctime_ns
        if not kw:
            return await self.getattr(inode)
        return self._entry(await self.fs.setattr(_ctx(ctx), ino, **kw), ino)

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
            return
        view, ino = self._split(fh)
        slot = fh >> SHIFT
        after = start_id
        while True:
            if view is None:
                batch = await self.fs.readdir(ino, after, 256)
            else:
                batch = await self._thread(view.readdir, ino, after, 256)
            if not batch:
                return
            for name, inode, offset in batch:
                if slot:
                    attr = self._entry(inode, slot << SHIFT | inode.ino, readonly=True)
                else:
                    attr = self._entry(inode, inode.ino)
                if not pyfuse3.readdir_reply(token, name, attr, offset):
                    return
                after = offset

    async def mkdir(self, parent_inode, name, mode, ctx):
        parent = self._writable_parent(parent_inode, name)
        inode = await self.fs.mkdir(_ctx(ctx), parent, name, mode & ~ctx.umask)
        return self._entry(inode, inode.ino)

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
        return self._entry(result, result.ino)

    async def symlink(self, parent_inode, name, target, ctx):
        parent = self._writable_parent(parent_inode, name)
        inode = await self.fs.symlink(_ctx(ctx), parent, name, target)
        return self._entry(inode, inode.ino)

    async def readlink(self, inode, ctx):
        view, ino = self._split(inode)
        if view is None:
            return await self.fs.readlink(ino)
        return await self._thread(view.readlink, ino)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        parent = self._writable_parent(parent_inode, name)
        mode = stat.S_IFMT(mode) | (stat.S_IMODE(mode) & ~ctx.umask)
        inode = await self.fs.mknod(_ctx(ctx), parent, name, mode, rdev)
        return self._entry(inode, inode.ino)

    # --- files ---

    async def create(self, parent_inode, name, mode, flags, ctx):
        parent = self._writable_parent(parent_inode, name)
        inode = await self.fs.create(_ctx(ctx), parent, name, stat.S_IMODE(mode) & ~ctx.umask)
        await self.fs.open(inode.ino)
        return pyfuse3.FileInfo(fh=inode.ino), self._entry(inode, inode.ino)

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
        if flags & os.O_TRUNC and found.size:
            # libfuse asks for atomic O_TRUNC: the kernel leaves the truncation to us.
            await self.fs.setattr(Ctx(ctx.uid, ctx.gid, ORIGIN), inode, size=0)
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh, off, size):
        if fh >> SHIFT:
            view, ino = self._split(fh)
            return await self._thread(view.read, ino, off, size)
        return await self.fs.read(fh, off, size)

    async def write(self, fh, off, buf):
        ino = self._writable(fh)
        return await self.fs.write(Ctx(0, 0, ORIGIN), ino, off, bytes(buf))

    async def flush(self, fh):
        if not fh >> SHIFT:
            await self.fs.flush(fh)

    async def release(self, fh):
        if not fh >> SHIFT:
            await self.fs.release(fh)

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

    async def removexattr(self, inode, name, ctx):
        ino = self._writable(inode)
        if not name.startswith(XATTR_NAMESPACES):
            raise NoAttribute(f"no attribute {name!r}")
        await self.fs.removexattr(_ctx(ctx), ino, name)

    async def forget(self, inode_list):
        for ino, _nlookup in inode_list:  # the kernel dropped the inode: nothing to invalidate
            self._known.discard(ino)

