"""Multipart uploads: Create/UploadPart/UploadPartCopy/Complete/Abort, ListParts, ListMultipartUploads.

The records and the assembly are the filesystem's (`cartridgefs.fs.multipart`); this module
applies S3's rules: part numbers, ETags, minimum part sizes, checksums, markers and limits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import trio
from quart import Response

from cartridgefs.fs.multipart import (
    ASSEMBLED_DATA_VERSION,
    Assembly,
    Part,
    Upload,
    UploadNotFound,
    Uploads,
    etag_of_parts,
)
from s3api import checksums, mapping, streams, xmlio
from s3api.chunked import BodyVerifier
from s3api.errors import S3Error
from s3api.handlers.buckets import OWNER, empty, ns_datetime, xml
from s3api.handlers.objects import (
    _copy_source,
    _declared_size,
    check_conditions,
    etag_of,
    request_metadata,
)

MIN_PART_SIZE = 5 << 20  # every part but the last
MAX_PART_SIZE = 5 << 30
MAX_OBJECT_SIZE = 5 << 40
MAX_LIST = 1000
PART_FLUSH = 1 << 20  # a part is stored as it arrives, 1 MiB at a time
_COPY_RANGE = re.compile(r"bytes=(\d+)-(\d+)")



def _uploads(req) -> Uploads:
    return Uploads(req.fs)


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _key_text(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def _part_number(query: dict[str, str]) -> int:
    value = query.get("partNumber", "")
    if not value.isdigit() or not 1 <= int(value) <= xmlio.MAX_PART_NUMBER:
        raise S3Error("InvalidArgument", f"Part number must be an integer between 1 and "
                      f"{xmlio.MAX_PART_NUMBER}, inclusive", ArgumentName="partNumber", ArgumentValue=value)
    return int(value)


def _max_value(query: dict[str, str], name: str) -> int:
    value = query.get(name)
    if value is None:
        return MAX_LIST
    if not value.isdigit():
        raise S3Error("InvalidArgument", f"Provided {name} not an integer or within integer range",
                      ArgumentName=name, ArgumentValue=value)
    return min(int(value), MAX_LIST)


async def _upload(req, bucket_ino: int) -> Upload:
    """The upload named by ?uploadId, which must be for this key; NoSuchUpload otherwise."""
    upload_id = req.query.get("uploadId", "")
    try:
        upload = await _uploads(req).get(bucket_ino, upload_id)
    except UploadNotFound:
        raise S3Error("NoSuchUpload", UploadId=upload_id) from None
    if upload.key != _key_bytes(req.key):
        raise S3Error("NoSuchUpload", UploadId=upload_id)
    return upload


def _checksum_headers(sums: dict[str, str], algorithm: str | None) -> dict[str, str]:
    """The checksum response headers for the upload's algorithm (or every one computed)."""
    return {checksums.header_name(name): value for name, value in sums.items()
            if algorithm in (None, name)}


# ------------------------------------------------------------------ CreateMultipartUpload


async def create(req) -> Response:
    bucket = await mapping.bucket_inode(req.fs, req.bucket)
    kp = mapping.key_path(req.key)
    if kp.is_directory:
        raise S3Error("DirectoryObjectContainsData", Key=req.key)
    xattrs, mtime_ns = request_metadata(req.headers)
    info: dict[str, str] = {}
    if mtime_ns is not None:
        info["mtime"] = str(mtime_ns)
    headers = {}
    algorithm = req.headers.get("x-amz-checksum-algorithm")
    if algorithm:
        info["algorithm"] = checksums.algorithm_name(algorithm)
        info["type"] = checksums.resolve_checksum_type(algorithm, req.headers.get("x-amz-checksum-type"))
        headers = {"x-amz-checksum-algorithm": info["algorithm"], "x-amz-checksum-type": info["type"]}
    elif "x-amz-checksum-type" in req.headers:
        raise S3Error("InvalidRequest", "x-amz-checksum-type requires x-amz-checksum-algorithm.")
    upload = await _uploads(req).create(bucket.ino, req.bucket, _key_bytes(req.key), xattrs, info)
    response = xml(xmlio.render_initiate_multipart(req.bucket, req.key, upload.upload_id))
    response.headers.update(headers)
    return response


