"""The engine against a model made of dicts (hypothesis stateful testing).

The model holds, for the trees "fs" and "meta", key -> value where a value is inline bytes or an
`Extent` (the data written with `write_data`, the caller's extra bytes and the extent's block, so
that shared extents can be counted once). Snapshots are copies of the model's "fs" dict. Every
rule does the same thing to the engine and to the model; the invariants and the teardown compare
them byte for byte and run fsck.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cartridgefs.engine.blockdev import MemoryDevice
from cartridgefs.engine.btree import MAX_INLINE, Ref
from cartridgefs.engine.seal import KIND_BLOB, KIND_EXTENT
from cartridgefs.engine.store import Engine
from cartridgefs.errors import Exists, InvalidArgument, NotFound

NBLOCKS = 3000
PASSPHRASE = b"model passphrase"
TREE = st.sampled_from(["fs", "meta"])
SNAP_NAMES = st.sampled_from(["s1", "s2", "s3"])

# Keys: a few that collide often, short random ones, and long ones up to the 512-byte limit.
KEYS = st.one_of(
    st.sampled_from([b"", b"a", b"b", b"dir/x", b"dir/y", b"\xff" * 8]),
    st.binary(max_size=24),
    st.binary(min_size=400, max_size=512),
)


def _random_bytes(size_seed: tuple[int, int]) -> bytes:
    size, seed = size_seed
    return random.Random(seed).randbytes(size)


# Values: small, right around the inline limit, and spilled (> 1024 bytes, stored as blobs).
VALUES = st.one_of(
    st.binary(max_size=40),
    st.tuples(st.integers(MAX_INLINE - 4, MAX_INLINE + 4), st.integers(0, 2**32)).map(_random_bytes),
    st.tuples(st.integers(MAX_INLINE + 1, 9000), st.integers(0, 2**32)).map(_random_bytes),
)

# Extent data: random (stays raw) or repetitive (zstd shrinks it when compression is on).
EXTENT_DATA = st.one_of(
    st.tuples(st.integers(1, 20_000), st.integers(0, 2**32)).map(_random_bytes),
    st.tuples(st.integers(1, 40_000), st.binary(min_size=1, max_size=8)).map(
        lambda t: (t[1] * t[0])[: t[0]]
    ),
)

OPS = st.lists(
    st.tuples(st.sampled_from(["put", "delete"]), TREE, KEYS, VALUES), max_size=12
)


class Boom(Exception):
    """Raised by a test inside a transaction to abort it."""


@dataclass(frozen=True)
class Extent:
    data: bytes
    extra: bytes
    block: int  # identity of the stored extent (shared when cloned)


def _visible(value: bytes | Extent) -> object:
    """A model value as `StoreKit.dump_tree` shows the engine's."""
    return ("extent", value.data, value.extra) if isinstance(value, Extent) else value


