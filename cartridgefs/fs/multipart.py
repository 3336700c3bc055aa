"""Multipart uploads kept in the cartridge: the upload records, their parts, and assembly.

An upload is a record in the engine's `meta` tree; each part is a nameless inode (a file with no
directory entry) holding the part's bytes as ordinary extent items. While a part is being
received its inode is an orphan (freed at the next mount if the server dies); once complete it is
*held* by its part record instead, so uploads survive restarts. Completing an upload moves the
parts' extent items to a new inode at their offsets in the object — moving a `Ref` in one
transaction changes no reference count and copies no data — and names that inode, all in one
transaction. Layout of the records: docs/filesystem.md ("Multipart uploads").

The S3 rules (part sizes, ETags, checksums) are the caller's: `Uploads.complete` takes a `plan`
function that sees the stored parts inside the completing transaction and decides.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from ..engine.btree import Ref
from ..engine.store import Engine
from ..engine.txn import State, Txn
from ..errors import NotFound
from .filesystem import Change, Ctx, FileSystem, FsView
from .items import (
    T_EXTENT,
    Inode,
    extent_key,
    extent_offset,
    inode_key,
    inode_prefix,
    next_prefix,
    orphan_key,
)

UPLOAD = b"mpu.upload"  # ‖ bucket inode u64 ‖ upload id → upload record (JSON)
PART = b"mpu.part"  # ‖ upload id ‖ part number u32 → part record (JSON)
HELD = b"mpu.held"  # ‖ part inode u64 → upload id ‖ part number u32 (keeps the nameless inode)
DONE = b"mpu.done"  # ‖ upload id → completion record (JSON), answered to retried completions
DONE_AT = b"mpu.doneat"  # ‖ completion time u64 ‖ upload id → b"" (prunes old completion records)
DONE_KEEP_NS = 24 * 3600 * 10**9
ASSEMBLED_DATA_VERSION = 0  # the content version of an assembled file (a new inode)
DONE_PRUNE = 64  # completion records pruned per completion at most
# The layout of an assembled object, kept with it (bound to its inode number and content
# version: a copy, or a change through the mount, makes it stale). The `cartridge.s3.` prefix
# hides it from the mount.
LAYOUT_XATTR = b"cartridge.s3.parts"
_LAYOUT = struct.Struct("<QQI16s")  # ino, data_version, part count, MD5 of the parts' MD5s
_RUN = struct.Struct("<QI")  # part size, number of consecutive parts of that size
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class UploadNotFound(NotFound):
    """No upload of that id (never created, aborted or completed)."""


def _b2s(raw: bytes) -> str:
    return raw.decode("latin-1")


def _s2b(text: str) -> bytes:
    return text.encode("latin-1")


@dataclass(frozen=True)
class Upload:
    """An upload in progress: where the object goes and what it will carry."""

    upload_id: str
    bucket_ino: int
    bucket: str
    key: bytes
    initiated_ns: int
    xattrs: dict[bytes, bytes] = field(default_factory=dict)  # given to the object
    info: dict[str, str] = field(default_factory=dict)  # the caller's (checksum algorithm, ...)

    def encode(self) -> bytes:
        return json.dumps({
            "bucket": self.bucket, "key": _b2s(self.key), "initiated": self.initiated_ns,
            "xattrs": {_b2s(k): _b2s(v) for k, v in self.xattrs.items()}, "info": self.info,
        }).encode()

    @classmethod
    def decode(cls, upload_id: str, bucket_ino: int, raw: bytes) -> Upload:
        d = json.loads(raw)
        return cls(upload_id, bucket_ino, d["bucket"], _s2b(d["key"]), d["initiated"],
                   {_s2b(k): _s2b(v) for k, v in d["xattrs"].items()}, d["info"])


@dataclass(frozen=True)
class Part:
    """A stored part: its hidden inode, size, MD5 and checksums (algorithm → base64)."""

    number: int
    ino: int
    size: int
    md5: bytes
    mtime_ns: int
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def etag(self) -> str:
        return self.md5.hex()

    def encode(self) -> bytes:
        return json.dumps({"ino": self.ino, "size": self.size, "md5": self.md5.hex(),
                           "mtime": self.mtime_ns, "checksums": self.checksums}).encode()

    @classmethod
    def decode(cls, number: int, raw: bytes) -> Part:
        d = json.loads(raw)
        return cls(number, d["ino"], d["size"], bytes.fromhex(d["md5"]), d["mtime"], d["checksums"])


@dataclass(frozen=True)
class Assembly:
    """What `plan` decides: the parts in object order, the object's attributes, and the result
    to store for retried completions."""

    parts: list[Part]
    etag_md5: bytes  # stored as the inode's ETag MD5 (the MD5 of the parts' MD5s)
    xattrs: dict[bytes, bytes]
    result: bytes
    mtime_ns: int | None = None


@dataclass(frozen=True)
class Completed:
    """A completion, remembered so that a retried CompleteMultipartUpload gets the same answer."""

    bucket_ino: int
    key: bytes
    result: bytes


@dataclass(frozen=True)
class Layout:
    """How an assembled object was cut into parts."""

    etag_md5: bytes
    sizes: list[int]

    @property
    def etag(self) -> str:
        return f"{self.etag_md5.hex()}-{len(self.sizes)}"

    def part_range(self, number: int) -> tuple[int, int] | None:
        """(first byte, size) of part `number` (1-based), or None if there is no such part."""
        if not 1 <= number <= len(self.sizes):
            return None
        return sum(self.sizes[: number - 1]), self.sizes[number - 1]

    def encode(self, ino: int, data_version: int) -> bytes:
        runs: list[list[int]] = []
        for size in self.sizes:
            if runs and runs[-1][0] == size:
                runs[-1][1] += 1
            else:
                runs.append([size, 1])
        head = _LAYOUT.pack(ino, data_version, len(self.sizes), self.etag_md5)
        return head + b"".join(_RUN.pack(size, count) for size, count in runs)

    @classmethod
    def decode_for(cls, inode: Inode, raw: bytes) -> Layout | None:
        """The layout if it still describes `inode`'s content, else None."""
        ino, version, _count, md5 = _LAYOUT.unpack_from(raw)
        if ino != inode.ino or version != inode.data_version or inode.etag_version != version:
            return None
        sizes: list[int] = []
        for pos in range(_LAYOUT.size, len(raw), _RUN.size):
            size, count = _RUN.unpack_from(raw, pos)
            sizes.extend([size] * count)
        return cls(md5, sizes)


