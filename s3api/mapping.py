"""The S3 namespace over the POSIX tree (docs/s3-mapping.md).

A bucket is a directory in the root; key "a/b/c" is file c in directory /bucket/a/b. Directories
created only to hold a key are marked FLAG_IMPLICIT_DIR and removed again when a delete leaves
them empty; explicit directories ("dir/" markers, mkdir through the mount) stay, and list as the
object "dir/" while empty.

Listings walk the tree depth-first in S3 key (byte) order: directory d is the key prefix "d/", so
within a directory an entry sorts by `name + "/"` if it is a directory, else by `name` ("a.b"
sorts before "a/x"). A walk starts at the marker and skips whole subtrees below it, so a page
costs work proportional to the page, not to the bucket.
"""

from __future__ import annotations

import heapq
import logging
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cartridgefs.errors import Exists, NotADirectory, NotFound
from cartridgefs.fs.filesystem import FLAG_IMPLICIT_DIR, Ctx, FileSystem, FsView, Removal
from cartridgefs.fs.items import ROOT_INO, DirEntry, Inode
from cartridgefs.fs.multipart import LAYOUT_XATTR  # (also under XATTR_PREFIX: the part sizes)
from s3api.errors import S3Error
from s3api.names import parse_key, validate_bucket_name

log = logging.getLogger(__name__)

# S3 metadata lives in xattrs under this prefix: no Linux namespace ("user.", "trusted.", ...)
# starts so, and the FUSE side hides such names.
XATTR_PREFIX = b"cartridge.s3."
META_PREFIX = XATTR_PREFIX + b"meta."  # x-amz-meta-<name> -> cartridge.s3.meta.<name>
CHECKSUM_PREFIX = XATTR_PREFIX + b"checksum."  # cartridge.s3.checksum.CRC32 = b"<version>:<b64>"
# Standard headers stored as cartridge.s3.<lower-case header name>.
STORED_HEADERS = ("content-type", "content-encoding", "content-disposition", "content-language",
                  "cache-control", "expires")
LIST_BATCH = 1000
SLASH = 0x2F


def describes_content(name: bytes) -> bool:
    """Whether an S3 xattr describes the stored bytes (checksums, the part layout) rather than
    the object's metadata: kept when a copy onto itself replaces the metadata, never copied to
    another object."""
    return name.startswith(CHECKSUM_PREFIX) or name == LAYOUT_XATTR


def bucket_name_bytes(bucket: str) -> bytes:
    validate_bucket_name(bucket)
    return bucket.encode()


async def bucket_inode(fs: FileSystem, bucket: str) -> Inode:
    """The bucket's directory; NoSuchBucket if it is missing (or not a directory)."""
    name = bucket_name_bytes(bucket)
    try:
        inode = await fs.lookup(ROOT_INO, name)
    except NotFound:
        raise S3Error("NoSuchBucket", BucketName=bucket) from None
    if not inode.is_dir:
        raise S3Error("NoSuchBucket", BucketName=bucket)
    return inode


@dataclass(frozen=True, slots=True)
class KeyPath:
    """A validated key as names: parent directory names, the last name, and marker-ness."""

    key: str
    parents: tuple[bytes, ...]
    name: bytes
    is_directory: bool


def key_path(key: str) -> KeyPath:
    parsed = parse_key(key)
    names = tuple(segment.encode() for segment in parsed.segments)
    return KeyPath(key, names[:-1], names[-1], parsed.is_directory)


async def resolve_parent(fs: FileSystem, bucket_ino: int, kp: KeyPath) -> list[Inode] | None:
    """The chain of parent directories of a key (bucket first), or None if one is missing or
    not a directory (reading never creates anything)."""
    chain = [await fs.getattr(bucket_ino)]
    for name in kp.parents:
        try:
            inode = await fs.lookup(chain[-1].ino, name)
        except (NotFound, NotADirectory):
            return None
        if not inode.is_dir:
            return None
        chain.append(inode)
    return chain


