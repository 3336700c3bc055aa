"""Keys and values of the filesystem items in the engine's `fs` tree (layout in docs/filesystem.md)."""

from __future__ import annotations

import stat
import struct
import threading
from typing import NamedTuple

from ..errors import InvalidArgument, NameTooLong

ROOT_INO = 1
NAME_MAX = 255

T_INODE = 0x01
T_DIRENT = 0x02
T_DIRSEQ = 0x03
T_XATTR = 0x04
T_EXTENT = 0x05
T_SYMLINK = 0x06

_INO = struct.Struct(">Q")
_INODE = struct.Struct("<IIIIQqqqqQIQQQ16sQ")
_DIRENT = struct.Struct("<QBQ")
_EXTENT = struct.Struct("<II")  # skip into the extent, length covered


_MEMO_LOCK = threading.Lock()  # see Decoded

_NO_ETAG = 0xFFFFFFFFFFFFFFFF  # etag_version as stored when there is none (-1 in an Inode)
_ETAG_VERSION = 13  # position of etag_version in the stored fields (after ino: 14)


class Inode(NamedTuple):
    """An inode as stored; `blocks` for stat is derived from size.

    A named tuple rather than a dataclass: every FUSE request decodes one or more inodes, and
    building a tuple costs a third of a frozen dataclass's `__init__` (so does `changed`).
    """

    ino: int
    mode: int
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    btime_ns: int = 0
    rdev: int = 0
    flags: int = 0
    data_version: int = 0
    next_dir_seq: int = 3  # readdir offsets 1 and 2 are '.' and '..'
    etag_version: int = -1
    etag_md5: bytes = bytes(16)
    parent: int = 0  # directories only: the directory holding it

    def encode(self) -> bytes:
        return _INODE.pack(
            self.mode, self.uid, self.gid, self.nlink, self.size, self.atime_ns, self.mtime_ns,
            self.ctime_ns, self.btime_ns, self.rdev, self.flags, self.data_version,
            self.next_dir_seq, self.etag_version & _NO_ETAG, self.etag_md5, self.parent,
        )

    @classmethod
    def decode(cls, ino: int, raw: bytes) -> Inode:
        stored = _INODE.unpack(raw)
        if stored[_ETAG_VERSION] == _NO_ETAG:
            stored = (*stored[:_ETAG_VERSION], -1, *stored[_ETAG_VERSION + 1:])
        return tuple.__new__(cls, (ino, *stored))  # skips the keyword handling of __new__

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def etag(self) -> str | None:
        """The content MD5 in hex, when it is known for the current content."""
        return self.etag_md5.hex() if self.etag_version == self.data_version else None

    def changed(self, **fields) -> Inode:
        return self._replace(**fields)


class DirEntry(NamedTuple):
    ino: int
    dtype: int  # the S_IFMT bits of the child
    seq: int

    def encode(self) -> bytes:
        return _DIRENT.pack(self.ino, self.dtype >> 12, self.seq)

    @classmethod
    def decode(cls, raw: bytes) -> DirEntry:
        ino, dtype, seq = _DIRENT.unpack(raw)
        return tuple.__new__(cls, (ino, dtype << 12, seq))


