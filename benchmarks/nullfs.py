#!/usr/bin/env python3
"""A do-nothing pyfuse3 filesystem: the floor of any pyfuse3 filesystem on this machine.

    .venv/bin/python benchmarks/nullfs.py MOUNTPOINT

It keeps names, modes and sizes in memory and throws file contents away, with the mount options
and cache timeouts of `mount.cartridge` (default_permissions; entries and attributes cached). What
the kernel, libfuse and pyfuse3 cost per request shows in its figures: `fuse_workloads.py
--targets null` runs the small-file and tar workloads on it beside the cartridge (the others
read file contents back and are reported as unsupported). Serves until unmounted (`fusermount3 -u`).
"""

from __future__ import annotations

import errno
import stat
import sys
import time

import pyfuse3
import trio

TIMEOUT = 300.0  # as the cartridge mount: the other side of the cartridge invalidates explicitly


class NullFS(pyfuse3.Operations):
    """Names and attributes in dictionaries; no contents."""

    def __init__(self) -> None:
        super().__init__()
        now = time.time_ns()
        self.attrs: dict[int, pyfuse3.EntryAttributes] = {pyfuse3.ROOT_INODE: self._new(
            pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o755, now)}
        self.entries: dict[int, dict[bytes, int]] = {pyfuse3.ROOT_INODE: {}}
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.listings: dict[int, list[tuple[bytes, int]]] = {}  # open directory handle -> names
        self.next_fh = 1

    @staticmethod
    def _new(ino: int, mode: int, now: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino, e.st_mode, e.st_nlink = ino, mode, 1
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = now
        e.st_blksize = 4096
        e.entry_timeout = e.attr_timeout = TIMEOUT
        return e

    def _child(self, parent: int, name: bytes, mode: int, ctx) -> pyfuse3.EntryAttributes:
        names = self.entries[parent]
        if name in names:
            raise pyfuse3.FUSEError(errno.EEXIST)
        ino, self.next_ino = self.next_ino, self.next_ino + 1
        e = self.attrs[ino] = self._new(ino, mode, time.time_ns())
        e.st_uid, e.st_gid = ctx.uid, ctx.gid
        names[name] = ino
        if stat.S_ISDIR(mode):
            self.entries[ino] = {}
        return e

    async def lookup(self, parent_inode, name, ctx=None):
        ino = self.entries[parent_inode].get(name)
        if ino is None:
            e = pyfuse3.EntryAttributes()
            e.st_ino, e.entry_timeout = 0, TIMEOUT  # a cached negative entry, as the cartridge
            return e
        return self.attrs[ino]

    async def getattr(self, inode, ctx=None):
        return self.attrs[inode]

    async def setattr(self, inode, attr, fields, fh, ctx):
        e = self.attrs[inode]
        if fields.update_size:
            e.st_size = attr.st_size
        if fields.update_mode:
            e.st_mode = stat.S_IFMT(e.st_mode) | stat.S_IMODE(attr.st_mode)
        return e

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._child(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx)

    async def create(self, parent_inode, name, mode, flags, ctx):
        e = self._child(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        return pyfuse3.FileInfo(fh=e.st_ino), e

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode)

    async def write(self, fh, off, buf):
        e = self.attrs[fh]
        e.st_size = max(e.st_size, off + len(buf))
        return len(buf)

    async def flush(self, fh):
        pass

    async def release(self, fh):
        pass

    async def unlink(self, parent_inode, name, ctx):
        ino = self.entries[parent_inode].pop(name, None)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)

    async def rmdir(self, parent_inode, name, ctx):
        ino = self.entries[parent_inode].get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if self.entries[ino]:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        del self.entries[parent_inode][name], self.entries[ino]

    async def forget(self, inode_list):
        pass

    async def opendir(self, inode, ctx):
        # The listing is taken once per open handle; offsets are positions in it.
        fh, self.next_fh = self.next_fh, self.next_fh + 1
        self.listings[fh] = sorted(self.entries[inode].items())
        return fh

    async def readdir(self, fh, start_id, token):
        names = self.listings[fh]
        for pos in range(start_id, len(names)):
            name, ino = names[pos]
            if not pyfuse3.readdir_reply(token, name, self.attrs[ino], pos + 1):
                return

    async def releasedir(self, fh):
        del self.listings[fh]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    pyfuse3.init(NullFS(), sys.argv[1], {"fsname=nullfs", "subtype=null", "default_permissions"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
