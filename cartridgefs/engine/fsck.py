"""`cartridge fsck`: small named checks of an engine, each returning a list of problems."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import CartridgeError
from . import btree
from .alloc import CHUNK_BLOCKS, CHUNK_BYTES, get_bit, set_bits
from .btree import Node, Ref
from .header import Header
from .seal import KIND_NODE, Ptr
from .store import SUPER_BLOCKS, Engine
from .superblock import TREES
from .txn import State

Check = Callable[["Fsck"], list[str]]


@dataclass
class Fsck:
    """Walks a cartridge once and runs the checks over what it saw."""

    engine: Engine
    verify_data: bool = True
    extra_checks: list[tuple[str, Check]] = field(default_factory=list)
    refs: Counter[int] = field(default_factory=Counter)  # block -> references seen
    objects: dict[int, int] = field(default_factory=dict)  # first block -> nblocks
    walk_problems: list[str] = field(default_factory=list)
    memo: dict = field(default_factory=dict)  # results extra checks share

    def run(self) -> dict[str, list[str]]:
        if self.engine.state.dirty and not self.engine.readonly:
            self.engine.sync()  # check what is stored, not what is still in memory
        state = self.engine.state
        results = {"header": self.check_header(), "superblocks": self.check_superblocks()}
        results["trees"] = self.walk(state)
        results["reference counts"] = self.check_refcounts(state)
        results["block accounting"] = self.check_blocks(state)
        for name, check in self.extra_checks:
            results[name] = check(self)
        return results

    # --- header and superblocks ---

    def check_header(self) -> list[str]:
        dev = self.engine.dev
        problems = []
        copies = []
        for block in (0, dev.nblocks - 1):
            try:
                copies.append(Header.decode(dev.read(block, 1)))
            except CartridgeError as exc:
                problems.append(f"header copy at block {block}: {exc}")
        if len(copies) == 2 and copies[0] != copies[1]:
            problems.append("primary and backup headers differ")
        return problems

    def check_superblocks(self) -> list[str]:
        problems = []
        for block in SUPER_BLOCKS:
            try:
                self.engine.sealer.unseal_super(self.engine.dev.read(block, 1), block=block)
            except CartridgeError as exc:
                problems.append(f"superblock at block {block}: {exc}")
        return problems

    # --- the walk: reachability, seals, tree invariants ---

    def walk(self, state: State) -> list[str]:
        for name in TREES:
            root = state.roots.get(name)
            if root is None:
                continue
            ptr = root if isinstance(root, Ptr) else root.ptr
            if ptr is None:
                self.walk_problems.append(f"tree {name}: root not stored (uncommitted state)")
                continue
            self._reference(ptr)
            self._walk_node(name, ptr, b"", None)
        return self.walk_problems

    def _reference(self, ptr: Ptr) -> bool:
        """Count one reference; True the first time the object is seen."""
        self.refs[ptr.block] += 1
        if ptr.block in self.objects:
            if self.objects[ptr.block] != ptr.nblocks:
                self.walk_problems.append(f"block {ptr.block} referenced with different sizes")
            return False
        self.objects[ptr.block] = ptr.nblocks
        return True

    def _walk_node(self, tree: str, ptr: Ptr, low: bytes, high: bytes | None) -> int:
        try:
            node = self.engine.load_node(ptr)
        except CartridgeError as exc:
            self.walk_problems.append(f"tree {tree}: page at block {ptr.block}: {exc}")
            return 0
        self._check_order(tree, node, low, high)
        if node.level == 0:
            for key, val in zip(node.keys, node.vals, strict=True):
                if isinstance(val, Ref):
                    self._leaf_ref(tree, key, val.ptr)
            return 0
        depths = set()
        for i, child in enumerate(node.vals):
            child_ptr = child if isinstance(child, Ptr) else child.ptr
            lo = low if i == 0 else node.keys[i]
            hi = node.keys[i + 1] if i + 1 < len(node.keys) else high
            if self._reference(child_ptr):
                depths.add(self._walk_node(tree, child_ptr, lo, hi) + 1)
        if len(depths) > 1:
            self.walk_problems.append(f"tree {tree}: leaves at different depths under block {ptr.block}")
        if depths and min(depths) != node.level:
            self.walk_problems.append(f"tree {tree}: page {ptr.block} level {node.level} does not match its depth")
        return node.level

    def _leaf_ref(self, tree: str, key: bytes, ptr: Ptr) -> None:
        first = self._reference(ptr)
        if not first:
            return
        if ptr.kind == KIND_NODE:
            self._walk_node("fs", ptr, b"", None)  # a snapshot root
        elif self.verify_data:
            try:
                self.engine.read_extent(ptr, cache=False)
            except CartridgeError as exc:
                self.walk_problems.append(f"tree {tree}: data at block {ptr.block} for key {key!r}: {exc}")

    def _check_order(self, tree: str, node: Node, low: bytes, high: bytes | None) -> None:
        keys = node.keys[1:] if node.level else node.keys
        if any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
            self.walk_problems.append(f"tree {tree}: keys out of order in page {node.block}")
        if keys and (keys[0] < low or (high is not None and keys[-1] >= high)):
            self.walk_problems.append(f"tree {tree}: page {node.block} holds keys outside its range")
        if not node.keys:
            self.walk_problems.append(f"tree {tree}: empty page {node.block}")

    # --- reference counts and block accounting ---

    def check_refcounts(self, state: State) -> list[str]:
        stored: dict[int, int] = {}
        problems = []
        try:
            for key, val in btree.items(state.roots.get("rc"), self.engine.load_node):
                stored[int.from_bytes(key, "big")] = int.from_bytes(val, "little")
        except CartridgeError as exc:  # already reported by the walk; the counts are unknown
            return [f"reference counts unreadable: {exc}"]
        for block, seen in sorted(self.refs.items()):
            expected = stored.get(block, 1)
            if expected != seen:
                problems.append(f"block {block}: reference count {expected}, but {seen} references found")
        for block in sorted(set(stored) - set(self.refs)):
            problems.append(f"block {block}: reference count kept for an unreferenced block")
        return problems

    def used_bitmap(self) -> bytearray:
        """Blocks in use according to the walk (plus the fixed system blocks)."""
        alloc = self.engine.alloc
        used = bytearray(alloc.nchunks * CHUNK_BYTES)
        for block in self.engine._system_blocks():
            set_bits(used, block, 1, True)
        set_bits(used, alloc.nblocks, alloc.nchunks * CHUNK_BLOCKS - alloc.nblocks, True)
        for block, count in self.objects.items():
            set_bits(used, block, count, True)
        return used

    def check_blocks(self, state: State) -> list[str]:
        problems = []
        starts = sorted(self.objects)
        for prev, cur in zip(starts, starts[1:], strict=False):
            if prev + self.objects[prev] > cur:
                problems.append(f"blocks {cur}..: used by two objects (one starting at {prev})")
        stored = bytearray(self.engine.alloc.nchunks * CHUNK_BYTES)
        try:
            for key, val in btree.items(state.roots.get("free"), self.engine.load_node):
                index = int.from_bytes(key, "big")
                stored[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES] = val
        except CartridgeError as exc:  # already reported by the walk
            return [*problems, f"free map unreadable: {exc}"]
        used = self.used_bitmap()
        if stored != used:
            leaked = marked_free = 0
            for block in range(self.engine.alloc.nblocks):
                u, s = get_bit(used, block), get_bit(stored, block)
                leaked += s and not u
                marked_free += u and not s
            if leaked:
                problems.append(f"{leaked} blocks marked used in the free map but referenced by nothing (leaked)")
            if marked_free:
                problems.append(f"{marked_free} blocks in use but marked free in the free map")
        return problems


def run_fsck(engine: Engine, verify_data: bool = True, extra: list[tuple[str, Check]] = ()) -> dict[str, list[str]]:
    return Fsck(engine, verify_data, list(extra)).run()


def repair_free_map(engine: Engine) -> None:
    """Rebuild the free map from what is reachable and commit it as a new generation."""
    fsck = Fsck(engine, verify_data=False)
    fsck.walk(engine.state)
    used = fsck.used_bitmap()
    engine.rebuild_free_map(used)