# ------------------------------------------------------------------ UploadPart, UploadPartCopy


async def _store_part(req, bucket_ino: int, upload: Upload, number: int, fill) -> tuple[Part, dict[str, str]]:
    """Receive a part into a new hidden file with `fill(ino) -> (md5, checksums)` and make it
    part `number`; nothing is left behind on failure."""
    parts = _uploads(req)
    ino = await parts.new_part_file(req.ctx)
    try:
        md5, sums = await fill(ino)
    except BaseException:
        with trio.CancelScope(shield=True):
            await parts.discard_part_file(ino)
        raise
    try:
        part = await parts.commit_part(bucket_ino, upload.upload_id, number, ino, md5, sums)
    except UploadNotFound:
        raise S3Error("NoSuchUpload", UploadId=upload.upload_id) from None
    return part, _checksum_headers(sums, upload.info.get("algorithm"))


async def upload_part(req) -> Response:
    bucket = await mapping.bucket_inode(req.fs, req.bucket)
    number = _part_number(req.query)
    upload = await _upload(req, bucket.ino)
    if "x-amz-copy-source" in req.headers:
        return await _upload_part_copy(req, bucket.ino, upload, number)
    _declared_size(req.headers)
    algorithm = upload.info.get("algorithm")
    verifier = BodyVerifier.from_headers(req.raw_headers, req.auth,
                                         extra_algorithms=[algorithm] if algorithm else [])

    async def fill(ino: int) -> tuple[bytes, dict[str, str]]:
        body = await streams.receive_body(req, ino, verifier, flush_every=PART_FLUSH)
        return bytes.fromhex(body.md5_hex), body.checksums

    part, headers = await _store_part(req, bucket.ino, upload, number, fill)
    return empty(200, {"ETag": f'"{part.etag}"', **headers})


def _copy_span(value: str | None, size: int) -> tuple[int, int]:
    """(first, length) of x-amz-copy-source-range (the whole source without one)."""
    if value is None:
        first, length = 0, size
    else:
        match = _COPY_RANGE.fullmatch(value.strip())
        if not match:
            raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the form "
                          "bytes=first-last where first and last are the zero-based offsets of the "
                          "first and last bytes to copy", ArgumentName="x-amz-copy-source-range",
                          ArgumentValue=value)
        first, last = int(match[1]), int(match[2])
        if last < first or last >= size:
            raise S3Error("InvalidRange", RangeRequested=value, ActualObjectSize=str(size))
        length = last - first + 1
    if length > MAX_PART_SIZE:
        raise S3Error("EntityTooLarge", ProposedSize=str(length), MaxSizeAllowed=str(MAX_PART_SIZE))
    return first, length


async def _upload_part_copy(req, bucket_ino: int, upload: Upload, number: int) -> Response:
    fs = req.fs
    src_bucket_name, src_key = _copy_source(req.headers["x-amz-copy-source"])
    src_bucket = await mapping.bucket_inode(fs, src_bucket_name)
    src = await mapping.lookup_object(fs, src_bucket.ino, mapping.key_path(src_key), src_bucket_name)
    if src.is_dir:
        raise S3Error("InvalidRequest", "The source of a part copy cannot be a directory object.")
    src_etag = await etag_of(fs, src)
    src = await fs.getattr(src.ino)
    check_conditions(req.headers, src_etag, src.mtime_ns, prefix="x-amz-copy-source-", not_modified=False)
    first, length = _copy_span(req.headers.get("x-amz-copy-source-range"), src.size)
    algorithm = upload.info.get("algorithm")

    async def fill(ino: int) -> tuple[bytes, dict[str, str]]:
        return await streams.copy_range(fs, req.ctx, src.ino, ino, first, length,
                                        {algorithm} if algorithm else set())

    part, _ = await _store_part(req, bucket_ino, upload, number, fill)
    sums = {name: value for name, value in part.checksums.items() if name == algorithm}
    return xml(xmlio.render_copy_part(part.etag, ns_datetime(part.mtime_ns), sums))


# ------------------------------------------------------------------ CompleteMultipartUpload


