"""Object operations: PutObject, GetObject/HeadObject, DeleteObject(s), CopyObject."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import unquote

import trio
from quart import Response

from cartridgefs.errors import CartridgeError, Exists
from cartridgefs.fs.filesystem import FLAG_IMPLICIT_DIR, FileSystem
from cartridgefs.fs.items import Inode
from cartridgefs.fs.multipart import Layout, Uploads
from s3api import checksums, mapping, streams, xmlio
from s3api.chunked import BodyVerifier
from s3api.errors import S3Error, from_cartridge_error
from s3api.handlers.buckets import EMPTY_MD5, empty, ns_datetime, xml

log = logging.getLogger(__name__)

MAX_OBJECT_SIZE = 5 << 30
MAX_METADATA = 2048  # bytes of x-amz-meta-* names and values, as on AWS
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}
_HEADER_CASE = {name: "-".join(part.capitalize() for part in name.split("-"))
                for name in mapping.STORED_HEADERS}


# ------------------------------------------------------------------------ helpers


async def etag_of(fs: FileSystem, inode: Inode) -> str:
    """The content MD5 (hex): stored at PUT, computed (and remembered) for files written
    through the mount."""
    return await etag_with_layout(fs, inode, await Uploads(fs).layout(inode))


async def etag_with_layout(fs: FileSystem, inode: Inode, layout: Layout | None) -> str:
    """`etag_of` given the object's part layout, already read (a listing reads a page's at once)."""
    if inode.is_dir:
        return EMPTY_MD5
    if layout is not None:
        return layout.etag  # "<md5 of the part MD5s>-<parts>" of a multipart upload
    return inode.etag or await fs.etag(inode.ino)


def _text(raw: bytes) -> str:
    """A stored header value for the response (Quart encodes str as UTF-8)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _parse_mtime(value: str) -> int | None:
    """x-amz-meta-mtime (float seconds, as rclone sends it) in nanoseconds."""
    try:
        seconds = Decimal(value.strip())
    except InvalidOperation:
        return None
    if not seconds.is_finite() or not 0 <= seconds < 1 << 33:
        return None
    return int(seconds * 1_000_000_000)


