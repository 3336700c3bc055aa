"""Differential test of the FUSE mount against the local filesystem (fsx/fsstress style).

A seeded generator applies the same random operations to a directory in a mounted cartridge and
to a plain directory under the test's tmp_path (the oracle: ext4, xfs or tmpfs), and compares
each outcome (value, or errno). Operations: open with O_CREAT/O_EXCL/O_TRUNC/O_APPEND, reads and
writes through several descriptors of one file (also past EOF, across 4 GiB, through mmap, from
threads), truncation, unlinking of open files, rename (also RENAME_NOREPLACE/RENAME_EXCHANGE),
links, symlinks, mkdir/rmdir, chmod/chown, utime, xattrs, FIFOs and device nodes, listings
while entries come and go, names of 255 and 256 bytes, fsync. Every few dozen operations it
compares the whole trees: names, types, modes, owners, link counts, sizes, bytes, symlink
targets, user./trusted. xattrs, which names share an inode, and mtimes set with utime; and the
attributes and bytes behind every open descriptor. Now and then it closes every descriptor,
unmounts, runs `cartridge fsck` and mounts again; once it fsyncs a directory and kills the
mount (kill -9) instead. Each time the trees must still agree.

Not compared, as legitimately different: inode and device numbers (only which names share an
inode, and that readdir's d_ino matches lstat's), atime, ctime, st_blocks, directory sizes,
mtimes the filesystem set itself (only whether an mtime is still the one utime set, and then its
value), the mtime of FIFOs, and seek offsets in directories.

For exploration beyond the fixed seeds here: `Generator` takes any seed, weights and `avoid`
set, `run_sequence` a drop_caches interval, and `Runner.log` holds the operations run, which
replay through `Runner.step` (to minimise a failing sequence).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import mmap
import os
import random
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# --- operations -----------------------------------------------------------------------------

EXPLICIT_BEFORE = 1_500_000_000 * 10**9  # utime sets mtimes before this or after EXPLICIT_AFTER
EXPLICIT_AFTER = 4_000_000_000 * 10**9  # (the clock is between them)
XATTR_NAMESPACES = ("user.", "trusted.")  # compared (security.* may hold labels of the system)
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
BIG_FILE = 8 * 1024 * 1024  # larger files are compared where the oracle holds data, plus probes
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(Timespec),
                            ctypes.c_int]


def _libc_call(result: int) -> None:
    if result != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))

Outcome = tuple[Any, ...]


@dataclass(frozen=True)
class Op:
    """One operation: a name from OPS and its arguments (paths relative to the side's root,
    handle numbers shared by both sides, data given as (length, seed))."""

    name: str
    args: tuple

    def __str__(self) -> str:
        return f"{self.name}{self.args!r}"


class Side:
    """One tree under test (the mount or the oracle) and its open descriptors by handle."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.fds: dict[int, int] = {}

    def p(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def close_all(self, dead: bool = False) -> None:
        """Close every descriptor (`dead`: of a mount that is gone: errors do not matter)."""
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                if not dead:
                    raise
        self.fds.clear()


def data(length: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(length)


def digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()[:16] if len(blob) > 64 else blob.hex()


def mtime(st: os.stat_result) -> int | str:
    """The mtime when utime set it, else only that the filesystem did."""
    explicit = not EXPLICIT_BEFORE <= st.st_mtime_ns <= EXPLICIT_AFTER
    return st.st_mtime_ns if explicit else "implicit"


def norm_stat(st: os.stat_result) -> tuple:
    """What must agree between the two sides (no sizes of directories)."""
    fmt = stat.S_IFMT(st.st_mode)
    size = None if fmt == stat.S_IFDIR else st.st_size
    rdev = st.st_rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0
    # Writes to a FIFO update its mtime on a local filesystem; FUSE inodes are S_NOCMTIME.
    times = None if fmt == stat.S_IFIFO else mtime(st)
    return (stat.filemode(st.st_mode), oct(st.st_mode), st.st_nlink, size, rdev, st.st_uid,
            st.st_gid, times)


def renameat2(old: str, new: str, flags: int) -> None:
    _libc_call(_libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags))


def _fd(side: Side, hid: int) -> int:
    return side.fds[hid]


def op_open(side: Side, hid: int, rel: str, flags: int, mode: int) -> None:
    side.fds[hid] = os.open(side.p(rel), flags | os.O_NONBLOCK | os.O_CLOEXEC, mode)


def op_close(side: Side, hid: int) -> None:
    os.close(side.fds.pop(hid))


def op_pwrite(side: Side, hid: int, offset: int, length: int, seed: int) -> int:
    return os.pwrite(_fd(side, hid), data(length, seed), offset)


def op_write(side: Side, hid: int, length: int, seed: int) -> tuple[int, int]:
    fd = _fd(side, hid)
    n = os.write(fd, data(length, seed))
    return n, os.lseek(fd, 0, os.SEEK_CUR)


def op_pread(side: Side, hid: int, offset: int, length: int) -> str:
    return digest(os.pread(_fd(side, hid), length, offset))


def op_read(side: Side, hid: int, length: int) -> str:
    return digest(os.read(_fd(side, hid), length))


def op_lseek(side: Side, hid: int, offset: int, whence: int) -> int:
    return os.lseek(_fd(side, hid), offset, whence)


def op_ftruncate(side: Side, hid: int, size: int) -> None:
    os.ftruncate(_fd(side, hid), size)


def op_truncate(side: Side, rel: str, size: int) -> None:
    os.truncate(side.p(rel), size)


def op_fstat(side: Side, hid: int) -> tuple:
    return norm_stat(os.fstat(_fd(side, hid)))


def op_stat(side: Side, rel: str, follow: bool) -> tuple:
    return norm_stat(os.stat(side.p(rel), follow_symlinks=follow))


def op_fsync(side: Side, hid: int, datasync: bool) -> None:
    (os.fdatasync if datasync else os.fsync)(_fd(side, hid))


def op_futime(side: Side, hid: int, ns: tuple[int, int] | None) -> None:
    if ns is None:
        os.utime(_fd(side, hid))
    else:
        os.utime(_fd(side, hid), ns=ns)


def op_utime(side: Side, rel: str, ns: tuple[int, int] | None, follow: bool) -> None:
    if ns is None:
        os.utime(side.p(rel), follow_symlinks=follow)
    else:
        os.utime(side.p(rel), ns=ns, follow_symlinks=follow)


def _timespec(ns: int) -> Timespec:
    if ns in (UTIME_NOW, UTIME_OMIT):
        return Timespec(0, ns)
    return Timespec(ns // 10**9, ns % 10**9)


def op_utimensat(side: Side, rel: str, atime_ns: int, mtime_ns: int, follow: bool) -> None:
    """utimensat(2) itself: os.utime cannot pass UTIME_NOW or UTIME_OMIT for one time only."""
    times = (Timespec * 2)(_timespec(atime_ns), _timespec(mtime_ns))
    flags = 0 if follow else AT_SYMLINK_NOFOLLOW
    _libc_call(_libc.utimensat(AT_FDCWD, os.fsencode(side.p(rel)), times, flags))


def op_chown(side: Side, rel: str, uid: int, gid: int, follow: bool) -> None:
    os.chown(side.p(rel), uid, gid, follow_symlinks=follow)


def op_unlink(side: Side, rel: str) -> None:
    os.unlink(side.p(rel))


def op_rmdir(side: Side, rel: str) -> None:
    os.rmdir(side.p(rel))


def op_mkdir(side: Side, rel: str, mode: int) -> None:
    os.mkdir(side.p(rel), mode)


def op_rename(side: Side, old: str, new: str, flags: int) -> None:
    if flags:
        renameat2(side.p(old), side.p(new), flags)
    else:
        os.rename(side.p(old), side.p(new))


def op_link(side: Side, old: str, new: str, follow: bool) -> None:
    os.link(side.p(old), side.p(new), follow_symlinks=follow)


def op_symlink(side: Side, target: str, rel: str) -> None:
    os.symlink(target, side.p(rel))


def op_readlink(side: Side, rel: str) -> str:
    return os.readlink(side.p(rel))


def op_chmod(side: Side, rel: str, mode: int) -> None:
    os.chmod(side.p(rel), mode)


def op_fchmod(side: Side, hid: int, mode: int) -> None:
    os.fchmod(_fd(side, hid), mode)


def op_setxattr(side: Side, rel: str, name: str, length: int, seed: int, flags: int,
                follow: bool) -> None:
    os.setxattr(side.p(rel), name, data(length, seed), flags, follow_symlinks=follow)


def op_fsetxattr(side: Side, hid: int, name: str, length: int, seed: int) -> None:
    os.setxattr(_fd(side, hid), name, data(length, seed))


def op_getxattr(side: Side, rel: str, name: str, follow: bool) -> str:
    return digest(os.getxattr(side.p(rel), name, follow_symlinks=follow))


def op_listxattr(side: Side, rel: str, follow: bool) -> list[str]:
    return sorted(n for n in os.listxattr(side.p(rel), follow_symlinks=follow)
                  if n.startswith(XATTR_NAMESPACES))


def op_removexattr(side: Side, rel: str, name: str, follow: bool) -> None:
    os.removexattr(side.p(rel), name, follow_symlinks=follow)


def op_mkfifo(side: Side, rel: str, mode: int) -> None:
    os.mkfifo(side.p(rel), mode)


def op_mknod(side: Side, rel: str, mode: int, device: int) -> None:
    os.mknod(side.p(rel), mode, device)


def op_listdir(side: Side, rel: str) -> list[str]:
    return sorted(os.listdir(side.p(rel)))


def op_fd_listdir(side: Side, hid: int) -> list[str]:
    return sorted(os.listdir(_fd(side, hid)))


def op_copy_range(side: Side, src: int, dst: int, src_off: int, dst_off: int, length: int) -> int:
    return os.copy_file_range(_fd(side, src), _fd(side, dst), length, src_off, dst_off)


def _mapping(fd: int, offset: int, length: int, write: bool) -> tuple[mmap.mmap, int] | None:
    """A shared mapping of bytes [offset, offset+length) clipped to the file (a touch beyond its
    end would be SIGBUS), and where `offset` is in it; None when nothing is left."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    length = min(length, st.st_size - offset)
    if length <= 0:
        return None
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if write else 0)
    mapping = mmap.mmap(fd, offset - start + length, mmap.MAP_SHARED, prot, offset=start)
    return mapping, offset - start


def op_mmap_read(side: Side, hid: int, offset: int, length: int) -> str | None:
    mapped = _mapping(_fd(side, hid), offset, length, write=False)
    if mapped is None:
        return None
    m, at = mapped
    with m:
        return digest(m[at:])


def op_mmap_write(side: Side, hid: int, offset: int, length: int, seed: int) -> int | None:
    """Write through a shared mapping (within the file's size) and msync it."""
    mapped = _mapping(_fd(side, hid), offset, length, write=True)
    if mapped is None:
        return None
    m, at = mapped
    with m:
        m[at:] = data(len(m) - at, seed)
        m.flush()
        return len(m) - at


def op_bulk_write(side: Side, hid: int, offset: int, mib: int, seed: int) -> int:
    """Several MiB in 1-MiB writes (the mount then stores them in the background meanwhile)."""
    fd = _fd(side, hid)
    return sum(os.pwrite(fd, data(1 << 20, seed + i), offset + (i << 20)) for i in range(mib))


def op_parallel_pwrite(side: Side, rel: str, threads: int, seed: int) -> list:
    """Threads write disjoint stripes of one file through descriptors of their own, in random
    order (the result does not depend on the interleaving); some also fsync."""
    path = side.p(rel)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    stripe = 7000

    def work(k: int) -> int:
        rng = random.Random(seed + k)
        flags = os.O_WRONLY if k % 2 else os.O_RDWR
        fd = os.open(path, flags)
        try:
            blocks = [b for b in range(40) if b % threads == k]
            rng.shuffle(blocks)
            for b in blocks:
                os.pwrite(fd, data(stripe, seed ^ b), b * stripe)
                if rng.random() < 0.1:
                    os.fsync(fd)
            return len(blocks)
        finally:
            os.close(fd)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(work, range(threads)))


def op_populate(side: Side, rel: str, count: int) -> None:
    """Many entries in one directory (readdir then takes several requests)."""
    for i in range(count):
        path = side.p(os.path.join(rel, f"p_{i:04d}_" + "q" * 60))
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.lstat(path).st_mode):
                # Renamed here, not made here: opening a device node differs by design (the
                # mount is nodev), a FIFO would block, a symlink leads elsewhere.
                continue
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def op_depopulate(side: Side, rel: str) -> list[str]:
    """Unlink every p_* entry, in name order; what each unlink answered."""
    answers = []
    for n in sorted(n for n in os.listdir(side.p(rel)) if n.startswith("p_")):
        try:
            os.unlink(side.p(os.path.join(rel, n)))
            answers.append("ok")
        except OSError as exc:
            answers.append(errno.errorcode.get(exc.errno, str(exc.errno)))
    return answers


def op_listdir_mutating(side: Side, rel: str, seed: int) -> tuple:
    """Read a directory while creating and removing entries in it: every entry present
    throughout must be listed exactly once, and nothing that never existed. The changes do not
    depend on the order of the listing (which is the filesystem's own)."""
    path = side.p(rel)
    before = set(os.listdir(path))
    victims = sorted(n for n in before if n.startswith("p_"))[seed % 7 :: 7]
    changes = [(f"m_{seed % 1000}_{k}", victims[k] if k < len(victims) else None)
               for k in range(min(len(before) // 37, 8))]
    seen: list[str] = []
    pending = list(changes)

    def change() -> None:
        name, victim = pending.pop(0)
        with open(os.path.join(path, name), "wb"):
            pass
        if victim is not None:
            os.unlink(os.path.join(path, victim))

    with os.scandir(path) as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i % 37 == 5 and pending:
                change()
    while pending:  # the listing ended before every change was made
        change()
    created = {name for name, _ in changes}
    removed = {victim for _, victim in changes}
    duplicates = len(seen) != len(set(seen))
    missing = sorted(before - removed - set(seen))
    strange = sorted(set(seen) - before - created)
    return duplicates, missing, strange, sorted(os.listdir(path))


def op_statvfs_namemax(side: Side) -> int:
    return os.statvfs(side.root).f_namemax


OPS: dict[str, Callable[..., Any]] = {
    name[3:]: fn for name, fn in globals().items() if name.startswith("op_")
}
HANDLE_OPS = {"close", "pwrite", "write", "pread", "read", "lseek", "ftruncate", "fstat", "fsync",
              "futime", "fchmod", "fsetxattr", "fd_listdir", "copy_range", "mmap_read",
              "mmap_write", "bulk_write"}  # (their first argument is a handle: copy_range's two)


def apply(side: Side, op: Op) -> Outcome:
    """Run `op` on one side: ("ok", value), ("err", errno name), or ("skip",) when it needs a
    handle that side does not have (the open failed, or a replay left the open out)."""
    if op.name in HANDLE_OPS:
        hids = op.args[:2] if op.name == "copy_range" else op.args[:1]
        if any(h not in side.fds for h in hids):
            return ("skip",)
    try:
        return ("ok", OPS[op.name](side, *op.args))
    except OSError as exc:
        return ("err", errno.errorcode.get(exc.errno, exc.errno))


# --- whole-tree state -----------------------------------------------------------------------

def data_regions(fd: int, size: int, salt: str) -> list[tuple[int, int]]:
    """Ranges to compare of a file of `size` bytes: all of it when small, else where the oracle
    holds data (SEEK_DATA/SEEK_HOLE) plus a few probes of its holes and its last byte."""
    if size <= BIG_FILE:
        return [(0, size)]
    regions: list[tuple[int, int]] = []
    pos = 0
    saved = os.lseek(fd, 0, os.SEEK_CUR)  # (the file offset is the handle's: restored)
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        regions.append((start, end - start))
        pos = end
    os.lseek(fd, saved, os.SEEK_SET)
    rng = random.Random(os.fsencode(salt))
    regions += [(rng.randrange(size), 4096) for _ in range(4)]
    regions.append((size - 1, 1))
    return regions


def content(fd: int, regions: list[tuple[int, int]]) -> str:
    h = hashlib.sha256()
    for offset, length in regions:
        pos = offset
        while pos < offset + length:
            chunk = os.pread(fd, min(1 << 20, offset + length - pos), pos)
            if not chunk:
                break
            h.update(chunk)
            pos += len(chunk)
        h.update(b"|")
    return h.hexdigest()[:16]


def xattrs_of(path: str) -> list[tuple[str, str]]:
    names = sorted(n for n in os.listxattr(path, follow_symlinks=False)
                   if n.startswith(XATTR_NAMESPACES))
    return [(n, digest(os.getxattr(path, n, follow_symlinks=False))) for n in names]


@dataclass
class Tree:
    """A side's state: entry -> attributes, and open handle -> attributes."""

    entries: dict[str, tuple] = field(default_factory=dict)
    handles: dict[int, tuple] = field(default_factory=dict)


Plan = dict[str, list[tuple[int, int]]]  # regions to read per file (entry path or handle)


def snapshot(side: Side, plan: Plan, readable: set[int]) -> Tree:
    """Walk the side (the oracle first: it fills `plan`, which the mount's walk then follows)."""
    tree = Tree()
    inodes: dict[int, list[str]] = {}

    def walk(rel: str) -> None:
        with os.scandir(side.p(rel)) as it:
            found = sorted(it, key=lambda e: e.name)
        for entry in found:
            path = os.path.join(rel, entry.name)
            st = os.lstat(entry.path)
            kind = (entry.is_dir(follow_symlinks=False), entry.is_file(follow_symlinks=False),
                    entry.is_symlink(), entry.inode() == st.st_ino)
            info: list[Any] = [norm_stat(st), kind]
            if stat.S_ISLNK(st.st_mode):
                info.append(os.readlink(entry.path))
            if stat.S_ISREG(st.st_mode):
                fd = os.open(entry.path, os.O_RDONLY)
                try:
                    if path not in plan:
                        plan[path] = data_regions(fd, st.st_size, path)
                    regions = plan[path]
                    info.append(content(fd, regions))
                finally:
                    os.close(fd)
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                info.append(xattrs_of(entry.path))
            inodes.setdefault(st.st_ino, []).append(path)
            tree.entries[path] = tuple(info)
            if entry.is_dir(follow_symlinks=False):
                walk(path)

    walk("")
    for names in inodes.values():
        if len(names) > 1:
            for name in names:
                tree.entries[name] += (tuple(sorted(names)),)
    for hid, fd in sorted(side.fds.items()):
        try:
            st = os.fstat(fd)
        except OSError as exc:
            tree.handles[hid] = ("fstat", errno.errorcode.get(exc.errno, exc.errno))
            continue
        info: list[Any] = [norm_stat(st)]
        if hid in readable and stat.S_ISREG(st.st_mode):
            key = f"#{hid}"
            if key not in plan:
                plan[key] = data_regions(fd, st.st_size, key)
            info.append(content(fd, plan[key]))
        tree.handles[hid] = tuple(info)
    return tree


def tree_diff(a: Tree, b: Tree) -> list[str]:
    """Differences, oracle (a) against mount (b), one line each."""
    out = []
    for key in sorted(set(a.entries) | set(b.entries)):
        if a.entries.get(key) != b.entries.get(key):
            out.append(f"{key!r}: oracle {a.entries.get(key)} mount {b.entries.get(key)}")
    for hid in sorted(set(a.handles) | set(b.handles)):
        if a.handles.get(hid) != b.handles.get(hid):
            out.append(f"handle {hid}: oracle {a.handles.get(hid)} mount {b.handles.get(hid)}")
    return out


def _first_difference(a: tuple | None, b: tuple | None) -> tuple:
    """Where two attribute tuples differ first: (index, index inside norm_stat if there), with
    the kinds of value found (for a signature that ignores the values themselves)."""
    if a is None or b is None:
        return ("missing", a is None, b is None)
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            if i == 0:
                j = next(k for k, (u, v) in enumerate(zip(x, y, strict=True)) if u != v)
                return (0, j, type(x[j]).__name__, type(y[j]).__name__)
            return (i,)
    return ("length", len(a), len(b))


def tree_signature(a: Tree, b: Tree) -> tuple:
    for key in sorted(set(a.entries) | set(b.entries)):
        if a.entries.get(key) != b.entries.get(key):
            return ("entry", *_first_difference(a.entries.get(key), b.entries.get(key)))
    for hid in sorted(set(a.handles) | set(b.handles)):
        if a.handles.get(hid) != b.handles.get(hid):
            return ("handle", *_first_difference(a.handles.get(hid), b.handles.get(hid)))
    return ()


# --- the generator --------------------------------------------------------------------------

NAMES = ["a", "b", "c", "d", "e", "sub", "x y", "é", "\udcff", "L" * 255]
TOO_LONG = "M" * 256
XATTRS = ["user.a", "user.b", "user.long." + "n" * 100, "user.c", "trusted.t"]
OWNERS = [0, 0, 1000, 65534, -1]
SYMLINK_TARGETS = ["a", "b", "sub", "sub/a", "../a", "missing", ".", "x y", "L" * 255]
MODES = [0o644, 0o600, 0o755, 0o700, 0o444, 0o000, 0o1777, 0o2755, 0o4755, 0o640]
FOUR_GIB = 1 << 32

# Everything; the namespace gets as much as file contents.
WEIGHTS = {
    "open": 10, "close": 5, "pwrite": 14, "write": 5, "pread": 8, "read": 3, "lseek": 2,
    "ftruncate": 4, "truncate": 3, "fstat": 3, "stat": 3, "fsync": 1, "futime": 1, "utime": 4,
    "utimensat": 1.5, "unlink": 4, "rmdir": 2, "mkdir": 4, "rename": 6, "link": 3,
    "symlink": 3, "readlink": 1, "chmod": 2, "fchmod": 1, "chown": 1.5, "setxattr": 3,
    "fsetxattr": 1, "getxattr": 2, "listxattr": 1, "removexattr": 2, "mkfifo": 1, "mknod": 1,
    "listdir": 3, "fd_listdir": 1, "copy_range": 1, "mmap_read": 1.5, "mmap_write": 1.5,
    "bulk_write": 0.1, "parallel_pwrite": 0.3, "populate": 0.2, "depopulate": 0.3,
    "listdir_mutating": 0.5, "statvfs_namemax": 0.2,
}

# Mostly file contents: several descriptors on few files, reads and writes through them.
DATA_WEIGHTS = {
    "open": 10, "close": 4, "pwrite": 20, "write": 8, "pread": 12, "read": 4, "lseek": 1,
    "ftruncate": 6, "truncate": 3, "fstat": 3, "stat": 2, "fsync": 2, "futime": 2, "utime": 2,
    "unlink": 2, "rename": 2, "link": 2, "mkdir": 0.3, "rmdir": 0.3, "mmap_read": 4,
    "mmap_write": 4, "copy_range": 3, "fsetxattr": 1, "listdir": 1, "bulk_write": 0.3,
    "parallel_pwrite": 0.5,
}

CREATING = {"open", "mkdir", "symlink", "mkfifo", "mknod"}  # reach the filesystem with new names


class Generator:
    """Random operations that make sense in the oracle's current state (most name existing
    things; some are meant to fail)."""

    def __init__(self, seed: int, oracle: Side, data_budget: int = 40 << 20,
                 weights: dict[str, float] | None = None, avoid: frozenset[str] = frozenset()
                 ) -> None:
        self.rng = random.Random(seed)
        self.avoid = avoid  # differences not to run into (see DOCUMENTED)
        self.creating = False  # whether the operation being made creates a name
        self.oracle = oracle
        self.handles: dict[int, str] = {}  # open handle -> path it was opened by
        self.next_hid = 1
        self.budget = data_budget
        w = weights or WEIGHTS
        self.names = list(w)
        self.weights = [w[n] for n in self.names]

    # paths in the oracle's current tree

    def _paths(self) -> tuple[list[str], list[str]]:
        """(every path, directories among them including the root "")"""
        paths, dirs = [], [""]
        for top, dirnames, filenames in os.walk(self.oracle.root):
            rel = os.path.relpath(top, self.oracle.root)
            rel = "" if rel == "." else rel
            for n in dirnames + filenames:
                if not n.startswith(("p_", "m_")) or self.rng.random() < 0.02:
                    paths.append(os.path.join(rel, n))
            dirs += [os.path.join(rel, n) for n in dirnames]
        return paths, dirs

    def existing(self) -> str:
        paths, _ = self._paths()
        return self.rng.choice(paths) if paths and self.rng.random() < 0.9 else self.new()

    def directory(self) -> str:
        _, dirs = self._paths()
        return self.rng.choice(dirs)

    def new(self) -> str:
        r = self.rng.random()
        if r < 0.03:
            parent = self.existing_any() + ("/" if self.rng.random() < 0.5 else "")
        elif r < 0.05:
            parent = "nodir"
        else:
            parent = self.directory()
        name = TOO_LONG if self.rng.random() < 0.02 else self.rng.choice(NAMES)
        if name == TOO_LONG and "lookup_too_long" in self.avoid and not self.creating:
            name = NAMES[0]
        return os.path.join(parent, name) if parent else name

    def existing_any(self) -> str:
        paths, _ = self._paths()
        return self.rng.choice(paths) if paths else "a"

    def kind(self, rel: str) -> int:
        try:
            return stat.S_IFMT(os.stat(self.oracle.p(rel)).st_mode)
        except OSError:
            return 0

    def size_at(self, rel: str) -> int | None:
        try:
            return os.stat(self.oracle.p(rel)).st_size
        except OSError:
            return None

    def mode(self, directory: bool = False) -> int:
        """A permission mode, without the bits of a known difference being avoided: setgid on
        directories, setuid/setgid on files (dropped by the mount at a direct-I/O write, as
        docs/mount.md says)."""
        mode = self.rng.choice(MODES)
        if directory and "setgid_dir" in self.avoid:
            mode &= ~stat.S_ISGID
        if not directory and "suid_direct" in self.avoid:
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
        return mode

    def other_link(self, rel: str) -> str:
        """Another name of the inode named `rel`, if it has one (else `rel`)."""
        try:
            ino = os.lstat(self.oracle.p(rel)).st_ino
        except OSError:
            return rel
        paths, _ = self._paths()
        same = [p for p in paths if p != rel and os.lstat(self.oracle.p(p)).st_ino == ino]
        return self.rng.choice(same) if same else rel

    def handle(self) -> int:
        return self.rng.choice(list(self.handles)) if self.handles else 0

    def size_of(self, hid: int) -> int:
        fd = self.oracle.fds.get(hid)
        return os.fstat(fd).st_size if fd is not None else 0

    # numbers

    def offset(self, size: int) -> int:
        r = self.rng.random()
        if r < 0.35:
            return max(0, size + self.rng.randint(-5000, 5000))
        if r < 0.75:
            return self.rng.randrange(1 << 20)
        if r < 0.85:
            return self.rng.randrange(1 << 16)
        if r < 0.93:
            return FOUR_GIB + self.rng.randint(-9000, 9000)
        return self.rng.randrange(1 << 40)

    def length(self) -> int:
        r = self.rng.random()
        if self.budget <= 0 or r < 0.6:
            n = self.rng.randint(0, 5000)
        elif r < 0.9:
            n = self.rng.randint(0, 200_000)
        else:
            n = self.rng.randint(0, 2_500_000)
        self.budget -= n
        return n

    def new_size(self, size: int) -> int:
        r = self.rng.random()
        if r < 0.2:
            return 0
        if r < 0.5:
            return self.rng.randrange(size + 1)
        if r < 0.8:
            return size + self.rng.randint(0, 300_000)
        if r < 0.9:
            return FOUR_GIB + self.rng.randint(-9000, 9000)
        return self.rng.randrange(1 << 36)

    def times(self) -> tuple[int, int] | None:
        """(atime, mtime) in ns for utime, None for now: mostly in the past (2001-2004), also
        before 1970 and far in the future."""
        r = self.rng.random()
        if r < 0.1:
            return None
        if r < 0.2:
            return (0, -self.rng.randrange(2 * 10**18))
        if r < 0.3:
            return (0, 5 * 10**18 + self.rng.randrange(4 * 10**18))
        return (self.rng.randrange(10**18), 10**18 + self.rng.randrange(10**17))

    # operations

    def next(self) -> Op:
        while True:
            name = self.rng.choices(self.names, self.weights)[0]
            self.creating = name in CREATING
            args = getattr(self, "gen_" + name)()
            if args is not None:
                return Op(name, args)

    def gen_open(self) -> tuple | None:
        if len(self.handles) >= 10:
            return None
        rel = self.existing() if self.rng.random() < 0.8 else self.new()
        if self.kind(rel) in (stat.S_IFCHR, stat.S_IFBLK):
            return None
        flags = self.rng.choice([os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDWR])
        for extra, chance in ((os.O_CREAT, 0.5), (os.O_EXCL, 0.1), (os.O_TRUNC, 0.15),
                              (os.O_APPEND, 0.15), (os.O_DIRECTORY, 0.03),
                              (os.O_NOFOLLOW, 0.03)):
            if self.rng.random() < chance:
                flags |= extra
        if "lookup_too_long" in self.avoid and TOO_LONG in rel and not flags & os.O_CREAT:
            return None
        if "otrunc_empty" in self.avoid and flags & os.O_TRUNC and self.size_at(rel) == 0:
            flags &= ~os.O_TRUNC
        hid = self.next_hid
        self.next_hid += 1
        self.handles[hid] = rel
        return hid, rel, flags, self.mode()

    def gen_close(self) -> tuple | None:
        hid = self.handle()
        if hid:
            del self.handles[hid]
        return (hid,) if hid else None

    def gen_pwrite(self) -> tuple | None:
        hid = self.handle()
        return (hid, self.offset(self.size_of(hid)), self.length(),
                self.rng.randrange(1 << 30)) if hid else None

    def gen_write(self) -> tuple | None:
        hid = self.handle()
        return (hid, self.length(), self.rng.randrange(1 << 30)) if hid else None

    def gen_pread(self) -> tuple | None:
        hid = self.handle()
        return (hid, self.offset(self.size_of(hid)),
                self.rng.choice([1, 100, 4096, 70_000, 1 << 20])) if hid else None

    def gen_read(self) -> tuple | None:
        hid = self.handle()
        return (hid, self.rng.choice([1, 4096, 100_000])) if hid else None

    def gen_lseek(self) -> tuple | None:
        hid = self.handle()
        if hid and stat.S_ISDIR(os.fstat(self.oracle.fds[hid]).st_mode):
            return None  # seeking in directories is the filesystem's own business
        whence = self.rng.choice([os.SEEK_SET, os.SEEK_CUR, os.SEEK_END])
        return (hid, self.rng.randint(-100, 100_000), whence) if hid else None

    def gen_ftruncate(self) -> tuple | None:
        hid = self.handle()
        return (hid, self.new_size(self.size_of(hid))) if hid else None

    def gen_truncate(self) -> tuple:
        rel = self.existing()
        try:
            size = os.stat(self.oracle.p(rel)).st_size
        except OSError:
            size = 0
        return rel, self.new_size(size)

    def gen_mmap_read(self) -> tuple | None:
        hid = self.handle()
        if not hid:
            return None
        offset = self.rng.randrange(self.size_of(hid) + 10)
        return hid, offset, self.rng.choice([1, 5000, 300_000])

    def gen_mmap_write(self) -> tuple | None:
        hid = self.handle()
        if not hid:
            return None
        length = self.rng.choice([1, 5000, 300_000])
        self.budget -= length
        offset = self.rng.randrange(self.size_of(hid) + 10)
        return hid, offset, length, self.rng.randrange(1 << 30)

    def gen_bulk_write(self) -> tuple | None:
        hid = self.handle()
        if not hid or self.budget < 12 << 20:
            return None
        mib = self.rng.randint(9, 12)
        self.budget -= mib << 20
        return hid, self.offset(self.size_of(hid)), mib, self.rng.randrange(1 << 30)

    def gen_parallel_pwrite(self) -> tuple | None:
        rel = self.existing()
        if self.kind(rel) not in (0, stat.S_IFREG):  # (a FIFO would block)
            return None
        return rel, self.rng.randint(2, 4), self.rng.randrange(1 << 30)

    def gen_fstat(self) -> tuple | None:
        hid = self.handle()
        return (hid,) if hid else None

    def gen_stat(self) -> tuple | None:
        rel = self.existing() if self.rng.random() < 0.95 else TOO_LONG
        if rel == TOO_LONG and "lookup_too_long" in self.avoid:
            return None
        return rel, self.rng.random() < 0.5

    def gen_fsync(self) -> tuple | None:
        hid = self.handle()
        return (hid, self.rng.random() < 0.5) if hid else None

    def gen_futime(self) -> tuple | None:
        hid = self.handle()
        return (hid, self.times()) if hid else None

    def gen_utime(self) -> tuple:
        return self.existing(), self.times(), self.rng.random() < 0.8

    def gen_utimensat(self) -> tuple:
        """Times with UTIME_NOW / UTIME_OMIT (one of them may stay as it was)."""
        special = [UTIME_NOW, UTIME_OMIT, 10**18 + self.rng.randrange(10**17)]
        return (self.existing(), self.rng.choice(special), self.rng.choice(special),
                self.rng.random() < 0.8)

    def gen_chown(self) -> tuple:
        return (self.existing(), self.rng.choice(OWNERS), self.rng.choice(OWNERS),
                self.rng.random() < 0.7)

    def gen_unlink(self) -> tuple:
        return (self.existing(),)

    def gen_rmdir(self) -> tuple | None:
        rel = self.directory() if self.rng.random() < 0.7 else self.existing()
        return (rel,) if rel else None  # (not the root of the side)

    def gen_mkdir(self) -> tuple:
        return self.new(), self.rng.choice([self.mode(directory=True), 0o755])

    def gen_rename(self) -> tuple | None:
        old = self.existing()
        r = self.rng.random()
        if r < 0.1:
            new = self.other_link(old)  # two names of one file: nothing happens
        elif r < 0.4:
            new = self.existing()
        elif r < 0.5 and self.kind(old) == stat.S_IFDIR:
            new = os.path.join(old, self.rng.choice(NAMES))  # into itself
        else:
            new = self.new()
        return old, new, self.rng.choice([0, 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE])

    def gen_link(self) -> tuple:
        return self.existing(), self.new(), self.rng.random() < 0.5

    def gen_symlink(self) -> tuple:
        return self.rng.choice(SYMLINK_TARGETS), self.new()

    def gen_readlink(self) -> tuple:
        return (self.existing(),)

    def gen_chmod(self) -> tuple:
        rel = self.existing()
        return rel, self.mode(self.kind(rel) == stat.S_IFDIR)

    def gen_fchmod(self) -> tuple | None:
        hid = self.handle()
        if not hid:
            return None
        return hid, self.mode(stat.S_ISDIR(os.fstat(self.oracle.fds[hid]).st_mode))

    def xattr_value(self) -> tuple[int, int]:
        return self.rng.choice([0, 1, 17, 200]), self.rng.randrange(1 << 30)

    def gen_setxattr(self) -> tuple:
        flags = self.rng.choice([0, 0, os.XATTR_CREATE, os.XATTR_REPLACE])
        return (self.existing(), self.rng.choice(XATTRS), *self.xattr_value(), flags,
                self.rng.random() < 0.7)

    def gen_fsetxattr(self) -> tuple | None:
        hid = self.handle()
        return (hid, self.rng.choice(XATTRS), *self.xattr_value()) if hid else None

    def gen_getxattr(self) -> tuple:
        return self.existing(), self.rng.choice(XATTRS), self.rng.random() < 0.7

    def gen_listxattr(self) -> tuple:
        return self.existing(), self.rng.random() < 0.7

    def gen_removexattr(self) -> tuple:
        return self.existing(), self.rng.choice(XATTRS), self.rng.random() < 0.7

    def gen_mkfifo(self) -> tuple:
        return self.new(), self.mode()

    def gen_mknod(self) -> tuple:
        kind = self.rng.choice([stat.S_IFCHR, stat.S_IFBLK, stat.S_IFREG, stat.S_IFSOCK])
        device = os.makedev(self.rng.randint(1, 300), self.rng.randint(0, 9))
        return self.new(), kind | 0o640, device

    def gen_listdir(self) -> tuple:
        return (self.directory() if self.rng.random() < 0.9 else self.existing(),)

    def gen_fd_listdir(self) -> tuple | None:
        hid = self.handle()
        return (hid,) if hid else None

    def gen_copy_range(self) -> tuple | None:
        if not self.handles:
            return None
        src, dst = self.handle(), self.handle()
        length = self.rng.randint(0, 100_000)
        self.budget -= length
        return src, dst, self.rng.randrange(200_000), self.offset(self.size_of(dst)), length

    def gen_populate(self) -> tuple:
        return self.directory(), self.rng.choice([50, 300])

    def gen_depopulate(self) -> tuple:
        return (self.directory(),)

    def gen_listdir_mutating(self) -> tuple:
        return self.directory(), self.rng.randrange(1 << 30)

    def gen_statvfs_namemax(self) -> tuple:
        return ()


# --- running both sides ---------------------------------------------------------------------

class Mismatch(AssertionError):
    """A difference; `signature` says what kind (to tell one bug from another)."""

    def __init__(self, message: str, signature: tuple) -> None:
        super().__init__(message)
        self.signature = signature


@dataclass
class Runner:
    """Applies operations to both sides and compares."""

    mount: Side
    oracle: Side
    log: list[Op] = field(default_factory=list)
    readable: set[int] = field(default_factory=set)

    def step(self, op: Op) -> None:
        self.log.append(op)
        expected = apply(self.oracle, op)
        got = apply(self.mount, op)
        if op.name == "open" and expected[0] == "ok" and op.args[2] & os.O_ACCMODE != os.O_WRONLY:
            self.readable.add(op.args[0])
        if expected != got:
            raise Mismatch(f"op #{len(self.log) - 1} {op}: oracle {expected} mount {got}",
                           ("op", op.name, expected[:2] if expected[0] == "err" else expected[0],
                            got[:2] if got[0] == "err" else got[0]))

    def compare_trees(self) -> None:
        self.log.append(Op("@compare", ()))
        plan: Plan = {}
        expected = snapshot(self.oracle, plan, self.readable)
        got = snapshot(self.mount, plan, self.readable)
        diff = tree_diff(expected, got)
        if diff:
            raise Mismatch(f"after op #{len(self.log) - 1}: " + "\n".join(diff[:20]),
                           ("tree", tree_signature(expected, got)))

    def close_all(self) -> None:
        self.log.append(Op("@close_all", ()))
        self.oracle.close_all()
        self.mount.close_all()
        self.readable.clear()

    def crash(self, kill: Callable[[], None]) -> None:
        """fsync a directory (which makes everything durable), then `kill` the mount (kill -9,
        fsck, mount again) with the descriptors still open: nothing may be lost."""
        self.log.append(Op("@crash", ()))
        fd = os.open(self.mount.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        kill()
        self.oracle.close_all()
        self.mount.close_all(dead=True)
        self.readable.clear()


def drop_caches() -> None:
    """Make the kernel forget cached names and inodes (not those in use)."""
    Path("/proc/sys/vm/drop_caches").write_text("2")


def run_sequence(runner: Runner, gen: Generator, ops: int, *, check_every: int,
                 remount_every: int, remount: Callable[[], None], deadline: float,
                 drop_every: int = 0, crash_every: int = 0,
                 crash: Callable[[], None] | None = None) -> int:
    """Generate and run up to `ops` operations (until `deadline`); the number run."""
    for i in range(1, ops + 1):
        runner.step(gen.next())
        gen.handles = {h: v for h, v in gen.handles.items() if h in runner.oracle.fds}
        if drop_every and i % drop_every == 0:
            runner.log.append(Op("@drop_caches", ()))
            drop_caches()
        if i % check_every == 0:
            runner.compare_trees()
        if i % remount_every == 0:
            runner.close_all()
            gen.handles.clear()
            runner.log.append(Op("@remount", ()))
            remount()
            runner.compare_trees()
        if crash is not None and crash_every and i % crash_every == 0:
            runner.crash(crash)
            gen.handles.clear()
            runner.compare_trees()
        if time.monotonic() > deadline:
            break
    runner.compare_trees()
    return i


# --- the tests ------------------------------------------------------------------------------

# Differences the random test steers clear of. Documented: the mount drops setuid/setgid at a
# write through a direct-I/O handle also for root (docs/mount.md). A bug found gets a minimal
# case in MINIMAL_CASES below; while it is open, a name here can keep the random runs off it.
DOCUMENTED = frozenset({"suid_direct"})

RANDOM_RUNS = [(1, "mixed"), (2, "data"), (3, "mixed"), (4, "data")]  # (seed, profile)
OPS_PER_RUN = 2000
SECONDS_PER_RUN = 10.0


def _sides(mount, tmp_path: Path) -> Runner:
    """A fresh directory on the mounted cartridge and one on the local filesystem."""
    base = mount.mnt / "t"
    oracle = tmp_path / "oracle"
    base.mkdir()
    oracle.mkdir()
    (oracle / "probe").mkdir()
    if os.stat(oracle / "probe").st_nlink != 2 or os.geteuid() != 0:
        pytest.skip("needs root and a local filesystem with classic directory link counts")
    (oracle / "probe").rmdir()
    return Runner(Side(str(base)), Side(str(oracle)))


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "profile"), RANDOM_RUNS)
def test_random_operations_agree(cartridge_mount, tmp_path: Path, seed: int, profile: str) -> None:
    """Random operations give the same answers and trees on the mount as on a local
    filesystem, also after a remount and after a kill -9 that follows an fsync."""
    cartridge_mount.start()
    runner = _sides(cartridge_mount, tmp_path)
    weights = DATA_WEIGHTS if profile == "data" else WEIGHTS
    gen = Generator(seed, runner.oracle, data_budget=24 << 20, weights=weights,
                    avoid=DOCUMENTED)

    def remount() -> None:
        cartridge_mount.stop()  # unmount, wait for exit status 0, cartridge fsck
        cartridge_mount.start()

    def crash() -> None:
        cartridge_mount.kill()
        cartridge_mount.fsck()
        cartridge_mount.start()

    try:
        run_sequence(runner, gen, OPS_PER_RUN, check_every=50, remount_every=700,
                     remount=remount, crash_every=1000, crash=crash,
                     deadline=time.monotonic() + SECONDS_PER_RUN)
    except Mismatch as exc:
        recent = "\n".join(f"  {op}" for op in runner.log[-15:])
        raise Mismatch(f"seed {seed}: {exc}\nlast operations:\n{recent}",
                       exc.signature) from None
    finally:
        runner.close_all()


EXPLICIT = (10**18, 10**18 + 123)  # (atime, mtime) set with utime
MINIMAL_CASES = {  # sequences the random test found
    # A lookup of a name longer than 255 bytes answers ENAMETOOLONG (it used to be ENOENT).
    "lookup_too_long": [
        Op("stat", (TOO_LONG, True)),
        Op("unlink", (TOO_LONG,)),
    ],
    # open(O_TRUNC) of an existing empty file sets its mtime and ctime (they used to stay).
    "otrunc_empty": [
        Op("open", (1, "f", os.O_CREAT | os.O_WRONLY, 0o644)),
        Op("close", (1,)),
        Op("utime", ("f", EXPLICIT, True)),
        Op("open", (2, "f", os.O_WRONLY | os.O_TRUNC, 0)),
        Op("fstat", (2,)),
    ],
    # A setgid directory passes its group, and to subdirectories its setgid bit, on.
    "setgid_dir": [
        Op("mkdir", ("d", 0o775)),
        Op("chown", ("d", -1, 1000, True)),
        Op("chmod", ("d", 0o2775)),
        Op("mkdir", ("d/sub", 0o755)),
        Op("stat", ("d/sub", True)),
        Op("open", (1, "d/f", os.O_CREAT | os.O_WRONLY, 0o644)),
        Op("fstat", (1,)),
    ],
    # A FIFO (or device, socket) open when its last name goes stays usable through its open
    # descriptor (FUSE opens of those never reach the filesystem: the kernel's lookup count
    # keeps it).
    "unlinked_special": [
        Op("mkfifo", ("p", 0o644)),
        Op("open", (1, "p", os.O_RDWR, 0)),
        Op("unlink", ("p",)),
        Op("fstat", (1,)),
        Op("fchmod", (1, 0o600)),
    ],
    # The same for a removed directory that is still open (or some process's cwd).
    "unlinked_special_dir": [
        Op("mkdir", ("d", 0o755)),
        Op("open", (1, "d", os.O_RDONLY, 0)),
        Op("rmdir", ("d",)),
        Op("fstat", (1,)),
        Op("fd_listdir", (1,)),
    ],
}


@pytest.mark.parametrize("case", sorted(MINIMAL_CASES))
def test_minimal_case(cartridge_mount, tmp_path: Path, case: str) -> None:
    """Minimal sequences (found by the random test) that once differed from a local filesystem."""
    cartridge_mount.start()
    runner = _sides(cartridge_mount, tmp_path)
    try:
        for op in MINIMAL_CASES[case]:
            runner.step(op)
        runner.compare_trees()
    finally:
        runner.close_all()