def _plan(wanted: list[xmlio.CompletedPart], upload: Upload, stored: dict[int, Part]) -> Assembly:
    """Check the requested parts against the stored ones (S3's rules) and describe the object.
    Runs inside the completing transaction, so the parts cannot change meanwhile."""
    parts: list[Part] = []
    for i, want in enumerate(wanted):
        part = stored.get(want.part_number)
        if part is None or part.etag != want.etag.lower():
            raise S3Error("InvalidPart", UploadId=upload.upload_id, PartNumber=str(want.part_number),
                          ETag=want.etag)
        for name, value in want.checksums.items():
            if name.upper() in part.checksums and part.checksums[name.upper()] != value:
                raise S3Error("InvalidPart", f"The Checksum{name.upper()} of part {want.part_number} "
                              "does not match the part's.", UploadId=upload.upload_id)
        if i < len(wanted) - 1 and part.size < MIN_PART_SIZE:
            raise S3Error("EntityTooSmall", ProposedSize=str(part.size), MinSizeAllowed=str(MIN_PART_SIZE),
                          PartNumber=str(part.number), ETag=part.etag)
        parts.append(part)
    total = sum(part.size for part in parts)
    if total > MAX_OBJECT_SIZE:
        raise S3Error("EntityTooLarge", ProposedSize=str(total), MaxSizeAllowed=str(MAX_OBJECT_SIZE))
    etag_md5 = etag_of_parts([part.md5 for part in parts])
    xattrs = dict(upload.xattrs)
    result: dict = {"etag": f"{etag_md5.hex()}-{len(parts)}", "checksums": {}}
    algorithm = upload.info.get("algorithm")
    if algorithm:
        values = [part.checksums.get(algorithm) for part in parts]
        if None in values:
            raise S3Error("InvalidRequest", f"Every part must have a {algorithm} checksum.")
        if upload.info["type"] == "FULL_OBJECT":
            value = checksums.full_object_checksum(algorithm, [(v, p.size) for v, p in zip(values, parts, strict=True)])
        else:
            value = checksums.composite_checksum(algorithm, values)
        xattrs[mapping.CHECKSUM_PREFIX + algorithm.encode()] = f"{ASSEMBLED_DATA_VERSION}:{value}".encode()
        result.update(checksums={algorithm: value}, type=upload.info["type"])
    mtime = upload.info.get("mtime")
    return Assembly(parts, etag_md5, xattrs, json.dumps(result).encode(), int(mtime) if mtime else None)


def _complete_response(req, result: bytes) -> Response:
    d = json.loads(result)
    location = f"http://{req.headers.get('host', '')}/{req.bucket}/{req.key}"
    return xml(xmlio.render_complete_multipart(location, req.bucket, req.key, d["etag"], d["checksums"],
                                               d.get("type")))


async def complete(req) -> Response:
    fs, ctx = req.fs, req.ctx
    bucket = await mapping.bucket_inode(fs, req.bucket)
    kp = mapping.key_path(req.key)
    upload_id = req.query.get("uploadId", "")
    wanted = xmlio.parse_complete_multipart_upload(await req.read_small())
    try:
        await _upload(req, bucket.ino)
    except S3Error:
        done = await _uploads(req).completed(upload_id)
        if done is None or done.bucket_ino != bucket.ino or done.key != _key_bytes(req.key):
            raise
        return _complete_response(req, done.result)  # a retry of a completion that succeeded
    chain, created = await mapping.ensure_parents(fs, ctx, bucket.ino, kp, req.bucket)
    try:
        assembly = await _uploads(req).complete(
            ctx, bucket.ino, upload_id, chain[-1].ino, kp.name,
            lambda upload, stored: _plan(wanted, upload, stored))
    except BaseException as exc:
        with trio.CancelScope(shield=True):
            if created:
                await mapping.remove_empty_implicit(fs, ctx, chain, kp.parents)
        if isinstance(exc, UploadNotFound):
            raise S3Error("NoSuchUpload", UploadId=upload_id) from None
        raise
    return _complete_response(req, assembly.result)


# ------------------------------------------------------------------ Abort, ListParts