def format_mtime(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    return f"{seconds}.{frac:09d}".rstrip("0").rstrip(".")


def request_metadata(headers: dict[str, str]) -> tuple[dict[bytes, bytes], int | None]:
    """The S3 metadata of a PUT/COPY request as xattrs, and the mtime it asks for."""
    xattrs: dict[bytes, bytes] = {}
    mtime_ns = None
    meta_size = sum(len(name) - len("x-amz-meta-") + len(value.encode("latin-1"))
                    for name, value in headers.items() if name.startswith("x-amz-meta-"))
    if meta_size > MAX_METADATA:
        raise S3Error("MetadataTooLarge", Size=str(meta_size), MaxSizeAllowed=str(MAX_METADATA))
    for name in mapping.STORED_HEADERS:
        value = headers.get(name)
        if value and name == "content-encoding":
            value = ",".join(part.strip() for part in value.split(",")
                             if part.strip() and part.strip().lower() != "aws-chunked")
        if value:
            xattrs[mapping.XATTR_PREFIX + name.encode()] = value.encode("latin-1")
    for name, value in headers.items():
        if name.startswith("x-amz-meta-"):
            meta = name[len("x-amz-meta-"):]
            if meta == "mtime":
                parsed = _parse_mtime(value)
                if parsed is not None:
                    mtime_ns = parsed
                    continue
            xattrs[mapping.META_PREFIX + meta.encode("latin-1")] = value.encode("latin-1")
    return xattrs, mtime_ns


async def stored_metadata(fs: FileSystem, ino: int) -> dict[bytes, bytes]:
    """Every xattr under the S3 prefix."""
    return await fs.xattrs(ino, mapping.XATTR_PREFIX)


def valid_checksums(meta: dict[bytes, bytes], inode: Inode) -> dict[str, str]:
    """Stored checksums that still describe the content (algorithm -> base64)."""
    out = {}
    for name, value in meta.items():
        if name.startswith(mapping.CHECKSUM_PREFIX):
            version, _, b64 = value.decode("latin-1").partition(":")
            if version == str(inode.data_version):
                out[name[len(mapping.CHECKSUM_PREFIX):].decode()] = b64
    return out


def _etag_matches(header: str, etag: str) -> bool:
    for candidate in header.split(","):
        candidate = candidate.strip().removeprefix("W/").strip('"')
        if candidate == "*" or candidate == etag:
            return True
    return False


def _http_date(value: str | None):
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def check_conditions(headers: dict[str, str], etag: str, mtime_ns: int, *, prefix: str = "",
                     not_modified: bool = True) -> bool:
    """RFC 7232 order. Raises PreconditionFailed; returns False for "304 Not Modified"
    (`not_modified=False`: CopyObject, where every failure is a 412)."""
    mtime = mtime_ns // 1_000_000_000
    if_match = headers.get(prefix + "if-match")
    if if_match is not None:
        if not _etag_matches(if_match, etag):
            raise S3Error("PreconditionFailed", Condition=f"{prefix}If-Match")
    else:
        since = _http_date(headers.get(prefix + "if-unmodified-since"))
        if since is not None and mtime > since:
            raise S3Error("PreconditionFailed", Condition=f"{prefix}If-Unmodified-Since")
    if_none = headers.get(prefix + "if-none-match")
    if if_none is not None:
        if _etag_matches(if_none, etag):
            if not not_modified:
                raise S3Error("PreconditionFailed", Condition=f"{prefix}If-None-Match")
            return False
    else:
        since = _http_date(headers.get(prefix + "if-modified-since"))
        if since is not None and mtime <= since:
            if not not_modified:
                raise S3Error("PreconditionFailed", Condition=f"{prefix}If-Modified-Since")
            return False
    return True


def _parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a single byte range; None to serve the whole object."""
    if not value:
        return None
    match = _RANGE.fullmatch(value.strip())
    if not match or (not match[1] and not match[2]):
        return None  # unsupported or malformed (e.g. several ranges): ignored, as AWS does
    if not match[1]:
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            raise S3Error("InvalidRange", RangeRequested=value, ActualObjectSize=str(size))
        return max(0, size - suffix), size - 1
    first = int(match[1])
    last = int(match[2]) if match[2] else size - 1
    if match[2] and last < first:
        return None
    if first >= size:
        raise S3Error("InvalidRange", RangeRequested=value, ActualObjectSize=str(size))
    return first, min(last, size - 1)


def object_headers(inode: Inode, etag: str, meta: dict[bytes, bytes]) -> dict[str, str]:
    headers = {
        "ETag": f'"{etag}"',
        "Last-Modified": format_datetime(ns_datetime(inode.mtime_ns), usegmt=True),
        "Accept-Ranges": "bytes",
        "Content-Type": "binary/octet-stream",
        "x-amz-meta-mtime": format_mtime(inode.mtime_ns),
    }
    for name in mapping.STORED_HEADERS:
        value = meta.get(mapping.XATTR_PREFIX + name.encode())
        if value is not None:
            headers[_HEADER_CASE[name]] = _text(value)
    for name, value in meta.items():
        if name.startswith(mapping.META_PREFIX):
            headers["x-amz-meta-" + _text(name[len(mapping.META_PREFIX):])] = _text(value)
    return headers


def _declared_size(headers: dict[str, str]) -> None:
    for name in ("x-amz-decoded-content-length", "content-length"):
        value = headers.get(name)
        if value is not None and value.strip().isdigit():
            if int(value) > MAX_OBJECT_SIZE + (MAX_OBJECT_SIZE // 100 if name == "content-length" else 0):
                raise S3Error("EntityTooLarge", ProposedSize=value, MaxSizeAllowed=str(MAX_OBJECT_SIZE))
            return
    if "transfer-encoding" not in headers:
        raise S3Error("MissingContentLength")


# ------------------------------------------------------------------------ PutObject


async def put_object(req) -> Response:
    fs = req.fs
    bucket = await mapping.bucket_inode(fs, req.bucket)
    kp = mapping.key_path(req.key)
    _declared_size(req.headers)
    verifier = BodyVerifier.from_headers(req.raw_headers, req.auth)
    xattrs, mtime_ns = request_metadata(req.headers)
    if_none = req.headers.get("if-none-match")
    if_match = req.headers.get("if-match")
    if if_none is not None and if_none.strip() != "*":
        raise S3Error("NotImplemented", "If-None-Match on PUT supports only '*'.")

    async def check_existing() -> None:
        if if_none is None and if_match is None:
            return
        try:
            current = await mapping.lookup_object(fs, bucket.ino, kp, req.bucket)
        except S3Error:
            current = None
        if if_none is not None and current is not None:
            raise S3Error("PreconditionFailed", Condition="If-None-Match")
        if if_match is not None:
            if current is None:
                raise S3Error("NoSuchKey", Key=req.key, BucketName=req.bucket)
            if not _etag_matches(if_match, await etag_of(fs, current)):
                raise S3Error("PreconditionFailed", Condition="If-Match")

    await check_existing()
    if kp.is_directory:
        return await _put_directory(req, bucket, kp, verifier, xattrs, mtime_ns)
    put = _put_small if streams.fits_in_memory(verifier) else _put_streamed
    md5, sums = await put(req, bucket, kp, verifier, xattrs, mtime_ns, check_existing)
    headers = {"ETag": f'"{md5.hex()}"'}
    for algorithm, b64 in sums.items():
        headers[checksums.header_name(algorithm)] = b64
    return empty(200, headers)


async def _put_directory(req, bucket, kp, verifier, xattrs, mtime_ns) -> Response:
    """PUT "dir/": an explicit directory; the body must be empty."""
    fs, ctx = req.fs, req.ctx
    async for chunk in req.chunks():
        if verifier.feed(chunk):
            raise S3Error("DirectoryObjectContainsData", Key=req.key)
    verifier.finish()
    chain, created = await mapping.ensure_parents(fs, ctx, bucket.ino, kp, req.bucket)
    try:
        try:
            inode = await fs.mkdir(ctx, chain[-1].ino, kp.name)
        except Exists:
            inode = await fs.lookup(chain[-1].ino, kp.name)
            if not inode.is_dir:
                raise S3Error("ObjectParentIsFile", "A file of that name exists.", Key=req.key) from None
            if inode.flags & FLAG_IMPLICIT_DIR:  # the marker makes it explicit: it now stays
                inode = await fs.set_flags(ctx, inode.ino, inode.flags & ~FLAG_IMPLICIT_DIR)
        # A PUT makes a new object: without x-amz-meta-mtime it is modified now, also when the
        # directory was there before.
        now = mtime_ns if mtime_ns is not None else time.time_ns()
        await fs.replace_xattrs(ctx, inode.ino, mapping.XATTR_PREFIX, xattrs, now)
    except BaseException:
        with trio.CancelScope(shield=True):
            if created:
                await mapping.remove_empty_implicit(fs, ctx, chain, kp.parents)
        raise
    return empty(200, {"ETag": f'"{EMPTY_MD5}"'})


# ------------------------------------------------------------------------ GetObject


async def get_object(req, head: bool) -> Response:
    fs = req.fs
    bucket = await mapping.bucket_inode(fs, req.bucket)
    kp = mapping.key_path(req.key)
    inode = await mapping.lookup_object(fs, bucket.ino, kp, req.bucket)
    etag = await etag_of(fs, inode)
    inode = await fs.getattr(inode.ino)  # etag() flushed: size and versions are current
    meta = await stored_metadata(fs, inode.ino)
    headers = object_headers(inode, etag, meta)
    if not check_conditions(req.headers, etag, inode.mtime_ns):
        keep = ("ETag", "Last-Modified", "Cache-Control", "Expires")
        return empty(304, {name: value for name, value in headers.items() if name in keep})
    size = 0 if inode.is_dir else inode.size
    if "partNumber" in req.query:
        if "range" in req.headers:
            raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber query parameter.")
        span = await _part_span(fs, inode, req.query["partNumber"], headers)
    else:
        span = _parse_range(req.headers.get("range"), size)
    status = 200
    first, length = 0, size
    if span is not None:
        first, length = span[0], span[1] - span[0] + 1
        if length:  # (an empty part has no byte range to name: an empty 200)
            status = 206
            headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{size}"
    elif req.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
        for algorithm, b64 in valid_checksums(meta, inode).items():
            headers[checksums.header_name(algorithm)] = b64
            headers["x-amz-checksum-type"] = "COMPOSITE" if "-" in b64 else "FULL_OBJECT"
    for param, header in _OVERRIDES.items():
        if param in req.query:
            headers[header] = req.query[param]
    if head or length == 0:
        response = empty(status, headers)
    else:
        body = await streams.response_body(fs, inode.ino, first, length)
        response = Response(body, status=status, headers=headers)
        response.timeout = None
    response.headers["Content-Type"] = headers["Content-Type"]
    response.headers["Content-Length"] = str(length)
    return response


async def _part_span(fs: FileSystem, inode: Inode, value: str, headers: dict[str, str]) -> tuple[int, int] | None:
    """GET/HEAD ?partNumber=N: the part's byte range, (first, first - 1) for an empty part
    (None: the whole object, part 1 of an object not uploaded in parts); sets
    x-amz-mp-parts-count."""
    if not value.isdigit() or not 1 <= int(value) <= 10000:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive",
                      ArgumentName="partNumber", ArgumentValue=value)
    layout = await Uploads(fs).layout(inode)
    part = layout.part_range(int(value)) if layout is not None else None
    if layout is None and value == "1":
        return None
    if part is None:
        raise S3Error("InvalidPartNumber", PartNumberRequested=value,
                      ActualPartCount=str(len(layout.sizes) if layout else 1))
    headers["x-amz-mp-parts-count"] = str(len(layout.sizes))
    first, size = part
    return first, first + size - 1


# ------------------------------------------------------------------------ DeleteObject(s)


async def _delete_keys(req, bucket_ino: int, paths: list[mapping.KeyPath]) -> list[CartridgeError | None]:
    """Delete the objects the keys name (a missing one is no error), in order: in one
    transaction, or if that fails (it then changed nothing), key by key, so that each key gets
    its own outcome. A single key's failure is raised."""
    fs, ctx = req.fs, req.ctx
    removals = [mapping.removal(kp) for kp in paths]
    try:
        await fs.remove_paths(ctx, bucket_ino, removals, mapping.XATTR_PREFIX)
        return [None] * len(removals)
    except CartridgeError:
        if len(removals) == 1:
            raise
    outcomes: list[CartridgeError | None] = []
    for removal in removals:
        try:
            await fs.remove_paths(ctx, bucket_ino, [removal], mapping.XATTR_PREFIX)
            outcomes.append(None)
        except CartridgeError as exc:
            outcomes.append(exc)
    return outcomes


async def delete_object(req) -> Response:
    bucket = await mapping.bucket_inode(req.fs, req.bucket)
    await _delete_keys(req, bucket.ino, [mapping.key_path(req.key)])
    return empty(204)


async def delete_objects(req) -> Response:
    bucket = await mapping.bucket_inode(req.fs, req.bucket)
    request = xmlio.parse_delete(await req.read_small())
    failed: dict[int, S3Error] = {}
    paths: dict[int, mapping.KeyPath] = {}
    for i, obj in enumerate(request.objects):
        try:
            if obj.version_id not in (None, "null"):
                raise S3Error("InvalidArgument", "Invalid version id specified")
            paths[i] = mapping.key_path(obj.key)
        except S3Error as err:
            failed[i] = err
    outcomes = await _delete_keys(req, bucket.ino, list(paths.values()))
    for i, exc in zip(paths, outcomes, strict=True):
        if exc is not None:
            failed[i] = from_cartridge_error(exc, bucket=req.bucket, key=request.objects[i].key)
    objs = request.objects
    errors = [xmlio.DeleteErrorEntry(objs[i].key, err.code, err.message, objs[i].version_id)
              for i, err in sorted(failed.items())]
    deleted = [] if request.quiet else [xmlio.DeletedEntry(obj.key, obj.version_id)
                                        for i, obj in enumerate(objs) if i not in failed]
    return xml(xmlio.render_delete_result(deleted, errors))


# ------------------------------------------------------------------------ CopyObject


def _copy_source(value: str) -> tuple[str, str]:
    source = unquote(value.strip(), errors="surrogateescape")
    source, _, version = source.partition("?versionId=")
    if version and version != "null":
        raise S3Error("InvalidArgument", "Invalid version id specified",
                      ArgumentName="x-amz-copy-source", ArgumentValue=value)
    bucket, slash, key = source.lstrip("/").partition("/")
    if not slash or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: "
                      "sourcebucket/sourcekey", ArgumentName="x-amz-copy-source", ArgumentValue=value)
    return bucket, key