def layouts(view: FsView, inodes: Iterable[Inode]) -> dict[int, Layout]:
    """`Uploads.layout` of many objects (by inode number; ordinary objects left out), read
    through `view`: pinned (`FsView.pinned`), the state the inodes were read from."""
    # A layout is stored with a new inode of ASSEMBLED_DATA_VERSION, and is stale once the
    # content changes: only such inodes need a look (not the bulk of a listing).
    assembled = [inode for inode in inodes if inode.is_reg and inode.etag_version
                 == inode.data_version == ASSEMBLED_DATA_VERSION]
    raws = view.getxattrs([inode.ino for inode in assembled], LAYOUT_XATTR)
    found = {}
    for inode in assembled:
        layout = Layout.decode_for(inode, raws[inode.ino]) if inode.ino in raws else None
        if layout is not None:
            found[inode.ino] = layout
    return found


def etag_of_parts(md5s: list[bytes]) -> bytes:
    """The MD5 of the concatenated part MD5s (the multipart ETag without its "-N")."""
    return hashlib.md5(b"".join(md5s), usedforsecurity=False).digest()


def _upload_key(bucket_ino: int, upload_id: str) -> bytes:
    return UPLOAD + _U64.pack(bucket_ino) + upload_id.encode()


def _part_prefix(upload_id: str) -> bytes:
    return PART + upload_id.encode() + b"/"


def _part_key(upload_id: str, number: int) -> bytes:
    return _part_prefix(upload_id) + _U32.pack(number)


def _held_key(ino: int) -> bytes:
    return HELD + _U64.pack(ino)


def _extent_prefix(ino: int) -> bytes:
    return inode_prefix(ino) + bytes((T_EXTENT,))


Reader = Txn | State