async def lookup_object(fs: FileSystem, bucket_ino: int, kp: KeyPath, bucket: str) -> Inode:
    """The inode a key names: a regular file, or for "dir/" an explicit directory; else NoSuchKey."""
    chain = await resolve_parent(fs, bucket_ino, kp)
    missing = S3Error("NoSuchKey", Key=kp.key, BucketName=bucket)
    if chain is None:
        raise missing
    try:
        inode = await fs.lookup(chain[-1].ino, kp.name)
    except (NotFound, NotADirectory):
        raise missing from None
    if kp.is_directory:
        if not inode.is_dir or inode.flags & FLAG_IMPLICIT_DIR:
            raise missing
    elif not inode.is_reg:
        raise missing
    return inode


async def ensure_parents(fs: FileSystem, ctx: Ctx, bucket_ino: int, kp: KeyPath,
                         bucket: str) -> tuple[list[Inode], list[Inode]]:
    """Create the missing parent directories of a key (implicit). Returns the chain (bucket
    first) and the directories created, for `remove_empty_implicit` when the write fails."""
    chain = [await fs.getattr(bucket_ino)]
    created: list[Inode] = []
    for name in kp.parents:
        parent = chain[-1]
        try:
            inode = await fs.lookup(parent.ino, name)
        except NotFound:
            try:
                inode = await fs.mkdir(ctx, parent.ino, name, flags=FLAG_IMPLICIT_DIR)
                created.append(inode)
            except Exists:
                inode = await fs.lookup(parent.ino, name)
        if not inode.is_dir:
            raise S3Error("ObjectParentIsFile", Key=kp.key, BucketName=bucket)
        chain.append(inode)
    return chain, created


async def remove_empty_implicit(fs: FileSystem, ctx: Ctx, chain: list[Inode], names: tuple[bytes, ...]) -> None:
    """Walk up from the key's parent removing implicit directories left empty; stop at the
    first explicit or non-empty directory and at the bucket (chain[0])."""
    try:
        await fs.remove_empty_implicit(ctx, chain[0].ino, names)
    except (NotFound, NotADirectory):
        return  # the bucket went away meanwhile
    except Exception:  # never fail the request for it
        log.exception("removing empty implicit directories")


def removal(kp: KeyPath) -> Removal:
    """What deleting the key's object removes (`FileSystem.remove_paths`, with XATTR_PREFIX)."""
    return Removal((*kp.parents, kp.name), kp.is_directory)


# ------------------------------------------------------------------------------- listing


@dataclass(frozen=True, slots=True)
class Listed:
    """One item of a walk: an object (file, or empty explicit directory "d/"), or a common
    prefix (a directory rolled up under delimiter "/")."""

    key: bytes
    ino: int
    kind: str  # "file", "dir" (empty explicit directory object), "prefix"


def _pred_bound(first: bytes) -> bytes:
    """A `start_after` such that listdir_sorted returns exactly the names >= `first`."""
    if not first:
        return b""
    # No name is longer than 255 bytes, so no name lies between this and `first`.
    return first[:-1] + bytes((first[-1] - 1,)) + b"\xff" * 256


def _entries(view: FsView, ino: int, first: bytes, within: bytes) -> Iterator[tuple[bytes, DirEntry]]:
    """Entries with name >= first, in name order, while names start with `within`."""
    after = _pred_bound(first)
    while True:
        batch = view.listdir_sorted(ino, after, LIST_BATCH)
        for name, entry in batch:
            if not name.startswith(within):
                if name > within:
                    return
                continue
            yield name, entry
        if len(batch) < LIST_BATCH:
            return
        after = batch[-1][0]


