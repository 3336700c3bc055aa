"""Power loss at random points (CrashDevice): what reopens is a committed state, never a mix.

A seeded workload of transactions, syncs, snapshot operations and reopens runs against an engine
on a `CrashDevice` while a model records every state a commit could make durable. Then:

* a crash image taken at a quiet moment must hold exactly the state of the last completed sync;
* a crash image taken in the middle of a write or sync, or after `crash_after_writes` cut the
  power mid-commit, must hold one of the states from the last completed sync on;

and in every case the image opens, fsck finds nothing, and the cartridge accepts new commits.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from cartridgefs.engine.btree import Ref
from cartridgefs.engine.crashdev import CRASH_MODES, CrashDevice, SimulatedCrash
from cartridgefs.engine.fsck import run_fsck
from cartridgefs.engine.store import Engine
from cartridgefs.errors import CartridgeError, FormatError, IntegrityError

NBLOCKS = 1500
STEPS = 30
PASSPHRASE = b"crash passphrase"
VARIANTS = [
    pytest.param(None, True, id="zstd"),
    pytest.param(None, False, id="raw"),
    pytest.param(PASSPHRASE, True, id="encrypted"),
]

Content = dict[str, dict]


class Boom(Exception):
    pass


def empty_content() -> Content:
    return {"fs": {}, "meta": {}, "snapshots": {}}


def copy_content(c: Content) -> Content:
    return {
        "fs": dict(c["fs"]),
        "meta": dict(c["meta"]),
        "snapshots": {name: dict(d) for name, d in c["snapshots"].items()},
    }


class ProbingDevice(CrashDevice):
    """A CrashDevice that sometimes takes a crash image just before a write or a sync."""

    def __init__(self, nblocks: int, rng: random.Random | None, rate: float, **kw) -> None:
        super().__init__(nblocks, **kw)
        self.probe_rng, self.rate = rng, rate
        self.images: list[bytearray] = []

    def _probe(self) -> None:
        if self.probe_rng is not None and self.probe_rng.random() < self.rate:
            self.images.append(self.crash_image(self.probe_rng, self.probe_rng.choice(CRASH_MODES)))

    def write(self, block: int, data) -> None:
        self._probe()
        super().write(block, data)

    def sync(self) -> None:
        self._probe()
        super().sync()


class Workload:
    """A seeded sequence of operations, applied to an engine and to a model in step.

    `committable` lists every state a commit has been asked to make durable, `floor` indexes the
    last one whose commit completed. `on_quiet(allowed)` / `on_op_done(allowed)` let a test look
    at the device between operations.
    """

    def __init__(self, seed: int, passphrase: bytes | None, compression: bool) -> None:
        self.rng = random.Random(seed)
        self.passphrase = passphrase
        self.compression = compression
        self.model = empty_content()
        self.committable: list[Content] = []
        self.floor = -1
        self.format_done = False

    # --- bookkeeping of what may be durable ---

    def will_commit(self, content: Content | None = None) -> None:
        self.committable.append(copy_content(content or self.model))

    def committed(self) -> None:
        self.floor = len(self.committable) - 1

    def allowed_now(self) -> list[Content]:
        """States a crash right now may leave (from the last completed commit on)."""
        return self.committable[max(self.floor, 0) :]

    # --- the run ---

    def run(self, dev: CrashDevice, between: Callable[[Workload], None] | None = None) -> None:
        """Format `dev`, then run the steps, calling `between` after each step and format."""
        between = between or (lambda w: None)
        self.will_commit()
        self.engine = Engine.format(dev, compression=self.compression, passphrase=self.passphrase, kdf_log2n=10)
        self.committed()
        self.format_done = True
        between(self)
        self.dev = dev
        for _ in range(STEPS):
            self.step()
            between(self)
        self.will_commit()
        self.engine.close()
        self.committed()

    def step(self) -> None:
        r = self.rng.random()
        if r < 0.55:
            self.transaction(fail=False)
        elif r < 0.62:
            self.transaction(fail=True)
        elif r < 0.85:
            self.will_commit()
            self.engine.sync()
            self.committed()
        elif r < 0.97:
            self.snapshot_op()
        else:
            self.will_commit()
            self.engine.close()
            self.committed()
            self.engine = Engine.open_device(self.dev, passphrase=self.passphrase)
            if self.passphrase:  # opening claims a new nonce epoch with a commit of the same state
                self.will_commit()
                self.committed()

    def _key(self) -> bytes:
        return b"key-%02d" % self.rng.randrange(40)

    def _data(self, lo: int, hi: int) -> bytes:
        size = self.rng.randrange(lo, hi)
        if self.rng.random() < 0.5:
            return self.rng.randbytes(size)
        return (self.rng.randbytes(16) * (size // 16 + 1))[:size]

    def transaction(self, fail: bool) -> None:
        staged = copy_content(self.model)
        pieces = []
        if self.rng.random() < 0.4:
            pieces = self.engine.write_data(self._data(1, 30_000), extent_max=self.rng.choice([4096, 32768]))
            data_key = self._key()
        try:
            with self.engine.txn(reserved=[p for _, p in pieces]) as t:
                for offset, ptr in pieces:
                    key = data_key + b"@%06d" % offset
                    t.put("fs", key, Ref(ptr))
                    staged["fs"][key] = ("extent", self.engine.read_extent(ptr), b"")
                for _ in range(self.rng.randrange(1, 7)):
                    tree, key = self.rng.choice(["fs", "fs", "meta"]), self._key()
                    if self.rng.random() < 0.25:
                        t.delete(tree, key)
                        staged[tree].pop(key, None)
                        continue
                    value = self._data(0, 200) if self.rng.random() < 0.7 else self._data(1100, 5000)
                    t.put(tree, key, value)
                    staged[tree][key] = value
                if fail:
                    raise Boom()
        except Boom:
            return
        self.model = staged

    def snapshot_op(self) -> None:
        snaps = self.model["snapshots"]
        name = self.rng.choice(["a", "b", "c"])
        if name not in snaps:
            if not self.model["fs"]:
                return
            self.will_commit()  # the live state is committed first...
            snaps[name] = dict(self.model["fs"])
            self.will_commit()  # ...then the snapshot
            self.engine.snapshot_create(name)
        elif self.rng.random() < 0.5:
            del snaps[name]
            self.will_commit()
            self.engine.snapshot_delete(name)
        else:
            self.will_commit()
            self.model["fs"] = dict(snaps[name])
            self.will_commit()
            self.engine.snapshot_restore(name)
        self.committed()


class ImageCollector:
    """Collects crash images with the states each may hold, as a workload's `between` hook."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.dev = ProbingDevice(NBLOCKS, rng, rate=0.02)
        self.pending: list[tuple[bytearray, list[Content]]] = []
        self.step_floor = -1
        self.quiet = 0

    def between(self, w: Workload) -> None:
        if self.step_floor == -1:  # just formatted: crashes during format are another test's
            self.dev.images.clear()
        # Images the device took during the step may hold any state from the floor before the
        # step to the last one the step asked to commit.
        for image in self.dev.images:
            self.pending.append((image, w.committable[self.step_floor :]))
        self.dev.images.clear()
        self.step_floor = w.floor
        if self.rng.random() < 0.15:
            # A quiet moment: exactly the last synced state, whatever the mode.
            self.quiet += 1
            image = self.dev.crash_image(self.rng, self.rng.choice(CRASH_MODES))
            self.pending.append((image, [w.committable[w.floor]]))


