"""Copy-on-write B+trees of 4 KiB pages, path-copied per transaction.

A tree is a root reference (a `Node` in memory or a `Ptr` to a page on disk). Nodes are immutable
once the transaction that created them has ended: a transaction that changes a node first copies
it (``Hooks.mutable``), so readers holding an older root keep a consistent view without locks and
an aborted transaction is undone by dropping its new roots. The only later change to a node is
*swizzling* (replacing an in-memory child by its on-disk pointer after a commit), which does not
change what the tree contains.

Keys are byte strings compared bytewise. Leaf values are `bytes` (inline) or `Ref` (a block pointer
plus a few bytes of caller data): the tree reports every `Ref` it gains or loses to its hooks, which
keep the reference counts.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ..errors import IntegrityError, InvalidArgument
from .seal import PTR_SIZE, Ptr

PAGE_SIZE = 4096
MAX_KEY = 512
MAX_INLINE = 1024
MAX_REF_EXTRA = 64
_MERGE_BELOW = PAGE_SIZE // 4

_HEAD = struct.Struct("<BH")  # level, number of entries
_LEAF_ENTRY = struct.Struct("<HBH")  # key length, value tag, value length
_INNER_ENTRY = struct.Struct("<H")  # key length
_TAG_INLINE = 0
_TAG_REF = 1


@dataclass(frozen=True, slots=True)
class Ref:
    """A leaf value that points at stored data (an extent or a spilled value)."""

    ptr: Ptr
    extra: bytes = b""


Value = bytes | Ref


class Node:
    """One B+tree page. Level 0 is a leaf; internal nodes have ``keys[0] == b''``."""

    __slots__ = ("level", "keys", "vals", "txn", "ptr", "block", "size")

    def __init__(self, level: int, keys: list[bytes], vals: list, txn: int, size: int) -> None:
        self.level = level
        self.keys = keys
        self.vals = vals
        self.txn = txn  # id of the transaction allowed to change it; -1 once stored
        self.ptr: Ptr | None = None  # where it is stored, once it is
        self.block: int | None = None  # its block, from when a commit assigns one
        self.size = size  # encoded size in bytes

    def copy(self, txn: int) -> Node:
        return Node(self.level, list(self.keys), list(self.vals), txn, self.size)

    def children_ptrs(self) -> Iterator[Ptr]:
        """Pointers this node holds to other stored objects (child pages or referenced data)."""
        if self.level:
            for child in self.vals:
                yield child if isinstance(child, Ptr) else _stored(child)
        else:
            for val in self.vals:
                if isinstance(val, Ref):
                    yield val.ptr


Child = Node | Ptr


def _stored(node: Node) -> Ptr:
    if node.ptr is None:
        raise AssertionError("a stored node points at an unstored child")
    return node.ptr


def entry_size(level: int, key: bytes, val: Value | Child) -> int:
    if level:
        return _INNER_ENTRY.size + len(key) + PTR_SIZE
    if isinstance(val, Ref):
        return _LEAF_ENTRY.size + len(key) + PTR_SIZE + len(val.extra)
    return _LEAF_ENTRY.size + len(key) + len(val)


def new_leaf(txn: int) -> Node:
    return Node(0, [], [], txn, _HEAD.size)


class Hooks(Protocol):
    """What a tree needs from the transaction that changes it."""

    txn_id: int

    def load(self, ptr: Ptr) -> Node: ...

    def released(self, node: Node) -> None:
        """`node` (stored at node.ptr) is no longer referenced by this tree version."""

    def ref_added(self, ptr: Ptr) -> None: ...

    def ref_removed(self, ptr: Ptr) -> None: ...


def check_entry(key: bytes, val: Value) -> None:
    if len(key) > MAX_KEY:
        raise InvalidArgument(f"key of {len(key)} bytes exceeds {MAX_KEY}")
    if isinstance(val, Ref):
        if len(val.extra) > MAX_REF_EXTRA:
            raise InvalidArgument("reference extra data too long")
    elif len(val) > MAX_INLINE:
        raise InvalidArgument(f"inline value of {len(val)} bytes exceeds {MAX_INLINE}")


# --- reading ---------------------------------------------------------------------------------


def resolve(child: Child, load) -> Node:
    return load(child) if isinstance(child, Ptr) else child


def get(root: Child | None, key: bytes, load) -> Value | None:
    if root is None:
        return None
    node = resolve(root, load)
    while node.level:
        node = resolve(node.vals[bisect_right(node.keys, key) - 1], load)
    i = bisect_left(node.keys, key)
    if i < len(node.keys) and node.keys[i] == key:
        return node.vals[i]
    return None


def items(
    root: Child | None, load, start: bytes = b"", end: bytes | None = None, reverse: bool = False
) -> Iterator[tuple[bytes, Value]]:
    """Yield (key, value) with start <= key < end, in key order (or reverse order)."""
    if root is None:
        return
    yield from _walk(resolve(root, load), load, start, end, reverse)


def _walk(node: Node, load, start: bytes, end: bytes | None, reverse: bool):
    keys = node.keys
    if node.level == 0:
        lo = bisect_left(keys, start)
        hi = len(keys) if end is None else bisect_left(keys, end)
        rng = range(hi - 1, lo - 1, -1) if reverse else range(lo, hi)
        for i in rng:
            yield keys[i], node.vals[i]
        return
    lo = max(bisect_right(keys, start) - 1, 0)
    hi = len(keys) if end is None else bisect_left(keys, end)
    hi = max(hi, lo + 1)
    rng = range(hi - 1, lo - 1, -1) if reverse else range(lo, hi)
    for i in rng:
        yield from _walk(resolve(node.vals[i], load), load, start, end, reverse)


# --- changing --------------------------------------------------------------------------------


def mutable(h: Hooks, child: Child) -> Node:
    """The node behind `child`, copied for transaction h unless it already belongs to it."""
    node = resolve(child, h.load)
    if node.txn == h.txn_id:
        return node
    copy = node.copy(h.txn_id)
    if node.ptr is not None:
        h.released(node)
    return copy


def put(h: Hooks, root: Child | None, key: bytes, val: Value) -> tuple[Node, Value | None]:
    """Insert or replace; returns the new root and the value replaced (or None)."""
    check_entry(key, val)
    node = new_leaf(h.txn_id) if root is None else mutable(h, root)
    old, split = _insert(h, node, key, val)
    if split is not None:
        sep, right = split
        node = Node(node.level + 1, [b"", sep], [node, right], h.txn_id, 0)
        node.size = _HEAD.size + entry_size(1, b"", None) + entry_size(1, sep, None)
    return node, old


def _insert(h: Hooks, node: Node, key: bytes, val: Value):
    keys, vals = node.keys, node.vals
    old = None
    if node.level == 0:
        i = bisect_left(keys, key)
        replacing = i < len(keys) and keys[i] == key
        # Count the new reference before dropping the old: they may be the same extent.
        if isinstance(val, Ref):
            h.ref_added(val.ptr)
        if replacing:
            old = vals[i]
            node.size += entry_size(0, key, val) - entry_size(0, key, old)
            vals[i] = val
            if isinstance(old, Ref):
                h.ref_removed(old.ptr)
        else:
            keys.insert(i, key)
            vals.insert(i, val)
            node.size += entry_size(0, key, val)
    else:
        i = bisect_right(keys, key) - 1
        child = mutable(h, vals[i])
        vals[i] = child
        old, split = _insert(h, child, key, val)
        if split is not None:
            sep, right = split
            keys.insert(i + 1, sep)
            vals.insert(i + 1, right)
            node.size += entry_size(1, sep, None)
    if node.size > PAGE_SIZE:
        return old, _split(h, node)
    return old, None


def _split(h: Hooks, node: Node) -> tuple[bytes, Node]:
    sizes = [entry_size(node.level, k, v) for k, v in zip(node.keys, node.vals, strict=True)]
    total = sum(sizes)
    best, acc, best_cost = 1, 0, None
    for i in range(1, len(sizes)):
        acc += sizes[i - 1]
        cost = max(acc, total - acc)
        if best_cost is None or cost < best_cost:
            best, best_cost = i, cost
    right_keys = node.keys[best:]
    right_vals = node.vals[best:]
    del node.keys[best:], node.vals[best:]
    sep = right_keys[0]
    if node.level:
        right_keys[0] = b""
    right = Node(node.level, right_keys, right_vals, h.txn_id, 0)
    node.size = _HEAD.size + sum(sizes[:best])
    right.size = _HEAD.size + sum(entry_size(node.level, k, v) for k, v in zip(right_keys, right_vals, strict=True))
    return sep, right


def delete(h: Hooks, root: Child | None, key: bytes) -> tuple[Child | None, Value | None]:
    """Remove `key`; returns the new root (None when empty) and the removed value (or None)."""
    if root is None or get(root, key, h.load) is None:
        return root, None
    node = mutable(h, root)
    old = _remove(h, node, key)
    new_root: Child = node
    # A root with one child is dropped; the child takes over the root's one reference.
    while node.level and len(node.keys) == 1:
        new_root = node.vals[0]
        node = resolve(new_root, h.load)
    if node.level == 0 and not node.keys:
        return None, old
    return new_root, old


def _remove(h: Hooks, node: Node, key: bytes) -> Value:
    keys, vals = node.keys, node.vals
    if node.level == 0:
        i = bisect_left(keys, key)
        old = vals.pop(i)
        keys.pop(i)
        node.size -= entry_size(0, key, old)
        if isinstance(old, Ref):
            h.ref_removed(old.ptr)
        return old
    i = bisect_right(keys, key) - 1
    child = mutable(h, vals[i])
    vals[i] = child
    old = _remove(h, child, key)
    if child.size < _MERGE_BELOW:
        _rebalance(h, node, i)
    return old


def _rebalance(h: Hooks, parent: Node, i: int) -> None:
    """Merge child i with a neighbour when both fit in one page; drop it when empty."""
    child = parent.vals[i]
    if not child.keys:
        _drop_child(parent, i)
        return
    j = i + 1 if i + 1 < len(parent.keys) else i - 1
    if j < 0:
        return
    left_i, right_i = min(i, j), max(i, j)
    left = mutable(h, parent.vals[left_i])
    right = mutable(h, parent.vals[right_i])
    parent.vals[left_i], parent.vals[right_i] = left, right
    sep = parent.keys[right_i]
    merged_size = left.size + right.size - _HEAD.size
    if left.level:
        merged_size += len(sep)  # right's first key becomes the separator instead of b""
    if merged_size > PAGE_SIZE:
        return
    rkeys = list(right.keys)
    if left.level:
        rkeys[0] = sep
    left.keys.extend(rkeys)
    left.vals.extend(right.vals)
    left.size = merged_size
    _drop_child(parent, right_i)


def _drop_child(parent: Node, i: int) -> None:
    key = parent.keys.pop(i)
    parent.vals.pop(i)
    parent.size -= entry_size(1, key, None)
    if i == 0 and parent.keys:
        parent.size -= len(parent.keys[0])
        parent.keys[0] = b""


# --- encoding --------------------------------------------------------------------------------


def encode(node: Node) -> bytes:
    """The page image of `node`; internal nodes need every child stored already."""
    parts = [_HEAD.pack(node.level, len(node.keys))]
    if node.level:
        for key, child in zip(node.keys, node.vals, strict=True):
            ptr = child if isinstance(child, Ptr) else _stored(child)
            parts += (_INNER_ENTRY.pack(len(key)), key, ptr.encode())
    else:
        for key, val in zip(node.keys, node.vals, strict=True):
            if isinstance(val, Ref):
                body = val.ptr.encode() + val.extra
                parts += (_LEAF_ENTRY.pack(len(key), _TAG_REF, len(body)), key, body)
            else:
                parts += (_LEAF_ENTRY.pack(len(key), _TAG_INLINE, len(val)), key, val)
    data = b"".join(parts)
    if len(data) != node.size:
        raise AssertionError(f"node size bookkeeping off: {len(data)} != {node.size}")
    return data


def decode(data: bytes, ptr: Ptr) -> Node:
    """Parse a page; raise IntegrityError if it is not a well-formed node."""
    try:
        level, count = _HEAD.unpack_from(data, 0)
        pos = _HEAD.size
        keys: list[bytes] = []
        vals: list = []
        if level:
            for _ in range(count):
                (klen,) = _INNER_ENTRY.unpack_from(data, pos)
                pos += _INNER_ENTRY.size
                keys.append(bytes(data[pos : pos + klen]))
                pos += klen
                vals.append(Ptr.decode(data, pos))
                pos += PTR_SIZE
        else:
            for _ in range(count):
                klen, tag, vlen = _LEAF_ENTRY.unpack_from(data, pos)
                pos += _LEAF_ENTRY.size
                keys.append(bytes(data[pos : pos + klen]))
                pos += klen
                body = bytes(data[pos : pos + vlen])
                if len(body) != vlen:
                    raise ValueError("truncated value")
                pos += vlen
                if tag == _TAG_REF:
                    vals.append(Ref(Ptr.decode(body), body[PTR_SIZE:]))
                elif tag == _TAG_INLINE:
                    vals.append(body)
                else:
                    raise ValueError(f"unknown value tag {tag}")
        if pos > PAGE_SIZE or any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
            raise ValueError("keys out of order")
    except (struct.error, ValueError) as exc:
        raise IntegrityError(f"malformed tree page at block {ptr.block}: {exc}") from exc
    node = Node(level, keys, vals, -1, pos)
    node.ptr = ptr
    node.block = ptr.block
    return node
