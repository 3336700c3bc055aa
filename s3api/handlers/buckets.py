"""Bucket operations and listings."""

from __future__ import annotations

import base64
import binascii
import logging
from datetime import UTC, datetime

from quart import Response

from cartridgefs.errors import Exists, NotADirectory, NotEmpty, NotFound
from cartridgefs.fs.filesystem import FileSystem
from cartridgefs.fs.items import ROOT_INO, Inode
from cartridgefs.fs.multipart import Layout, layouts
from s3api import mapping, xmlio
from s3api.errors import S3Error
from s3api.names import validate_bucket_name

log = logging.getLogger(__name__)

OWNER = xmlio.Owner("cartridge", "cartridge")
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
MAX_KEYS = 1000


def xml(body: bytes, status: int = 200) -> Response:
    return Response(body, status=status, content_type="application/xml")


def empty(status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(b"", status=status, headers=headers or {})
    response.headers.pop("Content-Type", None)
    return response


def ns_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


async def list_buckets(req) -> Response:
    buckets = []
    after = b""
    while True:
        batch = await req.fs.listdir_sorted(ROOT_INO, after, 1000)
        for name, entry in batch:
            try:
                text = name.decode()
                validate_bucket_name(text)
            except (UnicodeDecodeError, S3Error):
                log.debug("top-level name %r is not a valid bucket name: not listed", name)
                continue
            inode = await req.fs.getattr(entry.ino)
            if inode.is_dir:
                buckets.append(xmlio.BucketInfo(text, ns_datetime(inode.btime_ns)))
        if len(batch) < 1000:
            break
        after = batch[-1][0]
    return xml(xmlio.render_list_buckets(OWNER, buckets))


async def create_bucket(req) -> Response:
    name = mapping.bucket_name_bytes(req.bucket)
    body = await req.read_small(1 << 20)
    xmlio.parse_create_bucket(body)  # validates; one region, so the constraint is not used
    try:
        await req.fs.mkdir(req.ctx, ROOT_INO, name)
    except Exists:
        raise S3Error("BucketAlreadyOwnedByYou", BucketName=req.bucket) from None
    return empty(200, {"Location": f"/{req.bucket}"})


async def delete_bucket(req) -> Response:
    name = mapping.bucket_name_bytes(req.bucket)
    await mapping.bucket_inode(req.fs, req.bucket)
    try:
        await req.fs.rmdir(req.ctx, ROOT_INO, name)
    except NotEmpty:
        raise S3Error("BucketNotEmpty", BucketName=req.bucket) from None
    except (NotFound, NotADirectory):
        raise S3Error("NoSuchBucket", BucketName=req.bucket) from None
    return empty(204)


async def head_bucket(req) -> Response:
    await mapping.bucket_inode(req.fs, req.bucket)
    return empty(200, {"x-amz-bucket-region": req.settings.region})


async def get_location(req) -> Response:
    await mapping.bucket_inode(req.fs, req.bucket)
    return xml(xmlio.render_location(req.settings.region))


async def get_versioning(req) -> Response:
    await mapping.bucket_inode(req.fs, req.bucket)
    return xml(xmlio.render_versioning(None))


def _max_keys(query: dict[str, str], name: str = "max-keys") -> int:
    value = query.get(name, str(MAX_KEYS))
    if not value.strip().isdigit():
        raise S3Error("InvalidArgument", f"Provided {name} not an integer or within integer range",
                      ArgumentName=name, ArgumentValue=value)
    return min(int(value), MAX_KEYS)


def _encoding(query: dict[str, str]) -> str | None:
    encoding = query.get("encoding-type")
    if encoding not in (None, "url"):
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                      ArgumentName="encoding-type", ArgumentValue=encoding)
    return encoding