def check_recovered(store, image: bytes, allowed: list[Content], passphrase: bytes | None) -> None:
    """The image opens, is fsck-clean, holds one allowed state, and takes a new commit."""
    engine = Engine.open_device(CrashDevice.from_image(image), passphrase=passphrase)
    try:
        store.assert_fsck_clean(engine)
        content = store.dump(engine)
        assert content in allowed, f"recovered state is none of the {len(allowed)} allowed ones"
        store.write_file(engine, b"after-crash", b"new data " * 500)
        with engine.txn() as t:
            t.put("meta", b"after-crash", b"x")
        engine.sync()
        store.assert_fsck_clean(engine)
        assert store.read_file(engine, b"after-crash") == b"new data " * 500
    finally:
        engine.close()


@pytest.mark.parametrize("passphrase,compression", VARIANTS)
def test_crash_images_at_random_moments(store, passphrase, compression) -> None:
    """Images taken between operations and just before writes/syncs, in all four modes."""
    deadline = time.monotonic() + 12
    checked = quiet = 0
    for seed in range(200):
        if time.monotonic() > deadline:
            break
        collector = ImageCollector(random.Random(seed * 7919))
        Workload(seed, passphrase, compression).run(collector.dev, collector.between)
        for image, allowed in collector.pending:
            check_recovered(store, image, allowed, passphrase)
            checked += 1
        quiet += collector.quiet
    assert checked >= 20 and quiet >= 5, (checked, quiet)