class EngineModel(RuleBasedStateMachine):
    kit = None  # a conftest.StoreKit, set by the test that runs the machine
    compression = True
    passphrase: bytes | None = None
    steps_run = 0  # counted by an invariant, so a test can tell that steps really ran

    def __init__(self) -> None:
        super().__init__()
        self.dev = MemoryDevice(NBLOCKS)
        self.engine = Engine.format(
            self.dev, compression=self.compression, passphrase=self.passphrase, kdf_log2n=10
        )
        self.trees: dict[str, dict[bytes, bytes | Extent]] = {"fs": {}, "meta": {}}
        self.snaps: dict[str, dict[bytes, bytes | Extent]] = {}

    # --- helpers ---

    def expected(self) -> dict[str, object]:
        out: dict[str, object] = {
            tree: {k: _visible(v) for k, v in sorted(d.items())} for tree, d in self.trees.items()
        }
        out["snapshots"] = {
            name: {k: _visible(v) for k, v in sorted(d.items())} for name, d in sorted(self.snaps.items())
        }
        return out

    def check_everything(self) -> None:
        assert self.kit.dump(self.engine) == self.expected()
        self.kit.assert_fsck_clean(self.engine)
        self.kit.assert_blocks_add_up(self.engine)

    def reopen(self) -> None:
        self.engine = Engine.open_device(self.dev, passphrase=self.passphrase)

    # --- rules: transactions ---

    @rule(ops=OPS, fail_at=st.one_of(st.none(), st.integers(0, 12)), bad_key=st.booleans())
    def transaction(self, ops, fail_at, bad_key) -> None:
        """A batch of puts and deletes; when `fail_at` is set, it raises there and must vanish."""
        staged = {tree: dict(d) for tree, d in self.trees.items()}
        before = self.kit.accounting(self.engine)
        failing = fail_at is not None and fail_at <= len(ops)
        try:
            with self.engine.txn() as t:
                for i, (op, tree, key, value) in enumerate(ops):
                    if failing and i == fail_at:
                        break
                    if op == "put":
                        t.put(tree, key, value)
                        staged[tree][key] = value
                    else:
                        removed = t.delete(tree, key)
                        assert removed == (staged[tree].pop(key, None) is not None)
                    # The transaction sees its own changes.
                    got = t.get(tree, key)
                    want = staged[tree].get(key)
                    assert (got.ptr.block if isinstance(got, Ref) else got) == (
                        want.block if isinstance(want, Extent) else want
                    )
                if failing:
                    if bad_key:
                        t.put("fs", b"k" * 513, b"too long a key")  # InvalidArgument
                    raise Boom()
        except (Boom, InvalidArgument):
            assert failing
            assert self.kit.accounting(self.engine) == before
            return
        assert not failing
        self.trees = staged

    @rule(
        tree=TREE, key=KEYS, data=EXTENT_DATA, extra=st.binary(max_size=64),
        extent_max=st.sampled_from([4096, 16384, 128 * 1024]), unlinked=st.booleans(),
        fail=st.booleans(),
    )
    def put_extents(self, tree, key, data, extra, extent_max, unlinked, fail) -> None:
        """Link data extents; an extent left unlinked, or a failed txn, gives blocks back."""
        before = self.kit.accounting(self.engine)
        pieces = self.engine.write_data(data, extent_max=extent_max)
        ptrs = [ptr for _, ptr in pieces]
        if unlinked:
            ptrs += [ptr for _, ptr in self.engine.write_data(b"never linked " * 50)]
        staged = dict(self.trees[tree])
        try:
            with self.engine.txn(reserved=ptrs) as t:
                for offset, ptr in pieces:
                    k = key[:500] + offset.to_bytes(4, "big")
                    t.put(tree, k, Ref(ptr, extra))
                    staged[k] = Extent(bytes(data[offset : offset + ptr.raw_len]), extra, ptr.block)
                if fail:
                    raise Boom()
        except Boom:
            assert self.kit.accounting(self.engine) == before
            return
        assert self.engine.info()["reserved_blocks"] == 0
        self.trees[tree] = staged

    @rule(src=TREE, dst=TREE, key=KEYS, pick=st.integers(0, 10**6))
    def clone_extent(self, src, dst, key, pick) -> None:
        """Reference an existing extent from a second key (a reflink): its count goes up."""
        extents = sorted((k, v) for k, v in self.trees[src].items() if isinstance(v, Extent))
        if not extents:
            return
        src_key, value = extents[pick % len(extents)]
        with self.engine.txn() as t:
            ref = t.get(src, src_key)
            assert isinstance(ref, Ref) and ref.ptr.block == value.block
            t.put(dst, key, ref)
        self.trees[dst][key] = value

    # --- rules: reading ---

    @rule(tree=TREE, key=KEYS)
    def get(self, tree, key) -> None:
        with self.engine.reader() as state:
            got = self.engine.get(state, tree, key)
        want = self.trees[tree].get(key)
        if isinstance(want, Extent):
            assert isinstance(got, Ref) and got.ptr.kind == KIND_EXTENT and got.extra == want.extra
            assert self.engine.read_extent(got.ptr) == want.data
        else:
            assert got == want

    @rule(tree=TREE, start=KEYS, end=st.one_of(st.none(), KEYS), reverse=st.booleans())
    def scan(self, tree, start, end, reverse) -> None:
        with self.engine.reader() as state:
            got = []
            for key, val in self.engine.items(state, tree, start, end, reverse):
                if isinstance(val, Ref) and val.ptr.kind == KIND_BLOB:
                    assert len(self.engine.value(val)) > MAX_INLINE
                got.append((key, _visible_engine(self.engine, val)))
        want = sorted(
            (k, _visible(v)) for k, v in self.trees[tree].items()
            if k >= start and (end is None or k < end)
        )
        if reverse:
            want.reverse()
        assert got == want

    # --- rules: durability ---

    @rule()
    def sync(self) -> None:
        self.engine.sync()
        assert self.engine.durable_gen == self.engine.state.gen - 1

    @rule()
    def close_and_reopen(self) -> None:
        self.engine.close()
        self.reopen()
        assert self.kit.dump(self.engine) == self.expected()

    @rule()
    def fsck(self) -> None:
        self.kit.assert_fsck_clean(self.engine)

    # --- rules: snapshots ---

    @rule(name=SNAP_NAMES)
    def snapshot_create(self, name) -> None:
        if name in self.snaps:
            with pytest.raises(Exists):
                self.engine.snapshot_create(name)
        elif not self.trees["fs"]:
            with pytest.raises(InvalidArgument):
                self.engine.snapshot_create(name)
        else:
            self.engine.snapshot_create(name)
            self.snaps[name] = dict(self.trees["fs"])

    @rule(name=SNAP_NAMES)
    def snapshot_delete(self, name) -> None:
        if name not in self.snaps:
            with pytest.raises(NotFound):
                self.engine.snapshot_delete(name)
            return
        self.engine.snapshot_delete(name)
        del self.snaps[name]

    @rule(name=SNAP_NAMES)
    def snapshot_restore(self, name) -> None:
        if name not in self.snaps:
            with pytest.raises(NotFound):
                self.engine.snapshot_restore(name)
            return
        self.engine.snapshot_restore(name)
        self.trees["fs"] = dict(self.snaps[name])

    @precondition(lambda self: self.snaps)
    @rule()
    def read_snapshots(self) -> None:
        assert self.kit.dump(self.engine)["snapshots"] == self.expected()["snapshots"]

    # --- invariants and teardown ---

    @invariant()
    def nothing_reserved_and_blocks_add_up(self) -> None:
        assert self.engine.info()["reserved_blocks"] == 0
        self.kit.assert_blocks_add_up(self.engine)

    @invariant()
    def data_bytes_counted_once(self) -> None:
        extents = {
            v.block: len(v.data)
            for d in (*self.trees.values(), *self.snaps.values())
            for v in d.values()
            if isinstance(v, Extent)
        }
        assert self.engine.info()["data_bytes"] == sum(extents.values())

    @invariant()
    def snapshot_names(self) -> None:
        type(self).steps_run += 1
        assert [s.name for s in self.engine.snapshots()] == sorted(self.snaps)

    def teardown(self) -> None:
        try:
            self.check_everything()
            self.engine.close()
            self.reopen()
            self.check_everything()
            self.engine.close()
        finally:
            self.dev.buffer = bytearray()  # failing examples stay referenced by hypothesis


def _visible_engine(engine: Engine, val) -> object:
    if isinstance(val, Ref) and val.ptr.kind == KIND_EXTENT:
        return ("extent", engine.read_extent(val.ptr), val.extra)
    return engine.value(val)


def _run(kit, *, compression: bool, passphrase: bytes | None, examples: int, steps: int) -> None:
    machine = type(
        "EngineModelRun", (EngineModel,),
        {"kit": kit, "compression": compression, "passphrase": passphrase},
    )
    start = time.monotonic()
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            database=None,
        ),
    )
    assert time.monotonic() - start < 120
    assert machine.steps_run >= examples * 5, "hypothesis ran suspiciously few steps"


def test_engine_matches_model_compressed(store) -> None:
    _run(store, compression=True, passphrase=None, examples=400, steps=60)


def test_engine_matches_model_uncompressed(store) -> None:
    _run(store, compression=False, passphrase=None, examples=200, steps=60)


def test_engine_matches_model_encrypted(store) -> None:
    _run(store, compression=True, passphrase=PASSPHRASE, examples=200, steps=60)