def walk(view: FsView, ino: int, base: bytes, marker: bytes, within: bytes = b"",
         rollup: bool = False) -> Iterator[Listed]:
    """Keys under directory `ino` (whose key prefix is `base`) greater than `marker`, in key
    order; only names starting with `within` at this level. With `rollup`, directories come out
    as common prefixes instead of being walked (delimiter "/")."""
    rest = marker[len(base):] if marker and marker.startswith(base) else None
    if marker and rest is None and marker > base:
        return  # everything here is <= marker (callers normally do not ask)
    seg = rest.split(b"/", 1)[0] if rest else b""
    first = max(within, seg)
    pending: list[tuple[bytes, bytes, int]] = []  # heap of directories: (name + "/", name, ino)
    if rest:
        # Directories whose name is a proper prefix of seg followed by a byte below "/" sort
        # after the marker although their name sorts before seg: look them up.
        for i in range(max(1, len(within)), len(seg)):
            if seg[i] < SLASH and seg.startswith(within):
                try:
                    inode = view.lookup(ino, seg[:i])
                except (NotFound, NotADirectory):
                    continue
                if inode.is_dir:
                    heapq.heappush(pending, (seg[:i] + b"/", seg[:i], inode.ino))
    seen_any = False
    for name, entry in _entries(view, ino, first, within):
        seen_any = True
        is_dir = stat.S_ISDIR(entry.dtype)
        sort_key = name + b"/" if is_dir else name
        while pending and pending[0][0] < sort_key:
            _, dname, dino = heapq.heappop(pending)
            yield from _below(view, dname, dino, base, marker, rollup)
        if is_dir:
            heapq.heappush(pending, (sort_key, name, entry.ino))
        elif stat.S_ISREG(entry.dtype):
            key = base + name
            if not marker or key > marker:
                yield Listed(key, entry.ino, "file")
    while pending:
        _, dname, dino = heapq.heappop(pending)
        yield from _below(view, dname, dino, base, marker, rollup)
    if not seen_any and rest is None and not within and base:
        # An empty directory: an object "d/" if it is explicit (not left over implicitly).
        inode = view.getattr(ino)
        if not inode.flags & FLAG_IMPLICIT_DIR and (not marker or base > marker):
            yield Listed(base, ino, "dir")


def _below(view: FsView, name: bytes, child: int, base: bytes, marker: bytes,
           rollup: bool) -> Iterable[Listed]:
    """What directory `name` (inode `child`) in the directory at `base` adds to a walk: its keys
    after the marker, or with `rollup` its common prefix. (Returned, not yielded, so that a walk
    nests one generator per directory level.)"""
    prefix = base + name + b"/"
    if marker and marker.startswith(prefix):
        return () if rollup else walk(view, child, prefix, marker)  # rollup: returned already
    if marker and prefix <= marker:
        return ()
    return (Listed(prefix, child, "prefix"),) if rollup else walk(view, child, prefix, b"")


@dataclass
class Page:
    contents: list[Listed]
    prefixes: list[bytes]
    truncated: bool
    last: bytes | None  # the last key or prefix returned (the next marker)


def list_page(view: FsView, bucket_ino: int, prefix: bytes, marker: bytes,
              delimiter: bytes | None, max_keys: int) -> Page:
    """One page of a listing: objects and common prefixes after `marker`, up to `max_keys`
    (one synchronous pass: give a pinned view, `FsView.pinned`)."""
    page = Page([], [], False, None)
    head, _, within = prefix.rpartition(b"/")
    base = head + b"/" if head or prefix.startswith(b"/") else b""
    ino = bucket_ino
    if base:
        for name in head.split(b"/"):
            if name in (b"", b".", b".."):
                return page
            try:
                inode = view.lookup(ino, name)
            except (NotFound, NotADirectory):
                return page
            if not inode.is_dir:
                return page
            ino = inode.ino
    if marker and marker < prefix:
        marker = b""
    rollup = delimiter == b"/"
    last_prefix: bytes | None = None
    count = 0
    for item in walk(view, ino, base, marker, within, rollup):
        key = item.key
        if item.kind != "prefix":
            try:
                key.decode()
            except UnicodeDecodeError:
                log.warning("skipping a name that is not valid UTF-8 in a listing: %r", key)
                continue
            if delimiter:
                pos = key.find(delimiter, len(prefix))
                if pos >= 0:
                    common = key[:pos + len(delimiter)]
                    if common == last_prefix or (marker and marker.startswith(common)):
                        continue
                    item = Listed(common, item.ino, "prefix")
        else:
            try:
                item.key.decode()
            except UnicodeDecodeError:
                log.warning("skipping a name that is not valid UTF-8 in a listing: %r", key)
                continue
        if count >= max_keys:
            page.truncated = True
            break
        count += 1
        page.last = item.key
        if item.kind == "prefix":
            last_prefix = item.key
            page.prefixes.append(item.key)
        else:
            page.contents.append(item)
    return page