@pytest.mark.parametrize("passphrase,compression", VARIANTS)
def test_power_cut_mid_commit(store, passphrase, compression) -> None:
    """crash_after_writes cuts the power at the k-th write or sync, k anywhere in the run."""
    deadline = time.monotonic() + 12
    cuts = 0
    for seed in range(1000):
        if time.monotonic() > deadline:
            break
        dry = CrashDevice(NBLOCKS)
        Workload(seed, passphrase, compression).run(dry)
        total = dry.writes + dry.syncs
        rng = random.Random(seed)
        for cut in rng.sample(range(1, total + 1), min(4, total)):
            dev = CrashDevice(NBLOCKS, crash_after_writes=cut)
            w = Workload(seed, passphrase, compression)
            with pytest.raises(SimulatedCrash):
                w.run(dev)
            image = dev.crash_image(rng, rng.choice(CRASH_MODES))
            if not w.format_done:
                check_crashed_create(store, image, passphrase)
            else:
                check_recovered(store, image, w.allowed_now(), passphrase)
            cuts += 1
    assert cuts >= 30, cuts


def check_crashed_create(store, image: bytes, passphrase: bytes | None) -> None:
    """Power lost while formatting: either no cartridge at all (a clean error) or an empty one."""
    try:
        engine = Engine.open_device(CrashDevice.from_image(image), passphrase=passphrase)
    except (FormatError, IntegrityError):
        return
    try:
        # The cut may come before the second superblock slot was ever written: fsck says so
        # (and nothing else) until the next commit fills it.
        problems = {name: p for name, p in run_fsck(engine).items() if p}
        assert set(problems) <= {"superblocks"}, problems
        assert len(problems.get("superblocks", [])) <= 1
        assert store.dump(engine) == empty_content()
        engine.sync(force=True)
        store.assert_fsck_clean(engine)
    finally:
        engine.close()


@pytest.mark.parametrize("passphrase", [None, PASSPHRASE], ids=["plain", "encrypted"])
def test_power_cut_during_create(store, passphrase) -> None:
    """Every cut point of Engine.format, with every crash mode."""
    dry = CrashDevice(64)
    Engine.format(dry, passphrase=passphrase, kdf_log2n=10).close()
    total = dry.writes + dry.syncs
    rng = random.Random(1)
    outcomes = set()
    for cut in range(1, total + 1):
        for mode in CRASH_MODES:
            dev = CrashDevice(64, crash_after_writes=cut)
            with pytest.raises(SimulatedCrash):
                Engine.format(dev, passphrase=passphrase, kdf_log2n=10)
            image = dev.crash_image(rng, mode)
            try:
                Engine.open_device(CrashDevice.from_image(image), passphrase=passphrase).close()
                outcomes.add("opens")
            except CartridgeError:
                outcomes.add("refused")
            check_crashed_create(store, image, passphrase)
    # Early cuts leave no cartridge; once the first superblock is durable, it opens.
    assert outcomes == {"opens", "refused"}