async def copy_object(req) -> Response:
    fs, ctx = req.fs, req.ctx
    src_bucket_name, src_key = _copy_source(req.headers["x-amz-copy-source"])
    src_bucket = await mapping.bucket_inode(fs, src_bucket_name)
    src_kp = mapping.key_path(src_key)
    src = await mapping.lookup_object(fs, src_bucket.ino, src_kp, src_bucket_name)
    if src.is_dir:
        raise S3Error("NotImplemented", "Copying directory objects is not supported.")
    bucket = await mapping.bucket_inode(fs, req.bucket)
    kp = mapping.key_path(req.key)
    if kp.is_directory:
        raise S3Error("InvalidArgument", "The destination of a copy cannot be a directory key.", Key=req.key)
    src_etag = await etag_of(fs, src)
    src = await fs.getattr(src.ino)
    check_conditions(req.headers, src_etag, src.mtime_ns, prefix="x-amz-copy-source-", not_modified=False)
    directive = req.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown metadata directive.",
                      ArgumentName="x-amz-metadata-directive", ArgumentValue=directive)
    src_meta = await stored_metadata(fs, src.ino)
    src_sums = valid_checksums(src_meta, src)
    if directive == "REPLACE":
        xattrs, mtime_ns = request_metadata(req.headers)
        if mtime_ns is None:
            mtime_ns = time.time_ns()
    else:
        xattrs = {name: value for name, value in src_meta.items()
                  if not mapping.describes_content(name)}
        mtime_ns = src.mtime_ns

    same = src_bucket.ino == bucket.ino and src_kp == kp
    if same:
        if directive == "COPY":
            raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to "
                          "copy an object to itself without changing the object's metadata, "
                          "storage class, website redirect location or encryption attributes.")
        for name, value in src_meta.items():
            if mapping.describes_content(name):
                xattrs[name] = value
        await fs.replace_xattrs(ctx, src.ino, mapping.XATTR_PREFIX, xattrs, mtime_ns)
        return xml(xmlio.render_copy_object(src_etag, ns_datetime(mtime_ns)))

    async def copy(ino: int) -> tuple[bytes, dict[str, str]]:
        return await streams.copy_range(fs, ctx, src.ino, ino, 0, src.size, set(src_sums))

    md5, sums = await _write_object(req, bucket, kp, xattrs, mtime_ns, copy)
    return xml(xmlio.render_copy_object(md5.hex(), ns_datetime(mtime_ns), sums))


