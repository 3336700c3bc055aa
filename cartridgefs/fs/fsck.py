"""Filesystem-level fsck checks: the namespace and link counts, over the engine's `fs` tree."""

from __future__ import annotations

import stat
from collections import Counter
from dataclasses import dataclass, field

from ..engine.btree import Ref
from ..engine.fsck import Fsck
from ..engine.txn import State
from ..errors import CartridgeError
from .items import (
    ROOT_INO,
    T_DIRENT,
    T_DIRSEQ,
    T_EXTENT,
    T_INODE,
    T_SYMLINK,
    DirEntry,
    Inode,
    decode_extent_extra,
    next_prefix,
)
from .multipart import check_uploads

# `meta` keys ending in an inode number that keeps a nameless inode (mpu.held: multipart parts)
HELD_PREFIXES = (b"orphan", b"mpu.held")


@dataclass
class _Walk:
    inodes: dict[int, Inode] = field(default_factory=dict)
    names: Counter[int] = field(default_factory=Counter)  # inode -> directory entries naming it
    subdirs: Counter[int] = field(default_factory=Counter)  # directory -> subdirectories
    parent_of: dict[int, int] = field(default_factory=dict)  # directory -> the directory naming it
    problems: list[str] = field(default_factory=list)


def _walk(fsck: Fsck, state: State) -> _Walk:
    """One pass over the `fs` tree, shared by the checks below."""
    if "fs-walk" not in fsck.memo:
        fsck.memo["fs-walk"] = _walk_tree(fsck, state)
    return fsck.memo["fs-walk"]


def _walk_tree(fsck: Fsck, state: State) -> _Walk:
    engine = fsck.engine
    w = _Walk()
    seqs: dict[tuple[int, int], bytes] = {}
    entries: dict[tuple[int, bytes], DirEntry] = {}
    extent_end: dict[int, int] = {}
    symlinks: set[int] = set()
    for key, val in engine.items(state, "fs"):
        if len(key) < 9:
            w.problems.append(f"malformed key {key!r} in the filesystem tree")
            continue
        ino, kind, rest = int.from_bytes(key[:8], "big"), key[8], key[9:]
        if kind == T_INODE:
            w.inodes[ino] = Inode.decode(ino, engine.value(val))
        elif kind == T_DIRENT:
            entry = DirEntry.decode(val)
            entries[(ino, rest)] = entry
            w.names[entry.ino] += 1
            if stat.S_ISDIR(entry.dtype):
                w.subdirs[ino] += 1
                w.parent_of[entry.ino] = ino
        elif kind == T_DIRSEQ:
            seqs[(ino, int.from_bytes(rest, "big"))] = val
        elif kind == T_EXTENT and isinstance(val, Ref):
            offset = int.from_bytes(rest, "big")
            _skip, length = decode_extent_extra(val.extra)
            if offset < extent_end.get(ino, 0):
                w.problems.append(f"inode {ino}: overlapping extents at offset {offset}")
            extent_end[ino] = offset + length
        elif kind == T_SYMLINK:
            symlinks.add(ino)
    for (parent, name), entry in entries.items():
        if seqs.get((parent, entry.seq)) != name:
            w.problems.append(f"directory {parent}: entry {name!r} has no matching readdir cursor")
        child = w.inodes.get(entry.ino)
        if child is None:
            w.problems.append(f"directory {parent}: entry {name!r} names missing inode {entry.ino}")
        elif stat.S_IFMT(child.mode) != entry.dtype:
            w.problems.append(f"directory {parent}: entry {name!r} has the wrong file type")
    for (parent, seq), name in seqs.items():
        entry = entries.get((parent, name))
        if entry is None or entry.seq != seq:
            w.problems.append(f"directory {parent}: readdir cursor {seq} names no entry")
    for ino, end in extent_end.items():
        inode = w.inodes.get(ino)
        if inode is None:
            w.problems.append(f"extents of missing inode {ino}")
        elif end > inode.size:
            w.problems.append(f"inode {ino}: extents reach past the file size")
    for ino, inode in w.inodes.items():
        if inode.is_link and ino not in symlinks:
            w.problems.append(f"symlink {ino} has no target")
    return w


def _held(fsck: Fsck, state: State) -> set[int]:
    held = set()
    for prefix in HELD_PREFIXES:
        for key, _ in fsck.engine.items(state, "meta", prefix, next_prefix(prefix)):
            held.add(int.from_bytes(key[len(prefix):len(prefix) + 8], "big"))
    return held


def check_namespace(fsck: Fsck) -> list[str]:
    """Directory entries, readdir cursors, extents and symlinks agree with the inodes."""
    try:
        return _walk(fsck, fsck.engine.state).problems
    except CartridgeError as exc:
        return [f"cannot read the filesystem tree: {exc}"]


def check_link_counts(fsck: Fsck) -> list[str]:
    """Every inode's link count matches the names it has; nameless inodes are accounted for."""
    state = fsck.engine.state
    try:
        w = _walk(fsck, state)
        held = _held(fsck, state)
    except CartridgeError as exc:
        return [f"cannot read the filesystem tree: {exc}"]
    problems: list[str] = []
    if ROOT_INO not in w.inodes:
        return ["the root directory is missing"]
    for ino, inode in w.inodes.items():
        if inode.is_dir and w.names[ino] == 0 and ino in held:
            expected = 0  # removed while still in use (open, a working directory): an orphan
        elif inode.is_dir:
            expected = 2 + w.subdirs[ino]
            if ino != ROOT_INO and w.names[ino] != 1:
                problems.append(f"directory {ino} has {w.names[ino]} names (must have 1)")
            if ino != ROOT_INO and w.parent_of.get(ino) != inode.parent:
                problems.append(f"directory {ino}: parent recorded as {inode.parent}, named in {w.parent_of.get(ino)}")
        else:
            expected = w.names[ino]
        if inode.nlink != expected:
            problems.append(f"inode {ino}: link count {inode.nlink}, expected {expected}")
        if ino != ROOT_INO and w.names[ino] == 0 and ino not in held:
            problems.append(f"inode {ino} has no name and nothing holds it (lost)")
    return problems


FS_CHECKS = [("namespace", check_namespace), ("link counts", check_link_counts),
             ("multipart uploads", check_uploads)]