async def abort(req) -> Response:
    bucket = await mapping.bucket_inode(req.fs, req.bucket)
    upload = await _upload(req, bucket.ino)
    try:
        await _uploads(req).abort(bucket.ino, upload.upload_id)
    except UploadNotFound:
        raise S3Error("NoSuchUpload", UploadId=upload.upload_id) from None
    return empty(204)


async def list_parts(req) -> Response:
    bucket = await mapping.bucket_inode(req.fs, req.bucket)
    upload = await _upload(req, bucket.ino)
    max_parts = _max_value(req.query, "max-parts")
    marker_text = req.query.get("part-number-marker", "0") or "0"
    if not marker_text.isdigit():
        raise S3Error("InvalidArgument", "Invalid part number marker", ArgumentName="part-number-marker")
    marker = int(marker_text)
    try:
        stored = await _uploads(req).parts(bucket.ino, upload.upload_id)
    except UploadNotFound:
        raise S3Error("NoSuchUpload", UploadId=upload.upload_id) from None
    after = [part for part in stored if part.number > marker]
    page = after[:max_parts]
    truncated = len(after) > len(page)
    algorithm = upload.info.get("algorithm")
    infos = [xmlio.PartInfo(p.number, ns_datetime(p.mtime_ns), p.etag, p.size,
                            {k: v for k, v in p.checksums.items() if k == algorithm}) for p in page]
    return xml(xmlio.render_list_parts(xmlio.ListPartsResult(
        req.bucket, req.key, upload.upload_id, OWNER, infos, max_parts, truncated,
        part_number_marker=marker, next_part_number_marker=page[-1].number if page else None,
        checksum_algorithm=algorithm, checksum_type=upload.info.get("type"))))


# ------------------------------------------------------------------ ListMultipartUploads


def _after_marker(uploads: Iterable[Upload], key_marker: str, id_marker: str) -> list[Upload]:
    """Uploads after (key-marker, upload-id-marker) in listing order."""
    if not key_marker:
        return list(uploads)
    out, passed = [], not id_marker
    for upload in uploads:
        key = _key_text(upload.key)
        if key > key_marker:
            out.append(upload)
        elif key == key_marker and id_marker:
            if passed:
                out.append(upload)
            passed = passed or upload.upload_id == id_marker
    return out


async def list_uploads(req) -> Response:
    bucket = await mapping.bucket_inode(req.fs, req.bucket)
    q = req.query
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter") or None
    key_marker, id_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
    encoding = q.get("encoding-type")
    if encoding not in (None, "url"):
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                      ArgumentName="encoding-type", ArgumentValue=encoding)
    max_uploads = _max_value(q, "max-uploads")
    everything = await _uploads(req).list(bucket.ino)
    candidates = [u for u in _after_marker(everything, key_marker, id_marker)
                  if _key_text(u.key).startswith(prefix)]
    shown: list[Upload] = []
    prefixes: list[str] = []
    truncated = False
    for upload in candidates:
        key = _key_text(upload.key)
        common = None
        if delimiter:
            cut = key.find(delimiter, len(prefix))
            if cut >= 0:
                common = key[: cut + len(delimiter)]
                if common in prefixes or common <= key_marker:
                    continue
        if len(shown) + len(prefixes) >= max_uploads:
            truncated = True
            break
        if common is not None:
            prefixes.append(common)
        else:
            shown.append(upload)
    last_key = max([_key_text(u.key) for u in shown[-1:]] + prefixes[-1:], default=None)
    next_id = shown[-1].upload_id if shown and _key_text(shown[-1].key) == last_key else ""
    uploads = [xmlio.UploadInfo(_key_text(u.key), u.upload_id, ns_datetime(u.initiated_ns), OWNER,
                                checksum_algorithm=u.info.get("algorithm"), checksum_type=u.info.get("type"))
               for u in shown]
    return xml(xmlio.render_list_uploads(xmlio.ListUploadsResult(
        req.bucket, uploads, max_uploads, truncated, prefixes, prefix, delimiter, encoding,
        key_marker, id_marker,
        next_key_marker=last_key if truncated else None,
        next_upload_id_marker=next_id if truncated else None)))