async def _put_small(req, bucket: Inode, kp, verifier: BodyVerifier, xattrs: dict[bytes, bytes],
                     mtime_ns: int | None, recheck: Callable[[], Awaitable[None]]) -> tuple[bytes, dict[str, str]]:
    """A body that fits in memory: received and verified whole, then stored with its name and
    attributes in one transaction (`publish_bytes`). A failure anywhere leaves nothing behind:
    nothing is stored before the body is verified, the transaction stores all or nothing, and
    `_store_named` removes the parent directories it made."""
    payload, received = await streams.read_body(req, verifier)
    md5, sums = bytes.fromhex(received.md5_hex), received.checksums
    await recheck()

    async def store(parent: int) -> None:
        await req.fs.publish_bytes(req.ctx, parent, kp.name, payload,
                                   **_object_attributes(md5, sums, xattrs, mtime_ns))

    await _store_named(req, bucket, kp, store)
    return md5, sums


async def _put_streamed(req, bucket: Inode, kp, verifier: BodyVerifier, xattrs: dict[bytes, bytes],
                        mtime_ns: int | None, recheck: Callable[[], Awaitable[None]]) -> tuple[bytes, dict[str, str]]:
    """A larger body, or one of unknown length: written into a nameless file as it arrives
    (memory stays bounded), then published."""

    async def receive(ino: int) -> tuple[bytes, dict[str, str]]:
        received = await streams.receive_body(req, ino, verifier)
        return bytes.fromhex(received.md5_hex), received.checksums

    return await _write_object(req, bucket, kp, xattrs, mtime_ns, receive, recheck)


