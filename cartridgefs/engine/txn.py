"""Transactions: a private copy of the working state's roots, changed and then published or dropped.

A transaction changes trees by path copying (see `btree`), keeps reference counts (Rodeh's lazy
scheme: a block absent from the refcount tree has one reference) and records which blocks it
linked and freed. The engine applies those records when it publishes the transaction; an aborted
transaction is simply forgotten, so a failed operation leaves the cartridge as it was.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import btree
from .btree import MAX_INLINE, Child, Node, Ref, Value
from .seal import KIND_BLOB, KIND_EXTENT, KIND_NODE, Ptr
from .superblock import TREES

if TYPE_CHECKING:
    from .store import Engine

SHARED_TREES = frozenset({"fs"})  # trees whose pages snapshots can share
_RC = struct.Struct("<I")
_txn_ids = itertools.count(1)


@dataclass(frozen=True)
class State:
    """One published version of everything a commit stores."""

    gen: int  # the generation this state will be committed as
    roots: dict[str, Child | None]
    next_inode: int
    data_raw: int  # decoded bytes of all file-data extents
    data_stored: int  # their stored (compressed) bytes
    flags: int = 0
    dirty: bool = False  # changed since the last commit
    ops: int = 0  # tree operations since the last commit


def block_key(block: int) -> bytes:
    return block.to_bytes(8, "big")


@dataclass
class Txn:
    """The hooks the trees call, plus the tree operations offered to the layers above."""

    engine: Engine
    state: State
    txn_id: int = field(default_factory=lambda: next(_txn_ids))
    linked: dict[int, Ptr] = field(default_factory=dict)
    freed: list[Ptr] = field(default_factory=list)
    spilled: list[Ptr] = field(default_factory=list)
    ops: int = 0

    def __post_init__(self) -> None:
        self.roots: dict[str, Child | None] = {name: self.state.roots.get(name) for name in TREES}
        self.next_inode = self.state.next_inode
        self.data_raw = self.state.data_raw
        self.data_stored = self.state.data_stored
        self.flags = self.state.flags
        self._tree = "fs"
        # What the layers above changed, per tree: the last value put under each key (None:
        # deleted), and the trees whose root was replaced whole. Read by `Engine.on_publish`
        # hooks (the filesystem's decoded-items memo follows the changes instead of starting over).
        self.changes: dict[str, dict[bytes, Value | None]] = {}
        self.replaced: set[str] = set()

    # --- what the layers above use ---

    def get(self, tree: str, key: bytes) -> bytes | Ref | None:
        return self.engine.value(btree.get(self.roots[tree], key, self.load))

    def items(
        self, tree: str, start: bytes = b"", end: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, Value]]:
        """Raw items (spilled values come back as `Ref`s of kind blob; see `Engine.value`)."""
        return btree.items(self.roots[tree], self.load, start, end, reverse)

    def put(self, tree: str, key: bytes, value: bytes | Ref) -> None:
        if isinstance(value, bytes | bytearray | memoryview) and len(value) > MAX_INLINE:
            ptr = self.engine.write_extent(bytes(value), kind=KIND_BLOB)
            self.spilled.append(ptr)
            value = Ref(ptr)
        self._in(tree, lambda: self._set_root(tree, *btree.put(self, self.roots[tree], key, value)))
        self._changed(tree)[key] = value

    def delete(self, tree: str, key: bytes) -> bool:
        removed = []
        self._in(
            tree,
            lambda: removed.append(self._set_root(tree, *btree.delete(self, self.roots[tree], key))),
        )
        self._changed(tree)[key] = None
        return removed[0] is not None

    def alloc_inode(self) -> int:
        ino = self.next_inode
        self.next_inode += 1
        return ino

    def set_root(self, tree: str, root: Child | None) -> None:
        """Point `tree` at another stored root (snapshot restore); counts are the caller's job."""
        self.roots[tree] = root
        self.replaced.add(tree)
        self.ops += 1

    # --- hooks called by the trees ---

    def load(self, ptr: Ptr) -> Node:
        return self.engine.load_node(ptr)

    def released(self, node: Node) -> None:
        assert node.ptr is not None
        if self._tree in SHARED_TREES:
            count = self.refcount(node.ptr.block)
            if count > 1:
                # Shadowing a shared page: both copies now point at its children (Rodeh).
                for child in node.children_ptrs():
                    self.incref(child)
                self._set_count(node.ptr.block, count - 1)
                return
        self.freed.append(node.ptr)

    def ref_added(self, ptr: Ptr) -> None:
        if ptr.block not in self.linked and self.engine.alloc.is_reserved(ptr.block):
            self.linked[ptr.block] = ptr
            if ptr.kind == KIND_EXTENT:
                self.data_raw += ptr.raw_len
                self.data_stored += ptr.stored_len
        else:
            self.incref(ptr)

    def ref_removed(self, ptr: Ptr) -> None:
        self.decref(ptr)

    # --- reference counts ---

    def refcount(self, block: int) -> int:
        raw = btree.get(self.roots["rc"], block_key(block), self.load)
        return 1 if raw is None else _RC.unpack(raw)[0]

    def incref(self, ptr: Ptr) -> None:
        self._set_count(ptr.block, self.refcount(ptr.block) + 1)

    def decref(self, ptr: Ptr) -> None:
        count = self.refcount(ptr.block)
        if count > 1:
            self._set_count(ptr.block, count - 1)
            return
        if ptr.kind == KIND_NODE:
            for child in self.load(ptr).children_ptrs():
                self.decref(child)
        elif ptr.kind == KIND_EXTENT:
            self.data_raw -= ptr.raw_len
            self.data_stored -= ptr.stored_len
        self.freed.append(ptr)

    def _set_count(self, block: int, count: int) -> None:
        key = block_key(block)

        def change() -> None:
            root = self.roots["rc"]
            if count <= 1:
                root, _ = btree.delete(self, root, key)
            else:
                root, _ = btree.put(self, root, key, _RC.pack(count))
            self.roots["rc"] = root

        self._in("rc", change)

    # --- helpers ---

    def _changed(self, tree: str) -> dict[bytes, Value | None]:
        changed = self.changes.get(tree)
        if changed is None:
            changed = self.changes[tree] = {}
        return changed

    def _in(self, tree: str, change) -> None:
        """Run `change` with `tree` as the tree whose pages are being shadowed."""
        outer, self._tree = self._tree, tree
        try:
            change()
        finally:
            self._tree = outer
        self.ops += 1

    def _set_root(self, tree: str, root: Child | None, old: Value | None) -> Value | None:
        self.roots[tree] = root
        return old

    def result(self, dirty: bool = True) -> State:
        return State(
            gen=self.state.gen,
            roots=self.roots,
            next_inode=self.next_inode,
            data_raw=self.data_raw,
            data_stored=self.data_stored,
            flags=self.flags,
            dirty=self.state.dirty or (dirty and self.ops > 0),
            ops=self.state.ops + self.ops,
        )