class UploadRecords:
    """Reading the upload records of an engine (also without a FileSystem: fsck, `info`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _items(self, r: Reader, tree: str, prefix: bytes) -> Iterator[tuple[bytes, object]]:
        if isinstance(r, Txn):
            return r.items(tree, prefix, next_prefix(prefix))
        return self.engine.items(r, tree, prefix, next_prefix(prefix))

    def _get(self, r: Reader, tree: str, key: bytes) -> bytes | None:
        value = r.get(tree, key) if isinstance(r, Txn) else self.engine.get(r, tree, key)
        assert value is None or isinstance(value, bytes)
        return value

    def _upload_in(self, r: Reader, bucket_ino: int, upload_id: str) -> Upload:
        raw = self._get(r, "meta", _upload_key(bucket_ino, upload_id))
        if raw is None:
            raise UploadNotFound(f"no upload {upload_id!r}")
        return Upload.decode(upload_id, bucket_ino, raw)

    def parts_in(self, r: Reader, upload_id: str) -> dict[int, Part]:
        prefix = _part_prefix(upload_id)
        parts = {}
        for key, raw in self._items(r, "meta", prefix):
            number = _U32.unpack_from(key, len(prefix))[0]
            parts[number] = Part.decode(number, bytes(self.engine.value(raw)))
        return parts

    def uploads_in(self, r: Reader, bucket_ino: int | None = None) -> list[Upload]:
        """Uploads of one bucket (or of all buckets), in key, then initiation order."""
        prefix = UPLOAD if bucket_ino is None else UPLOAD + _U64.pack(bucket_ino)
        out = []
        for key, raw in self._items(r, "meta", prefix):
            owner = _U64.unpack_from(key, len(UPLOAD))[0]
            upload_id = key[len(UPLOAD) + 8:].decode()
            out.append(Upload.decode(upload_id, owner, bytes(self.engine.value(raw))))
        out.sort(key=lambda u: (u.key, u.initiated_ns, u.upload_id))
        return out

    def find_sync(self, upload_id: str) -> Upload:
        """An upload by id alone (the admin command does not know its bucket)."""
        with self.engine.reader() as state:
            for upload in self.uploads_in(state):
                if upload.upload_id == upload_id:
                    return upload
        raise UploadNotFound(f"no upload {upload_id!r}")

    def usage_sync(self) -> dict[str, int]:
        """Unfinished uploads, their parts, bytes and the blocks their extents hold."""
        uploads = parts = size = blocks = 0
        with self.engine.reader() as state:
            for upload in self.uploads_in(state):
                uploads += 1
                for part in self.parts_in(state, upload.upload_id).values():
                    parts += 1
                    size += part.size
                    for _, ref in self._items(state, "fs", _extent_prefix(part.ino)):
                        assert isinstance(ref, Ref)
                        blocks += ref.ptr.nblocks
        return {"uploads": uploads, "parts": parts, "bytes": size, "blocks": blocks}

    # --- consistency (fsck) ---

    def check(self, state: State) -> list[str]:
        """Part records, hold records and part inodes agree; every part belongs to an upload."""
        problems = []
        uploads = set()
        for upload in self.uploads_in(state):
            uploads.add(upload.upload_id)
            raw_bucket = self.engine.get(state, "fs", inode_key(upload.bucket_ino))
            if raw_bucket is None or not Inode.decode(upload.bucket_ino, raw_bucket).is_dir:
                problems.append(f"upload {upload.upload_id}: its bucket (inode {upload.bucket_ino}) is gone")
        held: dict[int, bytes] = {
            _U64.unpack_from(key, len(HELD))[0]: bytes(value)
            for key, value in self._items(state, "meta", HELD)
        }
        seen: set[int] = set()
        for key, raw in self._items(state, "meta", PART):
            upload_id = key[len(PART):].rpartition(b"/")[0].decode()
            number = _U32.unpack_from(key, len(key) - 4)[0]
            part = Part.decode(number, bytes(self.engine.value(raw)))
            where = f"upload {upload_id} part {number}"
            if upload_id not in uploads:
                problems.append(f"{where}: no such upload")
            if part.ino in seen:
                problems.append(f"{where}: inode {part.ino} used by two parts")
            seen.add(part.ino)
            if held.get(part.ino) != upload_id.encode() + _U32.pack(number):
                problems.append(f"{where}: inode {part.ino} is not held for it")
            raw_inode = self.engine.get(state, "fs", inode_key(part.ino))
            if raw_inode is None:
                problems.append(f"{where}: inode {part.ino} is missing")
            elif Inode.decode(part.ino, raw_inode).size != part.size:
                problems.append(f"{where}: inode {part.ino} size differs from the part's")
        for ino in sorted(set(held) - seen):
            problems.append(f"inode {ino} is held for a part that does not exist")
        return problems


class Uploads(UploadRecords):
    """The multipart uploads of a cartridge, over its FileSystem: synchronous `*_in`/`*_sync`
    methods work inside engine transactions and readers (the admin command uses them); the
    async ones are for the one trio loop."""

    def __init__(self, fs: FileSystem) -> None:
        super().__init__(fs.engine)
        self.fs = fs

    async def get(self, bucket_ino: int, upload_id: str) -> Upload:
        with self.engine.reader() as state:
            return self._upload_in(state, bucket_ino, upload_id)

    async def list(self, bucket_ino: int) -> list[Upload]:
        with self.engine.reader() as state:
            return self.uploads_in(state, bucket_ino)

    async def parts(self, bucket_ino: int, upload_id: str) -> list[Part]:
        """The stored parts in part-number order (UploadNotFound if the upload is gone)."""
        with self.engine.reader() as state:
            self._upload_in(state, bucket_ino, upload_id)
            return [part for _, part in sorted(self.parts_in(state, upload_id).items())]

    async def completed(self, upload_id: str) -> Completed | None:
        """The remembered completion of `upload_id`, if it completed recently."""
        with self.engine.reader() as state:
            raw = self._get(state, "meta", DONE + upload_id.encode())
        if raw is None:
            return None
        d = json.loads(raw)
        return Completed(d["bucket"], _s2b(d["key"]), _s2b(d["result"]))

    async def layout(self, inode: Inode) -> Layout | None:
        """The part layout of an assembled object, while it still describes the content."""
        return layouts(self.fs.view(), [inode]).get(inode.ino)

    # --- changing ---

    async def create(self, bucket_ino: int, bucket: str, key: bytes, xattrs: dict[bytes, bytes],
                     info: dict[str, str]) -> Upload:
        """Record a new upload with a fresh id."""
        upload = Upload(secrets.token_hex(16), bucket_ino, bucket, key, time.time_ns(), xattrs, info)

        def op() -> None:
            with self.engine.txn() as t:
                t.put("meta", _upload_key(bucket_ino, upload.upload_id), upload.encode())

        await self.fs._meta(op)
        return upload

    async def new_part_file(self, ctx: Ctx) -> int:
        """A nameless, open inode to receive a part (an orphan until `commit_part`)."""
        return await self.fs.create_unlinked(ctx)

    async def discard_part_file(self, ino: int) -> None:
        """Free a part file that was not committed (failed or refused upload)."""
        await self.fs.discard_unlinked(ino)

    async def commit_part(self, bucket_ino: int, upload_id: str, number: int, ino: int,
                          md5: bytes, checksums: dict[str, str]) -> Part:
        """Make the received file `ino` part `number`, replacing (and freeing) a previous one.
        Closes the file either way; UploadNotFound (and the file freed) if the upload is gone."""
        await self.fs.flush(ino)

        def op() -> Part:
            with self.engine.txn() as t:
                self._upload_in(t, bucket_ino, upload_id)
                inode = self.fs._inode(t, ino)
                part = Part(number, ino, inode.size, md5, time.time_ns(), checksums)
                old = self._get(t, "meta", _part_key(upload_id, number))
                if old is not None:
                    self._drop_part(t, Part.decode(number, bytes(self.engine.value(old))))
                t.delete("meta", orphan_key(ino))
                t.put("meta", _held_key(ino), upload_id.encode() + _U32.pack(number))
                t.put("meta", _part_key(upload_id, number), part.encode())
                return part

        try:
            part = await self.fs._meta(op)
        except BaseException:
            await self.discard_part_file(ino)
            raise
        await self.fs.release(ino)  # held by the part record now: not dropped
        return part

    def _drop_part(self, t: Txn, part: Part) -> None:
        """Free a part's inode and its records (inside `t`)."""
        inode = self.fs._inode_or_none(t, part.ino)
        if inode is not None:
            self.fs._drop(t, inode)
        t.delete("meta", _held_key(part.ino))

    def abort_in(self, t: Txn, upload: Upload) -> None:
        """Delete an upload and free every part (inside `t`)."""
        for number, part in self.parts_in(t, upload.upload_id).items():
            self._drop_part(t, part)
            t.delete("meta", _part_key(upload.upload_id, number))
        t.delete("meta", _upload_key(upload.bucket_ino, upload.upload_id))

    def abort_sync(self, upload: Upload) -> None:
        with self.engine.txn() as t:
            self.abort_in(t, self._upload_in(t, upload.bucket_ino, upload.upload_id))

    async def abort(self, bucket_ino: int, upload_id: str) -> None:
        """Abort an upload: every block its parts use is freed (UploadNotFound if unknown)."""
        upload = await self.get(bucket_ino, upload_id)
        await self._heavy(self.abort_sync, upload)

    async def complete(self, ctx: Ctx, bucket_ino: int, upload_id: str, parent: int, name: bytes,
                       plan: Callable[[Upload, dict[int, Part]], Assembly]) -> Assembly:
        """Assemble the upload into file `name` of directory `parent` in ONE transaction: the
        chosen parts' extents move to a new inode (no data is copied), parts not chosen are
        freed, the file replaces any file of that name, and the completion is remembered.
        `plan` (S3's rules) sees the stored parts inside the transaction and may raise."""

        def op() -> Assembly:
            with self.engine.txn() as t:
                upload = self._upload_in(t, bucket_ino, upload_id)
                stored = self.parts_in(t, upload_id)
                assembly = plan(upload, stored)
                now = time.time_ns()
                total = sum(part.size for part in assembly.parts)
                inode = self.fs._new_inode(t, ctx, stat.S_IFREG | 0o644, now, nlink=0, size=total,
                                           data_version=ASSEMBLED_DATA_VERSION)
                base = 0
                for part in assembly.parts:
                    self._move_extents(t, part.ino, inode.ino, base)
                    base += part.size
                self.abort_in(t, upload)  # frees what is left: the emptied and unchosen parts
                layout = Layout(assembly.etag_md5, [part.size for part in assembly.parts])
                xattrs = {**assembly.xattrs, LAYOUT_XATTR: layout.encode(inode.ino, inode.data_version)}
                self.fs.name_unlinked(t, inode.ino, parent, name, md5=assembly.etag_md5, xattrs=xattrs,
                                      mtime_ns=assembly.mtime_ns)
                self._remember(t, upload, assembly.result, now)
                return assembly

        assembly = await self._heavy(op)
        await self.fs.emit(Change(ctx.origin, ino=parent, parent=parent, name=name))
        return assembly

    def _move_extents(self, t: Txn, src: int, dst: int, base: int) -> None:
        """Re-key every extent item of `src` to `dst` at `base` + its offset (refcounts net 0)."""
        for key, ref in list(t.items("fs", _extent_prefix(src), next_prefix(_extent_prefix(src)))):
            assert isinstance(ref, Ref)
            t.put("fs", extent_key(dst, base + extent_offset(key)), ref)
            t.delete("fs", key)

    def _remember(self, t: Txn, upload: Upload, result: bytes, now: int) -> None:
        """Record the completion for retries; forget completions older than DONE_KEEP_NS."""
        for key, _ in list(self._items(t, "meta", DONE_AT))[:DONE_PRUNE]:
            when = _U64.unpack_from(key, len(DONE_AT))[0]
            if when > now - DONE_KEEP_NS:
                break
            t.delete("meta", DONE + key[len(DONE_AT) + 8:])
            t.delete("meta", key)
        record = {"bucket": upload.bucket_ino, "key": _b2s(upload.key), "result": _b2s(result)}
        t.put("meta", DONE + upload.upload_id.encode(), json.dumps(record).encode())
        t.put("meta", DONE_AT + _U64.pack(now) + upload.upload_id.encode(), b"")

    async def _heavy(self, fn: Callable, *args):
        """A transaction that may be large: always in a worker thread, then commit if due."""
        result = await self.fs._blocking(fn, *args)
        if self.engine.needs_commit:
            await self.fs._blocking(self.engine.sync)
        return result


def check_uploads(fsck) -> list[str]:
    """fsck check (see cartridgefs/fs/fsck.py): the multipart records are consistent."""
    return UploadRecords(fsck.engine).check(fsck.engine.state)
