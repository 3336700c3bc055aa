"""Shared helpers of the engine store tests (`test_store_*.py`, `test_cli.py`).

The helpers are reached through the `store` fixture (a `StoreKit`), since test modules must not
import conftest.py. The hypothesis state machines get the kit through their factory.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator

import pytest

from cartridgefs.engine.btree import Ref
from cartridgefs.engine.fsck import run_fsck
from cartridgefs.engine.seal import KIND_EXTENT, KIND_NODE, Ptr
from cartridgefs.engine.store import Engine
from cartridgefs.engine.superblock import TREES
from cartridgefs.engine.txn import State

USER_TREES = ("fs", "meta")
SYSTEM_BLOCKS = 4  # header, two superblock slots, backup header


class StoreKit:
    """Small, reusable operations and checks on an `Engine`."""

    # --- writing ---

    @staticmethod
    def write_file(
        engine: Engine, key: bytes, data: bytes, tree: str = "fs", extent_max: int | None = None
    ) -> list[Ptr]:
        """Store `data` as extents linked under `key` + 8-byte big-endian offset; durable after sync."""
        kwargs = {} if extent_max is None else {"extent_max": extent_max}
        pieces = engine.write_data(data, **kwargs)
        ptrs = [ptr for _, ptr in pieces]
        with engine.txn(reserved=ptrs) as t:
            for offset, ptr in pieces:
                t.put(tree, key + offset.to_bytes(8, "big"), Ref(ptr))
        return ptrs

    @staticmethod
    def read_file(
        engine: Engine, key: bytes, tree: str = "fs", state: State | None = None
    ) -> bytes:
        """Concatenate the extents stored by `write_file` under `key`."""
        parts = []
        with engine.reader() if state is None else contextlib.nullcontext(state) as view:
            for k, val in engine.items(view, tree, key, key + b"\xff" * 9):
                if len(k) != len(key) + 8:
                    continue  # another key that merely starts with `key`
                assert isinstance(val, Ref) and val.ptr.kind == KIND_EXTENT
                parts.append(engine.read_extent(val.ptr))
        return b"".join(parts)

    # --- looking ---

    @staticmethod
    def dump_tree(engine: Engine, state: State, tree: str) -> dict[bytes, object]:
        """A tree as plain data: inline and spilled values as bytes, extents as ("extent", data, extra)."""
        out: dict[bytes, object] = {}
        for key, val in engine.items(state, tree):
            if isinstance(val, Ref) and val.ptr.kind == KIND_EXTENT:
                out[key] = ("extent", engine.read_extent(val.ptr), val.extra)
            else:
                out[key] = engine.value(val)
        return out

    @classmethod
    def dump(cls, engine: Engine) -> dict[str, object]:
        """Everything a caller can see: user trees and every snapshot's fs tree."""
        with engine.reader() as state:
            out: dict[str, object] = {
                tree: cls.dump_tree(engine, state, tree) for tree in USER_TREES
            }
        snaps = {}
        for info in engine.snapshots():
            with engine.reader(snapshot=info.name) as view:
                snaps[info.name] = cls.dump_tree(engine, view, "fs")
        out["snapshots"] = snaps
        return out

    @staticmethod
    def objects(engine: Engine, state: State | None = None) -> dict[int, tuple[str, Ptr]]:
        """Every stored object reachable from `state`: first block -> (tree, pointer)."""
        state = state or engine.state
        found: dict[int, tuple[str, Ptr]] = {}

        def visit(tree: str, ptr: Ptr) -> None:
            if ptr.block in found:
                return
            found[ptr.block] = (tree, ptr)
            if ptr.kind == KIND_NODE:
                for child in engine.load_node(ptr).children_ptrs():
                    visit(tree, child)

        for tree in TREES:
            root = state.roots.get(tree)
            if root is not None:
                visit(tree, root if isinstance(root, Ptr) else root.ptr)
        return found

    @classmethod
    def objects_of_kind(cls, engine: Engine, kind: int, tree: str | None = None) -> list[Ptr]:
        return [
            ptr
            for t, ptr in cls.objects(engine).values()
            if ptr.kind == kind and (tree is None or t == tree)
        ]

    # --- checks ---

    @staticmethod
    def assert_fsck_clean(engine: Engine) -> None:
        results = run_fsck(engine)
        bad = {name: problems for name, problems in results.items() if problems}
        assert not bad, f"fsck found problems: {bad}"

    @staticmethod
    def accounting(engine: Engine) -> tuple[int, int, int, int]:
        info = engine.info()
        return (
            info["used_blocks"],
            info["free_blocks"],
            info["reserved_blocks"],
            info["pending_blocks"],
        )

    @classmethod
    def assert_blocks_add_up(cls, engine: Engine) -> None:
        """Every block is exactly one of: system, used, free, reserved, pending."""
        used, free, reserved, pending = cls.accounting(engine)
        assert used + free + reserved + pending + SYSTEM_BLOCKS == engine.header.nblocks, (
            used,
            free,
            reserved,
            pending,
            engine.header.nblocks,
        )

    # --- damage ---

    @staticmethod
    def flip_byte(buf: bytearray, block: int, nbytes: int, rng: random.Random) -> int:
        """Flip one random bit of one of the first `nbytes` bytes of `block`; returns the offset."""
        offset = block * 4096 + rng.randrange(nbytes)
        buf[offset] ^= 1 << rng.randrange(8)
        return offset

    @staticmethod
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store() -> StoreKit:
    return StoreKit()


@pytest.fixture
def rng(request) -> Iterator[random.Random]:
    """A random generator seeded from the test name, so failures reproduce."""
    yield random.Random(request.node.nodeid)