def check_name_length(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name of {len(name)} bytes exceeds {NAME_MAX}")


def check_name(name: bytes) -> bytes:
    if not name or name in (b".", b".."):
        raise InvalidArgument(f"invalid name {name!r}")
    check_name_length(name)
    if b"/" in name or b"\0" in name:
        raise InvalidArgument(f"invalid name {name!r}")
    return name


def inode_key(ino: int) -> bytes:
    return _INO.pack(ino) + bytes((T_INODE,))


def dirent_key(parent: int, name: bytes) -> bytes:
    return _INO.pack(parent) + bytes((T_DIRENT,)) + name


def dirent_prefix(parent: int) -> bytes:
    return _INO.pack(parent) + bytes((T_DIRENT,))


def dirseq_key(parent: int, seq: int) -> bytes:
    return _INO.pack(parent) + bytes((T_DIRSEQ,)) + _INO.pack(seq)


def xattr_key(ino: int, name: bytes) -> bytes:
    return _INO.pack(ino) + bytes((T_XATTR,)) + name


def xattr_prefix(ino: int) -> bytes:
    return _INO.pack(ino) + bytes((T_XATTR,))


def extent_key(ino: int, offset: int) -> bytes:
    return _INO.pack(ino) + bytes((T_EXTENT,)) + _INO.pack(offset)


def extent_offset(key: bytes) -> int:
    return _INO.unpack_from(key, 9)[0]


def symlink_key(ino: int) -> bytes:
    return _INO.pack(ino) + bytes((T_SYMLINK,))


def inode_prefix(ino: int) -> bytes:
    return _INO.pack(ino)


def next_prefix(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix`."""
    return (int.from_bytes(prefix, "big") + 1).to_bytes(len(prefix), "big")


def encode_extent_extra(skip: int, length: int) -> bytes:
    return _EXTENT.pack(skip, length)


def decode_extent_extra(extra: bytes) -> tuple[int, int]:
    return _EXTENT.unpack(extra)


def orphan_key(ino: int) -> bytes:
    return b"orphan" + _INO.pack(ino)


class Decoded:
    """Inodes and directory entries decoded from one version of the `fs` tree, for reads that
    come back to them (a stat after a create, a listing after a stat of every file, `ls -l`
    after `find`).

    A version is known by its root page object: published pages never change (a transaction
    copies the pages it changes, so every change of the tree makes a new root; a commit keeps
    the root object, it only swaps in-memory children for their stored pointers). Misses are
    kept too (None); at most `limit` items of each kind are kept from reads.

    The memo follows the tree from one version to the next (`follow`): the items a transaction
    changed get their new values, still encoded (decoded when first read: most never are), and
    the others stay. Every access names the version it reads and takes one lock, so a reader of
    another version neither sees nor keeps items (it reads the tree instead).
    """

    __slots__ = ("root", "inodes", "entries", "limit")

    def __init__(self, root: object = None, limit: int = 8192) -> None:
        self.root = root
        self.inodes: dict[int, Inode | bytes | None] = {}
        self.entries: dict[tuple[int, bytes], DirEntry | bytes | None] = {}
        self.limit = limit

    def inode(self, root: object, ino: int) -> Inode | None | Decoded:
        """The inode kept for version `root` (None: kept as missing), or this memo when none is."""
        with _MEMO_LOCK:
            return self._inode(ino) if self.root is root else self

    def entry(self, root: object, parent: int, name: bytes) -> DirEntry | None | Decoded:
        """The entry kept for version `root` (None: kept as missing), or this memo when none is."""
        with _MEMO_LOCK:
            return self._entry(parent, name) if self.root is root else self

    def found(self, root: object, parent: int, name: bytes) -> tuple[DirEntry | None | Decoded, Inode | None]:
        """The entry as `entry` gives it and, read with it, the inode it names (for an entry
        kept as missing, the inode of `parent`), None when that inode is not kept."""
        with _MEMO_LOCK:
            if self.root is not root:
                return self, None
            entry = self._entry(parent, name)
            if entry is self:
                return self, None
            inode = self._inode(parent if entry is None else entry.ino)
            return entry, None if inode is self else inode

    def _inode(self, ino: int) -> Inode | None | Decoded:
        inode = self.inodes.get(ino, self)
        if type(inode) is bytes:
            inode = self.inodes[ino] = Inode.decode(ino, inode)
        return inode

    def _entry(self, parent: int, name: bytes) -> DirEntry | None | Decoded:
        entry = self.entries.get((parent, name), self)
        if type(entry) is bytes:
            entry = self.entries[parent, name] = DirEntry.decode(entry)
        return entry

    def keep_inode(self, root: object, ino: int, inode: Inode | None) -> Inode | None:
        with _MEMO_LOCK:
            if self.root is root and len(self.inodes) < self.limit:
                self.inodes[ino] = inode
        return inode

    def keep_entry(self, root: object, parent: int, name: bytes, entry: DirEntry | None) -> DirEntry | None:
        with _MEMO_LOCK:
            if self.root is root and len(self.entries) < self.limit:
                self.entries[parent, name] = entry
        return entry

    def start(self, root: object) -> None:
        """Keep items of version `root` from now on, none yet."""
        with _MEMO_LOCK:
            self.root, self.inodes, self.entries = root, {}, {}

    def follow(self, before: object, after: object, changes: dict[bytes, object]) -> None:
        """Go from version `before` (if this memo is of it) to version `after`, which `changes`
        (key: new value, None when deleted) made of it. A full memo starts over with just the
        changed items."""
        inodes: dict[int, bytes | None] = {}
        entries: dict[tuple[int, bytes], bytes | None] = {}
        for key, value in changes.items():
            kind = key[8] if len(key) > 8 else None
            if kind != T_INODE and kind != T_DIRENT:
                continue
            if value is not None and type(value) is not bytes:  # (not small: never today)
                self.start(after)
                return
            if kind == T_INODE:
                inodes[_INO.unpack_from(key)[0]] = value
            else:
                entries[_INO.unpack_from(key)[0], key[9:]] = value
        with _MEMO_LOCK:
            if self.root is not before:
                return
            if len(self.inodes) >= self.limit or len(self.entries) >= self.limit:
                self.inodes, self.entries = {}, {}
            self.inodes.update(inodes)
            self.entries.update(entries)
            self.root = after