async def _write_object(req, bucket: Inode, kp, xattrs: dict[bytes, bytes], mtime_ns: int | None,
                        fill: Callable[[int], Awaitable[tuple[bytes, dict[str, str]]]],
                        recheck: Callable[[], Awaitable[None]] | None = None) -> tuple[bytes, dict[str, str]]:
    """A new object: `fill` writes a fresh nameless file (returning its MD5 and checksums), then
    it replaces the key atomically. On any failure or disconnect nothing stays behind: not the
    file, nor parent directories made for it."""
    fs, ctx = req.fs, req.ctx
    ino = await fs.create_unlinked(ctx)
    try:
        md5, sums = await fill(ino)
        if recheck is not None:
            await recheck()

        async def store(parent: int) -> None:
            await fs.publish(ctx, ino, parent, kp.name, **_object_attributes(md5, sums, xattrs, mtime_ns))

        await _store_named(req, bucket, kp, store)
    except BaseException:
        with trio.CancelScope(shield=True):
            try:
                await fs.discard_unlinked(ino)
            except Exception:
                log.exception("cleaning up after a failed %s", req.method)
        raise
    return md5, sums


def _object_attributes(md5: bytes, sums: dict[str, str], xattrs: dict[bytes, bytes],
                       mtime_ns: int | None) -> dict:
    """The keyword arguments of `publish`/`publish_bytes` for an object's content and metadata."""
    stored_sums = {mapping.CHECKSUM_PREFIX + algorithm.encode(): b64.encode()
                   for algorithm, b64 in sums.items()}
    return {"md5": md5, "xattrs": xattrs, "content_xattrs": stored_sums, "mtime_ns": mtime_ns}


async def _store_named(req, bucket: Inode, kp, store: Callable[[int], Awaitable[None]]) -> None:
    """Create the key's missing parent directories and `store(parent ino)` the object there; if
    that fails (or the client goes away), the directories made for it go again."""
    chain: list[Inode] = []
    created: list[Inode] = []
    try:
        chain, created = await mapping.ensure_parents(req.fs, req.ctx, bucket.ino, kp, req.bucket)
        await store(chain[-1].ino)
    except BaseException:
        if created:
            with trio.CancelScope(shield=True):  # (it logs its own errors, never raises them)
                await mapping.remove_empty_implicit(req.fs, req.ctx, chain, kp.parents)
        raise
