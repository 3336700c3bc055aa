"""The engine: one cartridge file, its published state, transactions, commits and extents.

Concurrency (see docs/concurrency.md): every method is synchronous and thread-safe, meant to be
called from worker threads. Transactions run one at a time under ``_writer``; readers take the
published `State` (immutable) and need no lock. A commit holds ``_commit`` throughout, holds
``_writer`` only while it assigns blocks and encodes pages, and writes and syncs without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from ..errors import (
    CartridgeError,
    Exists,
    FormatError,
    IntegrityError,
    InvalidArgument,
    NoSpace,
    NotFound,
    PassphraseRequired,
    ReadOnly,
)
from . import btree, keys
from .alloc import CHUNK_BLOCKS, CHUNK_BYTES, Allocator
from .arc import ArcCache
from .blockdev import BLOCK_SIZE, BlockDevice, FileDevice, WouldBlock
from .btree import Child, Node, Ref, Value
from .header import Features, Fuses, Header, read_header, write_header
from .seal import (
    CODEC_RAW,
    KIND_BLOB,
    KIND_EXTENT,
    KIND_NODE,
    NONCES_PER_EPOCH,
    AeadSealer,
    ChecksumSealer,
    Ptr,
    Sealer,
    decode_extent,
    encode_extent,
)
from .superblock import FLAG_NEEDS_CHECK, TREES, SuperPayload
from .txn import State, Txn

log = logging.getLogger("cartridge.engine")

SUPER_BLOCKS = (1, 2)
EXTENT_MAX = 128 * 1024  # largest piece of file data stored as one extent
DEFAULT_CACHE = 64 * 1024 * 1024
COMMIT_OPS = 50_000  # tree operations after which `needs_commit` says so
FIRST_INODE = 2
_EPOCH_ROTATE_BELOW = 1 << 24  # nonces left in an epoch before a commit starts a new one
# Runs of reusable blocks whose cached pages wait to be dropped (`drop_released_pages`); past
# this many, merged, only the largest half is kept: dropping pages is a hint, not a duty.
RELEASED_RUNS_MAX = 65536


def _chunk_key(index: int) -> bytes:
    return index.to_bytes(4, "big")


@dataclass
class _CommitJob:
    gen: int
    writes: list[tuple[int, bytes]]
    superblock: bytes
    nodes: list[Node]
    epoch: int


class Engine:
    """An open cartridge."""

    def __init__(
        self,
        dev: BlockDevice,
        header: Header,
        sealer: Sealer,
        payload: SuperPayload,
        gen: int,
        cache_bytes: int,
        readonly: bool,
        data_key: bytes | None,
        repair: bool = False,
    ) -> None:
        self.dev = dev
        self.header = header
        self.sealer = sealer
        self.readonly = readonly
        self.compress = bool(header.flags & Features.COMPRESSED)
        self._data_key = data_key
        self.cache = ArcCache(cache_bytes)
        self._writer = threading.RLock()
        self._commit = threading.Lock()
        self._readers_lock = threading.Lock()
        self._readers: Counter[int] = Counter()
        self._released_lock = threading.Lock()
        self._released: list[tuple[int, int]] = []  # see drop_released_pages
        # Called with each published transaction and the state it started from, under the
        # writer lock, once `state` is the new one; they must not raise (see _publish).
        self.on_publish: list[Callable[[Txn, State], None]] = []
        self.durable_gen = gen
        self.epoch = payload.epoch
        self.damaged: str | None = None
        self.commit_ns = payload.commit_ns
        self.state = State(
            gen=gen + 1,
            roots=dict(payload.roots),
            next_inode=max(payload.next_inode, FIRST_INODE),
            data_raw=payload.data_raw,
            data_stored=payload.data_stored,
            flags=payload.flags,
        )
        self.alloc = Allocator(header.nblocks, self._load_free_map(), self._system_blocks())
        if payload.flags & FLAG_NEEDS_CHECK and not readonly and not repair:
            log.warning("cartridge is marked as needing a check (run cartridge fsck); opening read-only")
            self.readonly = True

    # --- opening and creating ---

    @classmethod
    def create(
        cls,
        path: str,
        nblocks: int,
        *,
        compression: bool = True,
        passphrase: bytes | None = None,
        kdf_log2n: int = 17,
        fuses: Fuses | None = None,
        cache_bytes: int = DEFAULT_CACHE,
    ) -> Engine:
        """Create a new cartridge file and return it open."""
        if nblocks < 16:
            raise InvalidArgument("a cartridge needs at least 16 blocks")
        dev = FileDevice.create(path, nblocks)
        try:
            return cls.format(
                dev,
                compression=compression,
                passphrase=passphrase,
                kdf_log2n=kdf_log2n,
                fuses=fuses,
                cache_bytes=cache_bytes,
            )
        except BaseException:
            dev.close()
            os.unlink(path)
            raise

    @classmethod
    def format(
        cls,
        dev: BlockDevice,
        *,
        compression: bool = True,
        passphrase: bytes | None = None,
        kdf_log2n: int = 17,
        fuses: Fuses | None = None,
        cache_bytes: int = DEFAULT_CACHE,
    ) -> Engine:
        """Write an empty cartridge onto `dev`."""
        uuid = os.urandom(16)
        flags = Features(0)
        if compression:
            flags |= Features.COMPRESSED
        data_key = None
        kdf = dict(kdf_id=0, log2n=0, r=0, p=0, salt=bytes(32))
        wrap_nonce, wrapped = bytes(12), bytes(48)
        if passphrase is not None:
            flags |= Features.ENCRYPTED
            data_key = keys.new_data_key()
            kdf = dict(kdf_id=1, log2n=kdf_log2n, r=8, p=1, salt=os.urandom(32))
            kek = keys.derive_kek(passphrase, kdf["salt"], kdf["log2n"], kdf["r"], kdf["p"])
            wrap_nonce, wrapped = keys.wrap_key(kek, data_key, uuid)
        header = Header(
            version=1,
            block_size=BLOCK_SIZE,
            nblocks=dev.nblocks,
            flags=flags,
            created_ns=time.time_ns(),
            fuses=fuses or Fuses(),
            uuid=uuid,
            wrap_nonce=wrap_nonce,
            wrapped_key=wrapped,
            **kdf,
        )
        write_header(dev, header, keys.header_mac_key(data_key) if data_key else None)
        sealer = cls._sealer(header, data_key, epoch=1)
        payload = SuperPayload(
            commit_ns=time.time_ns(), next_inode=FIRST_INODE, epoch=1, flags=0,
            data_raw=0, data_stored=0, roots={},
        )
        engine = cls(dev, header, sealer, payload, 0, cache_bytes, False, data_key)
        # Two commits, so that both superblock slots hold a valid generation from the start.
        engine.sync(force=True)
        engine.sync(force=True)
        return engine

    @classmethod
    def open(
        cls,
        path: str,
        *,
        passphrase: bytes | None = None,
        readonly: bool = False,
        cache_bytes: int = DEFAULT_CACHE,
        dev: BlockDevice | None = None,
        repair: bool = False,
    ) -> Engine:
        if dev is None:
            if not os.path.exists(path):
                raise NotFound(f"{path}: no such cartridge")
            dev = FileDevice.open(path, readonly=readonly)
        try:
            return cls.open_device(
                dev, passphrase=passphrase, readonly=readonly, cache_bytes=cache_bytes, repair=repair
            )
        except BaseException:
            dev.close()
            raise

    @classmethod
    def open_device(
        cls,
        dev: BlockDevice,
        *,
        passphrase: bytes | None = None,
        readonly: bool = False,
        cache_bytes: int = DEFAULT_CACHE,
        repair: bool = False,
    ) -> Engine:
        """Open a cartridge on `dev`; `repair` opens it writable even when it needs a check."""
        header, raw = read_header(dev)
        data_key = None
        if header.flags & Features.ENCRYPTED:
            if passphrase is None:
                raise PassphraseRequired("this cartridge is encrypted: a passphrase is required")
            kek = keys.derive_kek(passphrase, header.salt, header.log2n, header.r, header.p)
            data_key = keys.unwrap_key(kek, header.wrap_nonce, header.wrapped_key, header.uuid)
            Header.verify_mac(raw, keys.header_mac_key(data_key))
        probe = cls._sealer(header, data_key, epoch=0)
        gen, payload, valid = cls._newest_superblock(dev, probe)
        sealer = cls._sealer(header, data_key, epoch=payload.epoch + 1)
        engine = cls(dev, header, sealer, payload, gen, cache_bytes, readonly, data_key, repair)
        if not engine.readonly and header.flags & Features.ENCRYPTED:
            # Durably claim the new nonce epoch before encrypting anything with it: this commit
            # writes the superblock only (its nonce is random), no page.
            engine.epoch = payload.epoch + 1
            later = engine.alloc.take_dirty_chunks()
            engine.sync(force=True)
            engine.alloc.dirty_chunks.update(later)
            if engine.sealer.nonces_left != NONCES_PER_EPOCH:
                raise AssertionError("a page was encrypted before its nonce epoch was durable")
        elif not engine.readonly and valid < len(SUPER_BLOCKS):
            # A commit torn by a crash (or a damaged slot): the next generation goes to the bad
            # slot, so commit now to have a valid fallback superblock again.
            engine.sync(force=True)
        return engine

    @staticmethod
    def _sealer(header: Header, data_key: bytes | None, epoch: int) -> Sealer:
        if data_key is None:
            return ChecksumSealer(header.uuid)
        return AeadSealer(header.uuid, data_key, epoch)

    @staticmethod
    def _newest_superblock(dev: BlockDevice, sealer: Sealer) -> tuple[int, SuperPayload, int]:
        """(generation, payload) of the newest valid superblock, and how many slots are valid."""
        found = []
        for block in SUPER_BLOCKS:
            try:
                gen, payload = sealer.unseal_super(dev.read(block, 1), block=block)
                found.append((gen, SuperPayload.decode(payload)))
            except (IntegrityError, FormatError) as exc:
                log.warning("superblock at block %d is not valid: %s", block, exc)
        if not found:
            raise IntegrityError("no valid superblock: the cartridge is damaged")
        gen, payload = max(found, key=lambda item: item[0])
        return gen, payload, len(found)

    def _system_blocks(self) -> list[int]:
        return [0, *SUPER_BLOCKS, self.header.nblocks - 1]

    def _load_free_map(self) -> bytearray:
        nchunks = -(-self.header.nblocks // CHUNK_BLOCKS)
        persist = bytearray(nchunks * CHUNK_BYTES)
        for key, value in btree.items(self.state.roots.get("free"), self.load_node):
            index = int.from_bytes(key, "big")
            if index >= nchunks or not isinstance(value, bytes) or len(value) != CHUNK_BYTES:
                raise IntegrityError("malformed free-map entry")
            persist[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES] = value
        return persist

    # --- pages and extents ---

    def load_node(self, ptr: Ptr) -> Node:
        key = (ptr.block, ptr.seal)
        node = self.cache.get(key)
        if node is None:
            if ptr.kind != KIND_NODE:
                raise IntegrityError(f"block {ptr.block}: expected a tree page, pointer says kind {ptr.kind}")
            node = btree.decode(self._read(ptr), ptr)
            self.cache.put(key, node, BLOCK_SIZE + 64 * len(node.keys))
        return node

    def read_extent(self, ptr: Ptr, cache: bool = True, nowait: bool = False) -> bytes:
        """The decoded bytes of an extent or spilled value.

        `cache=False` for an extent read whole (a streaming reader will not come back for it):
        it is served from the cache if there, but not added, so big sequential reads do not
        push the cache's working set out or hold memory.

        `nowait` (a read on the event loop): WouldBlock rather than wait for the disk or spend
        long on decoding: unless cached, the extent must be stored as it is (not compressed,
        not encrypted: only its checksum to verify) and its blocks in the page cache.
        """
        key = (ptr.block, ptr.seal)
        data = self.cache.get(key)
        if data is None:
            if nowait and (ptr.codec != CODEC_RAW or self.sealer.encrypted):
                raise WouldBlock("the extent needs decoding")
            data = decode_extent(ptr.codec, self._read(ptr, nowait), ptr.raw_len)
            if cache:
                self.cache.put(key, data, len(data) + 64)
        return data

    def _read(self, ptr: Ptr, nowait: bool = False) -> bytes:
        try:
            if nowait:
                raw = self.dev.read_cached(ptr.block, ptr.nblocks)
            else:
                raw = self.dev.read(ptr.block, ptr.nblocks)
            return self.sealer.unseal(
                raw[: ptr.stored_len], block=ptr.block, birth=ptr.birth, kind=ptr.kind,
                nonce=ptr.nonce, seal=ptr.seal,
            )
        except IntegrityError as exc:
            self._mark_damaged(str(exc))
            raise

    def write_extent(self, data: bytes | memoryview, kind: int = KIND_EXTENT) -> Ptr:
        """Store `data` in newly reserved blocks; it is free again unless a transaction links it."""
        self._check_writable()
        if not data:
            raise InvalidArgument("an extent cannot be empty")
        codec, encoded = encode_extent(data, self.compress and kind == KIND_EXTENT)
        nblocks = -(-len(encoded) // BLOCK_SIZE)
        block = self.alloc.reserve(nblocks)
        try:
            birth = self.state.gen
            stored, nonce, seal = self.sealer.seal(encoded, block=block, birth=birth, kind=kind)
            pad = nblocks * BLOCK_SIZE - len(stored)
            self.dev.write(block, b"".join((stored, bytes(pad))) if pad else stored)
        except BaseException:
            self.alloc.unreserve(block)
            raise
        return Ptr(block, nblocks, birth, kind, codec, len(data), len(stored), nonce, seal)

    def write_data(self, data: bytes | memoryview, extent_max: int = EXTENT_MAX) -> list[tuple[int, Ptr]]:
        """Store file data as extents of at most `extent_max` bytes: [(offset in data, ptr)].

        When no run of blocks is long enough, smaller extents are used, down to one block, so a
        fragmented cartridge can still be filled; if even that fails nothing stays reserved.
        """
        view = memoryview(data)
        out: list[tuple[int, Ptr]] = []
        pos, size = 0, extent_max
        try:
            while pos < len(view):
                piece = view[pos : pos + size]
                try:
                    out.append((pos, self.write_extent(piece)))
                except NoSpace:
                    if size <= BLOCK_SIZE:
                        raise
                    size = max(BLOCK_SIZE, size // 2)
                    continue
                pos += len(piece)
        except BaseException:
            self.abandon([ptr for _, ptr in out])
            raise
        return out

    def abandon(self, ptrs: list[Ptr]) -> None:
        """Give back extents written but never linked by a published transaction."""
        for ptr in ptrs:
            if self.alloc.is_reserved(ptr.block):
                self.alloc.unreserve(ptr.block)

    def value(self, raw: Value | None) -> bytes | Ref | None:
        """A leaf value as the layers above see it: spilled values read back as bytes."""
        if isinstance(raw, Ref) and raw.ptr.kind == KIND_BLOB:
            return self.read_extent(raw.ptr)
        return raw

    # --- transactions and readers ---

    @contextlib.contextmanager
    def txn(self, reserved: list[Ptr] = ()) -> Iterator[Txn]:
        """One atomic change. `reserved`: extents written for it, given back unless linked."""
        with self._writer:
            try:
                self._check_writable()
                t = Txn(self, self.state)
                try:
                    yield t
                except BaseException:
                    self.abandon(t.spilled)
                    raise
                self._publish(t)
            finally:
                self.abandon(list(reserved))

    def _publish(self, t: Txn) -> None:
        for ptr in t.linked.values():
            self.alloc.link(ptr.block, ptr.nblocks)
        for ptr in t.freed:
            self.alloc.free(ptr.block, ptr.nblocks, t.state.gen)
        self.state = t.result()
        for hook in self.on_publish:
            try:
                hook(t, t.state)
            except Exception:  # the transaction is published: its caller must not see a failure
                log.exception("a publish hook failed")

    def reader(self, snapshot: str | None = None) -> _Reading:
        """A consistent read-only view (`with engine.reader() as state:`); blocks it can see are
        not reused until it ends."""
        return _Reading(self, snapshot)

    def get(self, state: State, tree: str, key: bytes) -> bytes | Ref | None:
        return self.value(btree.get(state.roots.get(tree), key, self.load_node))

    def items(
        self, state: State, tree: str, start: bytes = b"", end: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, Value]]:
        return btree.items(state.roots.get(tree), self.load_node, start, end, reverse)

    def _reclaim(self) -> None:
        with self._readers_lock:
            oldest = min(self._readers) if self._readers else None
        released = self.alloc.reclaim(self.durable_gen, oldest)
        if released:
            with self._released_lock:
                self._released += released
                if len(self._released) > RELEASED_RUNS_MAX:
                    runs = sorted(_merge_runs(self._released), key=lambda run: run[1], reverse=True)
                    self._released = runs[: RELEASED_RUNS_MAX // 2]

    @property
    def has_released_pages(self) -> bool:
        """Blocks became reusable since the last `drop_released_pages`."""
        return bool(self._released)

    def drop_released_pages(self) -> int:
        """Tell the OS to drop its cached pages of the blocks that became reusable since the last
        call; returns how many blocks. The blocks' old contents are garbage: cached, they would
        crowd out live data and make fresh pages dear until memory runs short. Blocking (about
        40 ms per GiB): call it from a worker thread. A block reused meanwhile just loses its
        cached pages (written ones are written back first, as the kernel always does)."""
        with self._released_lock:
            runs, self._released = self._released, []
        dropped = 0
        for block, count in _merge_runs(runs):
            self.dev.forget_cached(block, count)
            dropped += count
        return dropped

    def _check_writable(self) -> None:
        if self.readonly:
            raise ReadOnly("the cartridge is open read-only")
        if self.damaged:
            raise ReadOnly(f"the cartridge turned read-only after detecting damage: {self.damaged}")

    def _mark_damaged(self, why: str) -> None:
        if not self.damaged:
            log.error("integrity failure, cartridge now read-only until checked: %s", why)
            self.damaged = why
            # The next commit records "needs check" in the superblock.
            self.state = replace(self.state, dirty=True)

    def clear_needs_check(self) -> None:
        """After a clean fsck: let the cartridge be opened for writing again."""
        self.damaged = None
        with self._writer:
            self.state = replace(self.state, flags=self.state.flags & ~FLAG_NEEDS_CHECK, dirty=True)
        self.sync()

    # --- commits ---

    @property
    def needs_check(self) -> bool:
        return bool(self.state.flags & FLAG_NEEDS_CHECK) or self.damaged is not None

    @property
    def needs_commit(self) -> bool:
        return self.state.ops >= COMMIT_OPS

    @property
    def sync_target(self) -> int:
        """The generation that holds everything published so far (it may be being written)."""
        state = self.state
        return state.gen if state.dirty else state.gen - 1

    def sync(self, force: bool = False) -> int:
        """Make everything published so far durable (group commit); returns the durable generation.

        A commit already writing the generation we need is waited for, not repeated; callers
        arriving while a commit writes share the next one.
        """
        target = self.sync_target
        if self.readonly or (not force and self.durable_gen >= target):
            return self.durable_gen
        with self._commit:
            if self.durable_gen >= target and not force:
                return self.durable_gen
            with self._writer:
                job = self._prepare_or_stop()
            self._write(job)
        return self.durable_gen

    def _prepare_or_stop(self) -> _CommitJob:
        """`_prepare`, but a failure half-way leaves the in-memory state unusable: stop writing."""
        try:
            return self._prepare()
        except BaseException as exc:
            log.error("commit preparation failed, the cartridge is now read-only: %s", exc)
            self.readonly = True
            raise

    def _prepare(self) -> _CommitJob:
        """Assign blocks to every new page, encode and seal them; publish the committed state."""
        state = self.state
        gen = state.gen
        t = Txn(self, state)
        t._tree = "free"  # the commit itself only shadows free-map pages, never shared ones
        roots = t.roots
        new_nodes: list[Node] = []
        for name in ("fs", "snap", "meta", "rc"):
            self._assign(roots.get(name), new_nodes)
        while True:
            for index in self.alloc.take_dirty_chunks():
                roots["free"], _ = btree.put(t, roots.get("free"), _chunk_key(index), self.alloc.chunk(index))
            for ptr in t.freed:
                self.alloc.free(ptr.block, ptr.nblocks, gen)
            t.freed.clear()
            self._assign(roots.get("free"), new_nodes)
            if not self.alloc.dirty_chunks:
                break
        writes: list[tuple[int, bytes]] = []
        stored_roots = {name: self._store(roots.get(name), gen, writes) for name in TREES}
        epoch = self.epoch
        if isinstance(self.sealer, AeadSealer) and self.sealer.nonces_left < _EPOCH_ROTATE_BELOW:
            epoch += 1  # takes effect once this superblock is durable, see _write
        payload = SuperPayload(
            commit_ns=time.time_ns(),
            next_inode=state.next_inode,
            epoch=epoch,
            flags=state.flags | (FLAG_NEEDS_CHECK if self.damaged else 0),
            data_raw=state.data_raw,
            data_stored=state.data_stored,
            roots=stored_roots,
        )
        block = SUPER_BLOCKS[gen % 2]
        superblock = self.sealer.seal_super(payload.encode(), block=block, generation=gen)
        self.state = State(
            gen=gen + 1,
            roots=dict(roots),
            next_inode=state.next_inode,
            data_raw=state.data_raw,
            data_stored=state.data_stored,
            flags=state.flags,
        )
        self.commit_ns = payload.commit_ns
        return _CommitJob(gen, writes, superblock, new_nodes, epoch)

    def _assign(self, root: Child | None, new_nodes: list[Node]) -> None:
        """Give every not-yet-stored node under `root` a block (children first)."""
        if root is None or isinstance(root, Ptr) or root.ptr is not None:
            return
        # Children first, even under a node that has its block already: the free-map loop may
        # split a page of the commit's own free-map tree after its parent got a block.
        if root.level:
            for child in root.vals:
                self._assign(child, new_nodes)
        if root.block is None:
            root.block = self.alloc.assign(1)
            new_nodes.append(root)

    def _store(self, root: Child | None, gen: int, writes: list[tuple[int, bytes]]) -> Ptr | None:
        """Encode and seal new nodes bottom-up; returns the root's pointer."""
        if root is None:
            return None
        if isinstance(root, Ptr):
            return root
        if root.ptr is not None:
            return root.ptr
        if root.level:
            for child in root.vals:
                self._store(child, gen, writes)
        data = btree.encode(root)
        assert root.block is not None
        stored, nonce, seal = self.sealer.seal(data, block=root.block, birth=gen, kind=KIND_NODE)
        root.ptr = Ptr(root.block, 1, gen, KIND_NODE, CODEC_RAW, len(data), len(stored), nonce, seal)
        root.txn = -1
        writes.append((root.block, stored + bytes(BLOCK_SIZE - len(stored))))
        return root.ptr

    def _write(self, job: _CommitJob) -> None:
        """Write the pages, sync, write the superblock, sync — then the generation is durable."""
        try:
            for block, data in _coalesce(job.writes):
                self.dev.write(block, data)
            self.dev.sync()
            self.dev.write(SUPER_BLOCKS[job.gen % 2], job.superblock)
            self.dev.sync()
        except BaseException as exc:
            if isinstance(exc, OSError | CartridgeError):
                self._mark_damaged(f"commit of generation {job.gen} failed: {exc}")
            raise
        self.durable_gen = job.gen
        if job.epoch != self.epoch:
            self.epoch = job.epoch
            self.sealer = self._sealer(self.header, self._data_key, job.epoch)
        for node in job.nodes:
            self.cache.put((node.block, node.ptr.seal), node, BLOCK_SIZE + 64 * len(node.keys))
            if node.level:
                node.vals[:] = [c.ptr if isinstance(c, Node) else c for c in node.vals]
        self._reclaim()

    # --- snapshots ---

    def snapshot_create(self, name: str) -> None:
        """Record the current state under `name` (O(1): one reference to the root page)."""
        key = _snapshot_key(name)
        # The writer lock is held while the commit writes (snapshots are rare): the live root
        # must be a stored page to be shared, and no transaction may change it in between.
        with self._commit, self._writer:
            if btree.get(self.state.roots.get("snap"), key, self.load_node) is not None:
                raise Exists(f"snapshot {name!r} already exists")
            job = self._prepare_or_stop()
            # Written before the transaction below: a prepared generation is the working state
            # (its pages count as stored), so it must reach the disk even if that one fails.
            self._write(job)
            with self.txn() as t:
                root = t.roots.get("fs")
                if root is None:
                    raise InvalidArgument("nothing to snapshot yet")
                ptr = root if isinstance(root, Ptr) else root.ptr
                extra = _SNAP_META.pack(time.time_ns(), job.gen)
                t.put("snap", key, Ref(ptr, extra))
        self.sync()

    def snapshot_delete(self, name: str) -> None:
        """Forget a snapshot; pages and extents nothing else uses become free."""
        with self.txn() as t:
            if not t.delete("snap", _snapshot_key(name)):
                raise NotFound(f"no snapshot named {name!r}")
        self.sync()

    def snapshot_restore(self, name: str) -> None:
        """Make the live tree what the snapshot holds (the snapshot itself stays)."""
        key = _snapshot_key(name)
        with self._commit, self._writer:
            # Commit first (see snapshot_create), so that the live root is a stored page we can
            # drop: dropping it reads it back, which needs it on disk or in the cache.
            self._write(self._prepare_or_stop())
            with self.txn() as t:
                ref = t.get("snap", key)
                if not isinstance(ref, Ref):
                    raise NotFound(f"no snapshot named {name!r}")
                old = t.roots.get("fs")
                t.incref(ref.ptr)
                if old is not None:
                    t.decref(old if isinstance(old, Ptr) else old.ptr)
                t.set_root("fs", ref.ptr)
        self.sync()

    def snapshots(self, state: State | None = None) -> list[SnapshotInfo]:
        state = state or self.state
        out = []
        for key, val in btree.items(state.roots.get("snap"), self.load_node):
            created_ns, gen = _SNAP_META.unpack(val.extra)
            out.append(SnapshotInfo(key.decode(), created_ns, gen, val.ptr))
        return out

    def _snapshot_state(self, state: State, name: str) -> State:
        ref = btree.get(state.roots.get("snap"), _snapshot_key(name), self.load_node)
        if not isinstance(ref, Ref):
            raise NotFound(f"no snapshot named {name!r}")
        return replace(state, roots={**state.roots, "fs": ref.ptr}, dirty=False)

    def rebuild_free_map(self, used: bytearray) -> None:
        """Replace the free map by `used` (from an fsck walk) and commit it."""
        with self._commit, self._writer:
            self.alloc = Allocator(self.header.nblocks, used, self._system_blocks())
            self.alloc.dirty_chunks.update(range(self.alloc.nchunks))
            self.state = replace(self.state, dirty=True)
        self.sync(force=True)

    # --- header fuses, information, closing ---

    @property
    def fuses(self) -> Fuses:
        return self.header.fuses

    def set_fuses(self, fuses: Fuses) -> None:
        self._check_writable()
        with self._writer:
            self.header = replace(self.header, fuses=fuses)
            write_header(self.dev, self.header, keys.header_mac_key(self._data_key) if self._data_key else None)

    def info(self) -> dict:
        state = self.state
        a = self.alloc
        return {
            "blocks": self.header.nblocks,
            "block_size": BLOCK_SIZE,
            "size_bytes": self.header.nblocks * BLOCK_SIZE,
            "used_blocks": a.used_blocks,
            "free_blocks": a.free_blocks,
            "reserved_blocks": a.reserved_blocks,
            "pending_blocks": a.pending_blocks,
            "data_bytes": state.data_raw,
            "data_stored_bytes": state.data_stored,
            "compression_ratio": (state.data_raw / state.data_stored) if state.data_stored else 1.0,
            "compression": "zstd" if self.compress else "none",
            "encrypted": bool(self.header.flags & Features.ENCRYPTED),
            "generation": self.durable_gen,
            "fuses": self.header.fuses,
            "snapshots": self.snapshots(state),
            "readonly": self.readonly,
            "damaged": self.damaged,
            "uuid": self.header.uuid.hex(),
        }

    def close(self) -> None:
        try:
            if not self.readonly:
                self.sync()
                self.drop_released_pages()
        finally:
            self.dev.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    created_ns: int
    gen: int
    root: Ptr