def _token_encode(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def _token_decode(token: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(token.encode())
    except (binascii.Error, ValueError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                      ArgumentName="continuation-token") from None


async def _page(req, prefix: str, marker: bytes, delimiter: str | None, max_keys: int,
                owner: bool) -> tuple[mapping.Page, list[xmlio.ObjectInfo]]:
    """A page of keys and prefixes, and its objects' details: walked and read from one state."""
    bucket = await mapping.bucket_inode(req.fs, req.bucket)
    with req.fs.view().pinned() as view:
        page = mapping.list_page(view, bucket.ino, prefix.encode(), marker,
                                 delimiter.encode() if delimiter else None, max_keys)
        inodes = view.getattrs(item.ino for item in page.contents)
        parts = layouts(view, inodes.values())
    return page, await _infos(req.fs, page.contents, inodes, parts, owner)


async def _infos(fs: FileSystem, items: list[mapping.Listed], inodes: dict[int, Inode],
                 parts: dict[int, Layout], owner: bool) -> list[xmlio.ObjectInfo]:
    from s3api.handlers.objects import etag_with_layout

    out = []
    for item in items:
        inode = inodes.get(item.ino)
        if inode is None:
            continue  # deleted while we listed
        try:
            etag = EMPTY_MD5 if item.kind == "dir" else await etag_with_layout(
                fs, inode, parts.get(inode.ino))
        except NotFound:
            continue  # deleted while we computed its ETag
        out.append(xmlio.ObjectInfo(
            key=item.key.decode(), last_modified=ns_datetime(inode.mtime_ns), etag=etag,
            size=0 if item.kind == "dir" else inode.size, owner=OWNER if owner else None,
        ))
    return out


async def list_objects(req, v2: bool) -> Response:
    q = req.query
    prefix = q.get("prefix", "")
    delimiter = q.get("delimiter") or None
    encoding = _encoding(q)
    max_keys = _max_keys(q)
    if v2:
        token = q.get("continuation-token")
        start_after = q.get("start-after")
        marker = _token_decode(token) if token else b""
        if start_after and start_after.encode() > marker:
            marker = start_after.encode()
    else:
        marker = q.get("marker", "").encode()
    fetch_owner = not v2 or q.get("fetch-owner", "").lower() == "true"
    page, contents = await _page(req, prefix, marker, delimiter, max_keys, fetch_owner)
    common = [p.decode() for p in page.prefixes]
    if v2:
        result = xmlio.ListObjectsResult(
            bucket=req.bucket, prefix=prefix, max_keys=max_keys, is_truncated=page.truncated,
            contents=contents, common_prefixes=common, delimiter=delimiter,
            encoding_type=encoding, continuation_token=q.get("continuation-token"),
            next_continuation_token=_token_encode(page.last) if page.truncated and page.last else None,
            start_after=q.get("start-after"),
        )
        return xml(xmlio.render_list_objects_v2(result))
    result = xmlio.ListObjectsResult(
        bucket=req.bucket, prefix=prefix, max_keys=max_keys, is_truncated=page.truncated,
        contents=contents, common_prefixes=common, delimiter=delimiter, encoding_type=encoding,
        marker=q.get("marker", ""),
        next_marker=page.last.decode() if page.truncated and delimiter and page.last else None,
    )
    return xml(xmlio.render_list_objects_v1(result))


async def list_versions(req) -> Response:
    q = req.query
    prefix = q.get("prefix", "")
    delimiter = q.get("delimiter") or None
    encoding = _encoding(q)
    max_keys = _max_keys(q)
    key_marker = q.get("key-marker", "")
    page, versions = await _page(req, prefix, key_marker.encode(), delimiter, max_keys, True)
    result = xmlio.ListVersionsResult(
        bucket=req.bucket, prefix=prefix, max_keys=max_keys, is_truncated=page.truncated,
        versions=versions, common_prefixes=[p.decode() for p in page.prefixes],
        delimiter=delimiter, encoding_type=encoding, key_marker=key_marker,
        version_id_marker=q.get("version-id-marker", ""),
        next_key_marker=page.last.decode() if page.truncated and page.last else None,
        next_version_id_marker="null" if page.truncated else None,
    )
    return xml(xmlio.render_list_versions(result))