_SNAP_META = struct.Struct("<QQ")


def _snapshot_key(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) > 255 or "/" in name or name in (".", "..") or "\0" in name:
        raise InvalidArgument(f"invalid snapshot name {name!r}")
    return raw


def _merge_runs(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Runs of blocks (block, count), sorted, with adjacent ones joined."""
    merged: list[tuple[int, int]] = []
    for block, count in sorted(runs):
        if merged and merged[-1][0] + merged[-1][1] == block:
            merged[-1] = (merged[-1][0], merged[-1][1] + count)
        else:
            merged.append((block, count))
    return merged


def _coalesce(writes: list[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """Merge writes to adjacent blocks into single larger writes."""
    run_start, run = None, []
    for block, data in sorted(writes):
        if run and block == run_start + len(run):
            run.append(data)
            continue
        if run:
            yield run_start, b"".join(run)
        run_start, run = block, [data]
    if run:
        yield run_start, b"".join(run)


class _Reading:
    """`Engine.reader()`: pins the generation it reads, so its blocks are not reused meanwhile.
    A class rather than a generator-based context manager: lookups pin one per request, and
    this costs half as much."""

    __slots__ = ("_engine", "_snapshot", "_gen")

    def __init__(self, engine: Engine, snapshot: str | None) -> None:
        self._engine, self._snapshot = engine, snapshot

    def __enter__(self) -> State:
        engine = self._engine
        with engine._readers_lock:
            state = engine.state
            engine._readers[state.gen] += 1
        self._gen = state.gen
        if self._snapshot is None:
            return state
        try:
            return engine._snapshot_state(state, self._snapshot)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        engine, gen = self._engine, self._gen
        with engine._readers_lock:
            engine._readers[gen] -= 1
            last = not engine._readers[gen]
            if last:
                del engine._readers[gen]
        if last:  # the oldest pinned generation may have moved: blocks may be reusable now
            engine._reclaim()

