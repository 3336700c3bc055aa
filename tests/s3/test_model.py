"""Model-based random testing of the S3 endpoint through boto3.

A seeded generator draws operations (PutObject with checksum variants, GetObject/HeadObject with
ranges, conditions and part numbers, DeleteObject(s), CopyObject, DeleteBucket, multipart
uploads, and ListObjects/ListObjectsV2/ListObjectVersions/ListMultipartUploads/ListParts paged
through) on two buckets, with keys from a small alphabet that makes conflicts likely: nested
paths, "dir/" markers, keys that differ by a trailing slash, unicode (U+FFFF sorts before U+1F600
in UTF-8, after it in UTF-16), spaces, "+", "%", XML specials, long and over-long segments. Each
operation runs on the server and on `Model`, plain Python implementing docs/s3-mapping.md and
docs/s3-compatibility.md, and the outcomes (bytes, ETags, sizes, metadata, mtimes, checksums,
error codes and statuses, every listing page) must agree.

Where XML 1.0 cannot carry a key (U+FFFF, controls), only an error's status is compared, and
requests or answers that would have to carry it are expected to fail; that is S3's XML, not
Cartridge. `REPRODUCTIONS` are minimal cases of the disagreements found. `Fuzzer.run` is also
the library of an exploratory driver (more seeds, a minimiser; not part of the tests).
"""

from __future__ import annotations

import base64
import hashlib
import random
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from itertools import zip_longest
from typing import Any
from urllib.parse import unquote_plus

import pytest
from awscrt import checksums as crt
from botocore.exceptions import BotoCoreError, ClientError
from botocore.handlers import set_list_objects_encoding_type_url

EMPTY_MD5 = hashlib.md5(b"").hexdigest()
MIB = 1 << 20
MIN_PART = 5 * MIB
MAX_METADATA = 2048
HEADERS = ("ContentType", "CacheControl", "ContentDisposition", "ContentLanguage", "ContentEncoding")
ALGORITHMS = ("CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME")
SEGMENTS = ("a", "b", "a.b", "a0", "a!", "a b", "+", "%", "%2F", "é", "\ue000", "\uffff",
            "\U0001f600", "ab", "~", "&<>", "?#=", "a\tb", "a\x01")

Outcome = Any  # a dict of compared fields, or an Err


@dataclass(frozen=True)
class Err:
    """An error outcome: S3 code and HTTP status."""

    code: str
    status: int


class Mismatch(AssertionError):
    """The server and the model disagree."""


def utf8(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


def xml_safe(text: str) -> bool:
    """Whether XML 1.0 can carry `text` (U+FFFE/U+FFFF and most controls cannot)."""
    return not any(c in "\ufffe\uffff" or (ord(c) < 0x20 and c not in "\t\n\r") for c in text)


def checksum(algorithm: str, body: bytes) -> str:
    """The base64 checksum S3 reports for `body`."""
    if algorithm == "CRC32":
        raw = zlib.crc32(body).to_bytes(4, "big")
    elif algorithm == "CRC32C":
        raw = crt.crc32c(body).to_bytes(4, "big")
    elif algorithm == "CRC64NVME":
        raw = crt.crc64nvme(body).to_bytes(8, "big")
    else:
        raw = hashlib.new(algorithm.lower(), body).digest()
    return base64.b64encode(raw).decode()


def body_of(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# ------------------------------------------------------------------------------------ model


@dataclass
class Obj:
    """An object (or a "dir/" marker): content, ETag, metadata, checksums, part sizes."""

    body: bytes
    etag: str
    meta: dict[str, str]
    headers: dict[str, str]
    sums: dict[str, str] = field(default_factory=dict)  # algorithm -> base64
    parts: list[int] | None = None
    mtime: int | None = None  # ns, from x-amz-meta-mtime; None: the upload time (not known)

    @classmethod
    def make(cls, body: bytes, etag: str, meta: dict[str, str], headers: dict[str, str],
             sums: dict[str, str], parts: list[int] | None = None) -> Obj:
        """An object stored by a request with metadata `meta`: a valid x-amz-meta-mtime is the
        mtime, not metadata (docs/s3-mapping.md, "Metadata")."""
        mtime = parse_mtime(meta.get("mtime"))
        stored = {k: v for k, v in meta.items() if k != "mtime" or mtime is None}
        return cls(body, etag, stored, dict(headers), sums, parts, mtime)

    def seconds(self) -> float:
        return self.mtime // 10**9 if self.mtime is not None else time.time()


def parse_mtime(value: str | None) -> int | None:
    """x-amz-meta-mtime (float seconds) in ns, if valid."""
    try:
        seconds = Decimal(value.strip()) if value is not None else None
    except InvalidOperation:
        return None
    if seconds is None or not seconds.is_finite() or not 0 <= seconds < 1 << 33:
        return None
    return int(seconds * 1_000_000_000)


def format_mtime(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    return f"{seconds}.{fraction:09d}".rstrip("0").rstrip(".")


@dataclass
class Upload:
    """A multipart upload in progress."""

    bucket: str
    key: str
    meta: dict[str, str]
    headers: dict[str, str]
    algorithm: str | None
    checksum_type: str | None
    parts: dict[int, bytes] = field(default_factory=dict)


def key_error(key: str) -> Err | None:
    """What s3api/names.py refuses (docs/s3-mapping.md, "Invalid keys")."""
    if len(utf8(key)) > 1024:
        return Err("KeyTooLongError", 400)
    if not key or key.startswith("/") or "\0" in key:
        return Err("InvalidArgument", 400)
    for segment in key.removesuffix("/").split("/"):
        if segment in ("", ".", ".."):
            return Err("InvalidArgument", 400)
        if len(utf8(segment)) > 255:
            return Err("KeyTooLongError", 400)
    return None


def parse_range(value: str | None, size: int) -> tuple[int, int] | Err | None:
    """A single byte range as (first, last), None for the whole object."""
    if not value or not value.startswith("bytes=") or "," in value:
        return None
    first_text, _, last_text = value[6:].partition("-")
    if not (first_text or last_text) or not (first_text + last_text).isdigit():
        return None
    if not first_text:
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return Err("InvalidRange", 416)
        return max(0, size - suffix), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return None
    if first >= size:
        return Err("InvalidRange", 416)
    return first, min(last, size - 1)


def list_entries(keys: Iterable[str], prefix: str, delimiter: str | None,
                 marker: str) -> list[tuple[str, str]]:
    """("key", k) and ("prefix", p) in listing order after `marker`; a common prefix that the
    marker lies in is skipped (docs/s3-mapping.md, "Listings")."""
    out: list[tuple[str, str]] = []
    for key in sorted(keys, key=utf8):
        if not key.startswith(prefix) or (marker and utf8(key) <= utf8(marker)):
            continue
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        if cut < 0:
            out.append(("key", key))
            continue
        common = key[:cut + len(delimiter)]
        if (out and out[-1] == ("prefix", common)) or marker.startswith(common):
            continue
        out.append(("prefix", common))
    return out


class Model:
    """Buckets as dicts: files (key -> Obj) and explicit directories (path -> marker Obj).
    A directory exists while it is explicit or holds something; implicit ones are derived."""

    def __init__(self, buckets: Iterable[str]) -> None:
        self.files: dict[str, dict[str, Obj]] = {b: {} for b in buckets}
        self.dirs: dict[str, dict[str, Obj]] = {b: {} for b in buckets}
        self.uploads: dict[int, Upload] = {}
        self.completed: dict[int, tuple[str, str, str]] = {}  # handle -> bucket, key, ETag

    # --- namespace

    def paths(self, bucket: str) -> list[str]:
        return [*self.files[bucket], *self.dirs[bucket]]

    def has_children(self, bucket: str, path: str) -> bool:
        return any(p.startswith(path + "/") for p in self.paths(bucket))

    def is_dir(self, bucket: str, path: str) -> bool:
        return path in self.dirs[bucket] or self.has_children(bucket, path)

    def parent_is_file(self, bucket: str, path: str) -> bool:
        segments = path.split("/")
        return any("/".join(segments[:i]) in self.files[bucket] for i in range(1, len(segments)))

    def lookup(self, bucket: str, key: str) -> Obj | None:
        if key.endswith("/"):
            return self.dirs[bucket].get(key[:-1])
        return self.files[bucket].get(key)

    def listed(self, bucket: str) -> dict[str, Obj]:
        """The objects listings show: files, and empty explicit directories as "d/"."""
        out = dict(self.files[bucket])
        for path, marker in self.dirs[bucket].items():
            if not self.has_children(bucket, path):
                out[path + "/"] = marker
        return out

    def conflict(self, bucket: str, key: str) -> Err | None:
        """Why `key` cannot be stored as a file (or for "d/" as a directory)."""
        path = key.removesuffix("/")
        if self.parent_is_file(bucket, path):
            return Err("ObjectParentIsFile", 409)
        if key.endswith("/"):
            return Err("ObjectParentIsFile", 409) if path in self.files[bucket] else None
        return Err("ExistingObjectIsDirectory", 409) if self.is_dir(bucket, path) else None

    def touch(self, bucket: str, key: str) -> None:
        """An entry is added or removed at `key`: the nearest existing directory above it gets
        a new POSIX mtime, which a "dir/" marker shows as its Last-Modified (now)."""
        segments = key.removesuffix("/").split("/")
        for i in range(len(segments) - 1, 0, -1):
            parent = "/".join(segments[:i])
            if self.is_dir(bucket, parent):
                if parent in self.dirs[bucket]:
                    self.dirs[bucket][parent].mtime = None
                return

    def store(self, bucket: str, key: str, obj: Obj) -> Err | None:
        """Store obj under key, or the conflict that prevents it."""
        err = self.conflict(bucket, key)
        if err is None:
            path = key.removesuffix("/")
            if not (key.endswith("/") and self.is_dir(bucket, path)):  # (else no new entry)
                self.touch(bucket, key)
            (self.dirs if key.endswith("/") else self.files)[bucket][path] = obj
        return err

    # --- objects

    def put(self, bucket: str, key: str, body: bytes, meta: dict[str, str], headers: dict[str, str],
            check: str, cond: str | None, cond_etag: str | None) -> Outcome:
        err = key_error(key) or metadata_error(meta)
        if err is None and cond is not None:
            err = self.put_condition(bucket, key, cond, cond_etag)
        if err is None and key.endswith("/") and body:
            err = Err("DirectoryObjectContainsData", 400)
        if err is None and check.startswith("bad"):
            err = Err("BadDigest", 400)
        if err is not None:
            return err
        sums = {} if key.endswith("/") else {put_algorithm(check): checksum(put_algorithm(check), body)}
        obj = Obj.make(body, hashlib.md5(body).hexdigest(), meta, headers, sums)
        return self.store(bucket, key, obj) or {"etag": obj.etag}

    def put_condition(self, bucket: str, key: str, cond: str, etag: str | None) -> Err | None:
        current = self.lookup(bucket, key)
        if cond == "if-none-match":
            return Err("PreconditionFailed", 412) if current is not None else None
        if current is None:
            return Err("NoSuchKey", 404)
        return None if etag == current.etag else Err("PreconditionFailed", 412)

    def get(self, bucket: str, key: str, range_: str | None, part: int | None,
            if_match: str | None, if_none_match: str | None, since: tuple[str, int] | None,
            overrides: dict[str, str]) -> Outcome:
        if err := key_error(key):
            return err
        obj = self.lookup(bucket, key)
        if obj is None:
            return Err("NoSuchKey", 404)
        if err := conditions(obj, if_match, if_none_match, since):
            return err
        span = parse_range(range_, len(obj.body))
        if part is not None:  # (the generator never sends a Range with it)
            span = part_span(obj, part)
        if isinstance(span, Err):
            return span
        return response(obj, span, overrides, len(obj.parts) if part and obj.parts else None)

    def delete(self, bucket: str, key: str) -> Outcome:
        if err := key_error(key):
            return err
        path = key.removesuffix("/")
        if key.endswith("/") and path in self.dirs[bucket]:
            self.dirs[bucket].pop(path)  # a non-empty one stays as an implicit directory
            if not self.has_children(bucket, path):
                self.touch(bucket, key)
        elif not key.endswith("/") and path in self.files[bucket]:
            self.files[bucket].pop(path)
            self.touch(bucket, key)
        return {"status": 204}

    def delete_objects(self, bucket: str, keys: list[str], quiet: bool) -> Outcome:
        if not all(xml_safe(key) for key in keys):
            return Err("MalformedXML", 400)
        deleted, errors = [], []
        for key in keys:
            err = self.delete(bucket, key)
            if isinstance(err, Err):
                errors.append((key, err.code))
            elif not quiet:
                deleted.append(key)
        return {"deleted": deleted, "errors": errors}

    def copy(self, src_bucket: str, src_key: str, bucket: str, key: str, directive: str,
             meta: dict[str, str], headers: dict[str, str], cond: str | None,
             cond_etag: str | None) -> Outcome:
        src = self.lookup(src_bucket, src_key) if key_error(src_key) is None else None
        err = (key_error(src_key) or (Err("NoSuchKey", 404) if src is None else None)
               or (Err("NotImplemented", 501) if src_key.endswith("/") else None)  # (AWS copies)
               or key_error(key) or (Err("InvalidArgument", 400) if key.endswith("/") else None))
        if err is None and cond is not None:
            matches = cond_etag == src.etag
            if (cond == "if-match") != matches:
                err = Err("PreconditionFailed", 412)
        if err is None and directive == "REPLACE":
            err = metadata_error(meta)
        if err is not None:
            return err
        replaced = Obj.make(src.body, src.etag, meta, headers, src.sums, src.parts)
        if (src_bucket, src_key) == (bucket, key):
            if directive == "COPY":
                return Err("InvalidRequest", 400)
            self.store(bucket, key, replaced)  # metadata and mtime: content and ETag stay
            return {"etag": src.etag}
        sums = {name: checksum(name, src.body) for name in src.sums}
        obj = replaced if directive == "REPLACE" else Obj(src.body, "", src.meta, src.headers, mtime=src.mtime)
        obj.etag, obj.sums, obj.parts = hashlib.md5(src.body).hexdigest(), sums, None
        return self.store(bucket, key, obj) or {"etag": obj.etag}

    def recreate(self, bucket: str) -> Outcome:
        """DeleteBucket (refused while it holds objects; aborts its uploads) and CreateBucket."""
        if self.paths(bucket):
            return Err("BucketNotEmpty", 409)
        self.uploads = {h: u for h, u in self.uploads.items() if u.bucket != bucket}
        self.completed = {h: done for h, done in self.completed.items() if done[0] != bucket}
        return {"status": 204}

    # --- multipart

    def create_upload(self, handle: int, bucket: str, key: str, meta: dict[str, str],
                      headers: dict[str, str], algorithm: str | None,
                      checksum_type: str | None) -> Outcome:
        err = (key_error(key) or (Err("DirectoryObjectContainsData", 400) if key.endswith("/") else None)
               or metadata_error(meta))
        if err is None and checksum_type is not None:
            allowed = {"CRC32": "FULL_OBJECT COMPOSITE", "CRC32C": "FULL_OBJECT COMPOSITE",
                       "CRC64NVME": "FULL_OBJECT"}.get(algorithm or "", "COMPOSITE")
            if algorithm is None or checksum_type not in allowed.split():
                err = Err("InvalidRequest", 400)
        if err is None:
            default = "FULL_OBJECT" if algorithm == "CRC64NVME" else "COMPOSITE"
            self.uploads[handle] = Upload(bucket, key, dict(meta), dict(headers), algorithm,
                                          checksum_type or default)
        return err or {"key": key}

    def upload(self, handle: int | None, bucket: str, key: str) -> Upload | Err:
        upload = self.uploads.get(handle) if handle is not None else None
        if upload is None or (upload.bucket, upload.key) != (bucket, key):
            return Err("NoSuchUpload", 404)
        return upload

    def upload_part(self, handle: int | None, bucket: str, key: str, number: int,
                    body: bytes) -> Outcome:
        if not 1 <= number <= 10000:
            return Err("InvalidArgument", 400)
        upload = self.upload(handle, bucket, key)
        if isinstance(upload, Err):
            return upload
        upload.parts[number] = body
        return {"etag": hashlib.md5(body).hexdigest()}

    def upload_part_copy(self, handle: int | None, bucket: str, key: str, number: int,
                         src_bucket: str, src_key: str, span: str | None) -> Outcome:
        upload = self.upload(handle, bucket, key)
        src = self.lookup(src_bucket, src_key) if key_error(src_key) is None else None
        err = (upload if isinstance(upload, Err) else key_error(src_key)
               or (Err("NoSuchKey", 404) if src is None else None)
               or (Err("InvalidRequest", 400) if src_key.endswith("/") else None))
        if err is not None:
            return err
        first, last = 0, len(src.body) - 1
        if span is not None:
            first_text, _, last_text = span.removeprefix("bytes=").partition("-")
            if not last_text:
                return Err("InvalidArgument", 400)
            first, last = int(first_text), int(last_text)
            if last < first or last >= len(src.body):
                return Err("InvalidRange", 416)
        return self.upload_part(handle, bucket, key, number, src.body[first:last + 1])

    def complete(self, handle: int | None, bucket: str, key: str,
                 parts: list[tuple[int, str]]) -> Outcome:
        numbers = [number for number, _ in parts]
        if err := key_error(key):
            return err
        if not parts:
            return Err("MalformedXML", 400)
        if not all(1 <= number <= 10000 for number in numbers):
            return Err("InvalidArgument", 400)
        if any(a >= b for a, b in zip(numbers, numbers[1:], strict=False)):
            return Err("InvalidPartOrder", 400)
        upload = self.upload(handle, bucket, key)
        if isinstance(upload, Err):
            done = self.completed.get(handle) if handle is not None else None
            return {"etag": done[2]} if done and done[:2] == (bucket, key) else upload
        if self.parent_is_file(bucket, key):
            return Err("ObjectParentIsFile", 409)
        chosen = []
        for i, (number, etag) in enumerate(parts):
            body = upload.parts.get(number)
            err = None
            if body is None or hashlib.md5(body).hexdigest() != etag:
                err = Err("InvalidPart", 400)
            elif i < len(parts) - 1 and len(body) < MIN_PART:
                err = Err("EntityTooSmall", 400)
            if err is not None:
                if "/" in key and not self.is_dir(bucket, key.rsplit("/", 1)[0]):
                    self.touch(bucket, key)  # its parents were made, and removed again
                return err
            chosen.append(body)
        digest = hashlib.md5(b"".join(hashlib.md5(b).digest() for b in chosen)).hexdigest()
        etag = f"{digest}-{len(chosen)}"
        sums = {upload.algorithm: multipart_checksum(upload, chosen)} if upload.algorithm else {}
        obj = Obj.make(b"".join(chosen), etag, upload.meta, upload.headers, sums, [len(b) for b in chosen])
        if err := self.store(bucket, key, obj):
            return err
        del self.uploads[handle]
        self.completed[handle] = (bucket, key, etag)
        return {"etag": etag}

    def abort(self, handle: int | None, bucket: str, key: str) -> Outcome:
        upload = self.upload(handle, bucket, key)
        if isinstance(upload, Err):
            return upload
        del self.uploads[handle]
        return {"status": 204}

    def list_parts(self, handle: int | None, bucket: str, key: str, max_parts: int) -> Outcome:
        upload = self.upload(handle, bucket, key)
        if isinstance(upload, Err):
            return upload
        parts = [(n, hashlib.md5(b).hexdigest(), len(b)) for n, b in sorted(upload.parts.items())]
        return {"pages": [parts[i:i + max_parts] for i in range(0, len(parts), max_parts)] or [[]]}

    def list_uploads(self, bucket: str, prefix: str, delimiter: str | None,
                     max_uploads: int) -> Outcome:
        """Uploads in key, then initiation order; common prefixes rolled up; in pages."""
        found = sorted(((u.key, h) for h, u in self.uploads.items()
                        if u.bucket == bucket and u.key.startswith(prefix)),
                       key=lambda item: (utf8(item[0]), item[1]))
        entries: list[tuple[str, Any]] = []
        for key, handle in found:
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            entry = ("prefix", key[:cut + len(delimiter)]) if cut >= 0 else ("upload", (key, handle))
            if entry not in entries:
                entries.append(entry)
        pages = [entries[i:i + max_uploads] for i in range(0, max(len(entries), 1), max_uploads)]
        return {"pages": [{"uploads": [v for kind, v in page if kind == "upload"],
                           "prefixes": [v for kind, v in page if kind == "prefix"]} for page in pages]}

    # --- listings

    def list_pages(self, bucket: str, prefix: str, delimiter: str | None, max_keys: int,
                   start: str) -> Outcome:
        listed = self.listed(bucket)
        entries = list_entries(listed, prefix, delimiter or None, start)
        max_keys = min(max_keys, 1000)
        pages = []
        for i in range(0, max(len(entries), 1), max_keys):
            chunk = entries[i:i + max_keys]
            pages.append({
                "contents": [(k, len(listed[k].body), listed[k].etag) for kind, k in chunk if kind == "key"],
                "prefixes": [p for kind, p in chunk if kind == "prefix"],
                "truncated": i + max_keys < len(entries)})
        return {"pages": pages}


def multipart_checksum(upload: Upload, parts: list[bytes]) -> str:
    """The object checksum of a completed upload: of the whole content (FULL_OBJECT), or the
    checksum of the parts' raw checksums, "-N" (COMPOSITE)."""
    algorithm = upload.algorithm or ""
    if upload.checksum_type == "FULL_OBJECT":
        return checksum(algorithm, b"".join(parts))
    raw = b"".join(base64.b64decode(checksum(algorithm, part)) for part in parts)
    return f"{checksum(algorithm, raw)}-{len(parts)}"


def put_algorithm(check: str) -> str:
    """The checksum a PUT with this variant stores (boto3 sends CRC32 by default)."""
    return check if check in ALGORITHMS else "CRC32"


def metadata_error(meta: dict[str, str]) -> Err | None:
    size = sum(len(name) + len(value) for name, value in meta.items())
    return Err("MetadataTooLarge", 400) if size > MAX_METADATA else None


def part_span(obj: Obj, part: int) -> tuple[int, int] | Err | None:
    """The byte range of ?partNumber=N (None: the whole object, part 1 of a simple one)."""
    if obj.parts is None:
        return None if part == 1 else Err("InvalidPartNumber", 416)
    if part > len(obj.parts):
        return Err("InvalidPartNumber", 416)
    first = sum(obj.parts[:part - 1])
    return first, first + obj.parts[part - 1] - 1  # (first, first - 1) for an empty part


def response(obj: Obj, span: tuple[int, int] | None, overrides: dict[str, str],
             parts_count: int | None) -> dict:
    """The compared fields of a GET answer (HEAD: without the body)."""
    size = len(obj.body)
    body = obj.body if span is None else obj.body[span[0]:span[1] + 1]
    empty_part = span is not None and span[1] < span[0]  # answered as an empty 200
    ranged = span is not None and not empty_part
    headers = {"ContentType": "binary/octet-stream", **obj.headers}
    for name, value in overrides.items():
        headers[name.removeprefix("Response")] = value
    meta = dict(obj.meta)
    if obj.mtime is not None:
        meta.setdefault("mtime", format_mtime(obj.mtime))
    return {
        "status": 206 if ranged else 200, "body": hashlib.md5(body).hexdigest(),
        "length": len(body), "etag": obj.etag, "meta": meta, "headers": headers,
        "range": f"bytes {span[0]}-{span[1]}/{size}" if ranged else None,
        "parts": parts_count,
        "sums": obj.sums if span is None else {},
        "modified": obj.mtime // 10**9 if obj.mtime is not None else None,
    }


def conditions(obj: Obj, if_match: str | None, if_none_match: str | None,
               since: tuple[str, int] | None) -> Err | None:
    """GET/HEAD preconditions in RFC 7232 order (412, or 304 Not Modified)."""
    name, moment = since or ("", 0)
    if if_match is not None:
        if if_match not in (obj.etag, "*"):
            return Err("PreconditionFailed", 412)
    elif name == "IfUnmodifiedSince" and obj.seconds() > moment:
        return Err("PreconditionFailed", 412)
    if if_none_match is not None:
        return Err("304", 304) if if_none_match in (obj.etag, "*") else None
    if name == "IfModifiedSince" and obj.seconds() <= moment:
        return Err("304", 304)
    return None


# ------------------------------------------------------------------------------- the server


def call(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """fn(**kwargs), or its failure as an Err (client-side failures as Err(<type>, 0))."""
    try:
        return fn(**kwargs)
    except ClientError as exc:
        return Err(exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"])
    except BotoCoreError as exc:
        return Err(type(exc).__name__, 0)


def put_kwargs(body: bytes, check: str) -> dict[str, str]:
    """The checksum arguments of a PUT variant."""
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    if check == "md5":
        return {"ContentMD5": md5}
    if check == "bad-md5":
        return {"ContentMD5": base64.b64encode(hashlib.md5(body + b"!").digest()).decode()}
    if check == "bad-crc32":
        return {"ChecksumCRC32": checksum("CRC32", body + b"!")}
    if check in ALGORITHMS:
        return {"ChecksumAlgorithm": check}
    return {}


def quoted(etag: str | None) -> str | None:
    return etag if etag in (None, "*") else f'"{etag}"'


def get_fields(r: dict, body: bytes | None) -> dict:
    """The compared fields of a boto3 GetObject/HeadObject answer."""
    sums = {name: r[f"Checksum{name}"] for name in ALGORITHMS if f"Checksum{name}" in r}
    return {
        "status": r["ResponseMetadata"]["HTTPStatusCode"],
        "body": hashlib.md5(body).hexdigest() if body is not None else None,
        "length": r["ContentLength"], "etag": r["ETag"].strip('"'),
        "meta": r["Metadata"], "headers": {name: r[name] for name in HEADERS if name in r},
        "range": r.get("ContentRange"), "parts": r.get("PartsCount"), "sums": sums,
        "modified": int(r["LastModified"].timestamp()),
    }


class Remote:
    """The operations on the server, through boto3, answering in the model's terms."""

    def __init__(self, client: Any, raw_client: Any) -> None:
        self.s3, self.raw = client, raw_client
        self.upload_ids: dict[int, str] = {}  # upload handle -> the server's UploadId

    def upload_id(self, handle: int | None) -> str:
        return self.upload_ids.get(handle, "0" * 32) if handle is not None else "f" * 32

    def put(self, bucket: str, key: str, body: bytes, meta: dict[str, str], headers: dict[str, str],
            check: str, cond: str | None, cond_etag: str | None) -> Outcome:
        kwargs = {**headers, **put_kwargs(body, check)}
        if cond == "if-none-match":
            kwargs["IfNoneMatch"] = "*"
        elif cond == "if-match":
            kwargs["IfMatch"] = f'"{cond_etag}"'
        r = call(self.s3.put_object, Bucket=bucket, Key=key, Body=body, Metadata=meta, **kwargs)
        return r if isinstance(r, Err) else {"etag": r["ETag"].strip('"')}

    def get(self, bucket: str, key: str, range_: str | None, part: int | None,
            if_match: str | None, if_none_match: str | None, since: tuple[str, int] | None,
            overrides: dict[str, str], head: bool = False) -> Outcome:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "ChecksumMode": "ENABLED", **overrides}
        if since is not None:
            kwargs[since[0]] = datetime.fromtimestamp(since[1], UTC)
        for name, value in (("Range", range_), ("PartNumber", part), ("IfMatch", quoted(if_match)),
                            ("IfNoneMatch", quoted(if_none_match))):
            if value is not None:
                kwargs[name] = value
        if head:
            r = call(self.s3.head_object, **kwargs)
            return r if isinstance(r, Err) else get_fields(r, None)
        r = call(self.s3.get_object, **kwargs)
        if isinstance(r, Err):
            return r
        return get_fields(r, r["Body"].read())

    def delete(self, bucket: str, key: str) -> Outcome:
        r = call(self.s3.delete_object, Bucket=bucket, Key=key)
        return r if isinstance(r, Err) else {"status": r["ResponseMetadata"]["HTTPStatusCode"]}

    def delete_objects(self, bucket: str, keys: list[str], quiet: bool) -> Outcome:
        r = call(self.s3.delete_objects, Bucket=bucket,
                 Delete={"Objects": [{"Key": k} for k in keys], "Quiet": quiet})
        if isinstance(r, Err):
            return r
        return {"deleted": [d["Key"] for d in r.get("Deleted", [])],
                "errors": [(e["Key"], e["Code"]) for e in r.get("Errors", [])]}

    def copy(self, src_bucket: str, src_key: str, bucket: str, key: str, directive: str,
             meta: dict[str, str], headers: dict[str, str], cond: str | None,
             cond_etag: str | None) -> Outcome:
        kwargs: dict[str, Any] = {"MetadataDirective": directive}
        if directive == "REPLACE":
            kwargs.update(Metadata=meta, **headers)
        if cond is not None:
            kwargs["CopySourceIfMatch" if cond == "if-match" else "CopySourceIfNoneMatch"] = f'"{cond_etag}"'
        r = call(self.s3.copy_object, Bucket=bucket, Key=key,
                 CopySource={"Bucket": src_bucket, "Key": src_key}, **kwargs)
        return r if isinstance(r, Err) else {"etag": r["CopyObjectResult"]["ETag"].strip('"')}

    def recreate(self, bucket: str) -> Outcome:
        r = call(self.s3.delete_bucket, Bucket=bucket)
        if isinstance(r, Err):
            return r
        r = call(self.s3.create_bucket, Bucket=bucket)
        return r if isinstance(r, Err) else {"status": 204}

    def create_upload(self, handle: int, bucket: str, key: str, meta: dict[str, str],
                      headers: dict[str, str], algorithm: str | None,
                      checksum_type: str | None) -> Outcome:
        kwargs = {"ChecksumAlgorithm": algorithm} if algorithm else {}
        if checksum_type:
            kwargs["ChecksumType"] = checksum_type
        r = call(self.s3.create_multipart_upload, Bucket=bucket, Key=key, Metadata=meta,
                 **headers, **kwargs)
        if isinstance(r, Err):
            return r
        self.upload_ids[handle] = r["UploadId"]
        return {"key": r["Key"]}

    def upload_part(self, handle: int | None, bucket: str, key: str, number: int,
                    body: bytes) -> Outcome:
        r = call(self.s3.upload_part, Bucket=bucket, Key=key, UploadId=self.upload_id(handle),
                 PartNumber=number, Body=body)
        return r if isinstance(r, Err) else {"etag": r["ETag"].strip('"')}

    def upload_part_copy(self, handle: int | None, bucket: str, key: str, number: int,
                         src_bucket: str, src_key: str, span: str | None) -> Outcome:
        kwargs = {"CopySourceRange": span} if span is not None else {}
        r = call(self.s3.upload_part_copy, Bucket=bucket, Key=key, UploadId=self.upload_id(handle),
                 PartNumber=number, CopySource={"Bucket": src_bucket, "Key": src_key}, **kwargs)
        return r if isinstance(r, Err) else {"etag": r["CopyPartResult"]["ETag"].strip('"')}

    def complete(self, handle: int | None, bucket: str, key: str,
                 parts: list[tuple[int, str]]) -> Outcome:
        r = call(self.s3.complete_multipart_upload, Bucket=bucket, Key=key,
                 UploadId=self.upload_id(handle), MultipartUpload={
                     "Parts": [{"PartNumber": n, "ETag": f'"{etag}"'} for n, etag in parts]})
        return r if isinstance(r, Err) else {"etag": r["ETag"].strip('"')}

    def abort(self, handle: int | None, bucket: str, key: str) -> Outcome:
        r = call(self.s3.abort_multipart_upload, Bucket=bucket, Key=key,
                 UploadId=self.upload_id(handle))
        return r if isinstance(r, Err) else {"status": r["ResponseMetadata"]["HTTPStatusCode"]}

    def list_parts(self, handle: int | None, bucket: str, key: str, max_parts: int) -> Outcome:
        pages, marker = [], 0
        while len(pages) < 100:
            r = call(self.s3.list_parts, Bucket=bucket, Key=key, UploadId=self.upload_id(handle),
                     MaxParts=max_parts, PartNumberMarker=marker)
            if isinstance(r, Err):
                return r
            pages.append([(p["PartNumber"], p["ETag"].strip('"'), p["Size"]) for p in r.get("Parts", [])])
            if not r["IsTruncated"]:
                break
            marker = r["NextPartNumberMarker"]
        return {"pages": pages}

    def list_uploads(self, bucket: str, prefix: str, delimiter: str | None,
                     max_uploads: int) -> Outcome:
        handles = {upload_id: handle for handle, upload_id in self.upload_ids.items()}
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxUploads": max_uploads}
        if delimiter:
            args["Delimiter"] = delimiter
        pages: list[dict] = []
        while len(pages) < 100:
            r = call(self.s3.list_multipart_uploads, **args)
            if isinstance(r, Err):
                return r
            pages.append({"uploads": [(u["Key"], handles.get(u["UploadId"], -1))
                                      for u in r.get("Uploads", [])],
                          "prefixes": [p["Prefix"] for p in r.get("CommonPrefixes", [])]})
            if not r["IsTruncated"]:
                break
            args.update(KeyMarker=r["NextKeyMarker"], UploadIdMarker=r.get("NextUploadIdMarker", ""))
        return {"pages": pages}

    def list_pages(self, bucket: str, api: str, encoding: str, prefix: str, delimiter: str | None,
                   max_keys: int, start: str) -> Outcome:
        """Page through a listing; each page as the model gives it."""
        client = self.raw if encoding == "none" else self.s3
        decode = unquote_plus if encoding == "url" else (lambda text: text)
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if delimiter is not None:
            args["Delimiter"] = delimiter
        if encoding == "url":
            args["EncodingType"] = "url"
        method, marker_arg, items = {
            "v1": (client.list_objects, "Marker", "Contents"),
            "v2": (client.list_objects_v2, "StartAfter", "Contents"),
            "versions": (client.list_object_versions, "KeyMarker", "Versions")}[api]
        if start:
            args[marker_arg] = start
        pages: list[dict] = []
        while len(pages) < 2000:
            r = call(method, **args)
            if isinstance(r, Err):
                return r
            contents = [(decode(o["Key"]), o["Size"], o["ETag"].strip('"')) for o in r.get(items, [])]
            prefixes = [decode(p["Prefix"]) for p in r.get("CommonPrefixes", [])]
            pages.append({"contents": contents, "prefixes": prefixes, "truncated": r["IsTruncated"]})
            if api == "v2" and r["KeyCount"] != len(contents) + len(prefixes):
                return Err("KeyCount", 0)
            if any((o.get("VersionId"), o.get("IsLatest")) != ("null", True) for o in r.get("Versions", [])):
                return Err("VersionId", 0)
            if not r["IsTruncated"]:
                break
            args.update(next_marker(api, r, decode, contents))
        return {"pages": pages}


def next_marker(api: str, r: dict, decode: Callable[[str], str],
                contents: list[tuple[str, int, str]]) -> dict[str, str]:
    """The arguments that ask for the page after `r`."""
    if api == "v2":
        return {"ContinuationToken": r["NextContinuationToken"]}
    if api == "versions":
        return {"KeyMarker": decode(r["NextKeyMarker"]), "VersionIdMarker": r["NextVersionIdMarker"]}
    return {"Marker": decode(r["NextMarker"]) if "NextMarker" in r else contents[-1][0]}


# ------------------------------------------------------------------------------ generation


@dataclass
class Op:
    """One operation with concrete arguments (buckets by role, uploads by handle)."""

    name: str
    args: dict[str, Any]

    def __repr__(self) -> str:
        shown = {k: abbreviated(v) for k, v in self.args.items()}
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


def abbreviated(value: Any) -> Any:
    """Bodies as their size, long strings (in dicts too) shortened: for reports."""
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, str) and len(value) > 40:
        return f"{value[:12]}...<{len(value)} chars>"
    if isinstance(value, dict):
        return {k: abbreviated(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(abbreviated(v) for v in value)
    return value


WEIGHTS = {"put": 25, "get": 12, "head": 5, "delete": 7, "delete_objects": 4, "copy": 7,
           "recreate": 1, "create_upload": 3, "upload_part": 6, "upload_part_copy": 2,
           "complete": 4, "abort": 1, "list_parts": 2, "list_uploads": 1, "multipart": 2, "list": 12}


class Generator:
    """Draws operations that make sense for the model's current state (and some that do not).

    `avoid` names known bugs not to run into again, so that an exploration goes on past them:
    "self-copy-multipart", "empty-part-get", "dir-reput-mtime" (see REPRODUCTIONS) and
    "long-list-segment" (fixed). The tests avoid nothing."""

    def __init__(self, seed: int, model: Model, names: dict[str, str], big: bool = True,
                 avoid: frozenset[str] = frozenset()) -> None:
        self.rng = random.Random(seed)
        self.model, self.names, self.big = model, names, big
        self.avoid = avoid  # known bugs not to run into again (exploration)
        self.handles = 0

    def ops(self) -> list[Op]:
        """The next operation (a whole multipart upload is a sequence of them)."""
        name = self.rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
        if name == "multipart":
            return self.gen_multipart()
        return [Op(name, getattr(self, "gen_" + name)())]

    # --- building blocks

    def role(self) -> str:
        return "A" if self.rng.random() < 0.85 else "B"

    def known(self, role: str) -> list[str]:
        """Keys near the bucket's content: objects, directories with and without "/", parents."""
        bucket = self.names[role]
        out = list(self.model.files[bucket])
        for path in self.model.paths(bucket):
            segments = path.split("/")
            out += ["/".join(segments[:i]) + tail for i in range(1, len(segments) + 1)
                    for tail in ("", "/")]
        out += [u.key for u in self.model.uploads.values() if u.bucket == bucket]
        return out

    def existing(self, role: str) -> str:
        """Mostly a key that names an object (file or "dir/" marker), else any key."""
        bucket = self.names[role]
        objects = [*self.model.files[bucket], *(d + "/" for d in self.model.dirs[bucket])]
        return self.rng.choice(objects) if objects and self.rng.random() < 0.7 else self.key(role)

    def key(self, role: str, valid: bool = False) -> str:
        rng = self.rng
        roll = rng.random()
        known = self.known(role)
        if known and roll < 0.55:
            key = rng.choice(known)
            return key + rng.choice(("/", "/" + rng.choice(SEGMENTS))) if rng.random() < 0.2 else key
        if roll < 0.9 or valid:
            key = "/".join(rng.choice(SEGMENTS) for _ in range(rng.choice((1, 1, 2, 2, 3))))
            return key + "/" if rng.random() < 0.2 else key
        if roll < 0.96:
            return self.long_key()
        return rng.choice(("a//b", "./a", "a/./b", "a/..", "/a", "..", ".", "a/../b", "a\0b"))

    def long_key(self) -> str:
        rng = self.rng
        segment = rng.choice(("x" * 255, "é" * 127 + "x", "\U0001f600" * 63 + "abc", "y" * 256,
                              "é" * 128))
        count = rng.choice((1, 1, 2, 4, 5))
        return "/".join([segment] * count) + rng.choice(("", "/"))

    def size(self) -> int:
        rng = self.rng
        roll = rng.random()
        if roll < 0.7 or not self.big:
            return rng.randint(0, 64)
        if roll < 0.85:
            return rng.randint(65, 5000)
        if roll < 0.93:
            return rng.choice(((64 << 10) - 1, 64 << 10, (64 << 10) + 1))
        if roll < 0.98:
            return rng.randint(100_000, MIB)
        return rng.randint(MIB, 3 * MIB)

    def body(self, size: int | None = None) -> bytes:
        return body_of(self.rng.getrandbits(32), self.size() if size is None else size)

    def meta(self) -> dict[str, str]:
        rng = self.rng
        names = ("color", "Mixed-Case", "x_y", "n1")
        values = ("blue", "a b", "1+2=3", "%41", "x" * 100, "")
        meta = {name.lower(): rng.choice(values) for name in rng.sample(names, rng.randint(0, 2))}
        if rng.random() < 0.03:  # around the 2 KiB limit of names and values
            meta["big"] = "z" * (rng.choice((2048, 2049, 2100)) - 3 - sum(map(len, [*meta, *meta.values()])))
        if rng.random() < 0.15:
            meta["mtime"] = rng.choice(("1600000000", "1600000000.25", "1234567890.123456789", "1e9",
                                        "0", "8589934592", "-5", "abc", "1600000000.0000000001"))
        return meta

    def headers(self) -> dict[str, str]:
        choices = {"ContentType": ("text/plain", "application/json; charset=utf-8", "image/png"),
                   "CacheControl": ("no-cache", "max-age=60"),
                   "ContentDisposition": ('attachment; filename="x y.txt"',),
                   "ContentLanguage": ("fr",), "ContentEncoding": ("gzip", "identity")}
        return {name: self.rng.choice(values) for name, values in choices.items()
                if self.rng.random() < 0.3}

    def etag_for(self, role: str, key: str) -> str:
        obj = self.model.lookup(self.names[role], key) if key_error(key) is None else None
        if obj is not None and self.rng.random() < 0.7:
            return obj.etag
        return hashlib.md5(str(self.rng.random()).encode()).hexdigest()

    def handle(self) -> int | None:
        """Mostly an upload in progress, sometimes a finished one or none."""
        roll = self.rng.random()
        if self.model.uploads and roll < 0.8:
            return self.rng.choice(list(self.model.uploads))
        if self.model.completed and roll < 0.95:
            return self.rng.choice(list(self.model.completed))
        return None

    def upload_target(self) -> dict[str, Any]:
        handle = self.handle()
        upload = self.model.uploads.get(handle) if handle is not None else None
        done = self.model.completed.get(handle) if handle is not None else None
        if upload is not None and self.rng.random() < 0.95:
            return {"handle": handle, "role": self.role_of(upload.bucket), "key": upload.key}
        if done is not None and self.rng.random() < 0.9:
            return {"handle": handle, "role": self.role_of(done[0]), "key": done[1]}
        role = self.role()
        return {"handle": handle, "role": role, "key": self.key(role, valid=True)}

    def role_of(self, bucket: str) -> str:
        return next(role for role, name in self.names.items() if name == bucket)

    # --- operations

    def gen_put(self) -> dict[str, Any]:
        rng = self.rng
        role = self.role()
        key = self.key(role)
        body = b"" if key.endswith("/") and rng.random() < 0.8 else self.body()
        check = rng.choice(("default",) * 6 + ("md5", "bad-md5", "bad-crc32") + ALGORITHMS)
        cond = rng.choice((None,) * 8 + ("if-none-match", "if-match"))
        meta = self.meta()
        if "dir-reput-mtime" in self.avoid and key.endswith("/") and "mtime" not in meta \
                and self.model.lookup(self.names[role], key) is not None:
            meta["mtime"] = "1600000000"
        return {"role": role, "key": key, "body": body, "meta": meta, "headers": self.headers(),
                "check": check, "cond": cond, "cond_etag": self.etag_for(role, key) if cond else None}

    def gen_get(self) -> dict[str, Any]:
        rng = self.rng
        role = self.role()
        key = self.existing(role)
        obj = self.model.lookup(self.names[role], key) if key_error(key) is None else None
        size = len(obj.body) if obj else rng.randint(0, 100)
        part = rng.choice((1, 1, 2, 3)) if rng.random() < (0.6 if obj and obj.parts else 0.1) else None
        if part and obj and obj.parts and part <= len(obj.parts) and not obj.parts[part - 1] \
                and "empty-part-get" in self.avoid:
            part = None
        overrides = {}
        if rng.random() < 0.1:
            overrides = {"ResponseContentType": "text/x-override", "ResponseCacheControl": "private"}
        return {"role": role, "key": key, "range_": None if part else self.range(size), "part": part,
                "if_match": self.condition(role, key), "if_none_match": self.condition(role, key),
                "since": self.since(obj), "overrides": overrides}

    def since(self, obj: Obj | None) -> tuple[str, int] | None:
        """An If-Modified-Since or If-Unmodified-Since whose outcome the model knows."""
        if self.rng.random() < 0.85:
            return None
        moments = [631152000, 4102444800]  # 1990, 2100
        if obj is not None and obj.mtime is not None:
            moments += [obj.mtime // 10**9, obj.mtime // 10**9 - 1]
        return (self.rng.choice(("IfModifiedSince", "IfUnmodifiedSince")), self.rng.choice(moments))

    def gen_head(self) -> dict[str, Any]:
        return self.gen_get()

    def condition(self, role: str, key: str) -> str | None:
        if self.rng.random() < 0.85:
            return None
        return "*" if self.rng.random() < 0.2 else self.etag_for(role, key)

    def range(self, size: int) -> str | None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.5:
            return None
        a, b = rng.randint(0, size + 2), rng.randint(0, size + 2)
        return rng.choice((f"bytes={a}-{b}", f"bytes={min(a, b)}-{max(a, b)}", f"bytes={a}-",
                           f"bytes=-{b}", "bytes=-0", "bytes=0-0", "bytes=abc", "bytes=0-1,3-4",
                           f"bytes={size - 1}-"))

    def gen_delete(self) -> dict[str, Any]:
        role = self.role()
        return {"role": role, "key": self.key(role)}

    def gen_recreate(self) -> dict[str, Any]:
        return {"role": self.role()}

    def gen_delete_objects(self) -> dict[str, Any]:
        role = self.role()
        keys = [self.key(role) for _ in range(self.rng.randint(1, 6))]
        return {"role": role, "keys": keys, "quiet": self.rng.random() < 0.3}

    def gen_copy(self) -> dict[str, Any]:
        rng = self.rng
        src_role, role = self.role(), self.role()
        src_key = self.existing(src_role)
        key = src_key if rng.random() < 0.15 else self.key(role)
        role = src_role if key == src_key else role
        src = self.model.lookup(self.names[src_role], src_key) if key_error(src_key) is None else None
        if "self-copy-multipart" in self.avoid and key == src_key and src and src.parts:
            key += "-copy"
        cond = rng.choice((None,) * 6 + ("if-match", "if-none-match"))
        return {"src_role": src_role, "src_key": src_key, "role": role, "key": key,
                "directive": rng.choice(("COPY", "REPLACE")), "meta": self.meta(),
                "headers": self.headers(), "cond": cond,
                "cond_etag": self.etag_for(src_role, src_key) if cond else None}

    def gen_create_upload(self) -> dict[str, Any]:
        role = self.role()
        key = self.key(role)
        while not xml_safe(key):  # the answer carries the key: XML 1.0 cannot (see xml_safe)
            key = self.key(role)
        self.handles += 1
        algorithm = self.rng.choice((None,) * 4 + ALGORITHMS)
        checksum_type = self.rng.choice((None, None, None, "FULL_OBJECT", "COMPOSITE"))
        return {"handle": self.handles, "role": role, "key": key, "meta": self.meta(),
                "headers": self.headers(), "algorithm": algorithm, "checksum_type": checksum_type}

    def gen_upload_part(self) -> dict[str, Any]:
        rng = self.rng
        number = rng.choice((1, 1, 2, 2, 3, 4, 10000)) if rng.random() < 0.98 else 10001
        big = self.big and rng.random() < {1: 0.4, 2: 0.15}.get(number, 0.02)
        size = MIN_PART + rng.choice((0, 1)) if big else rng.choice((0, 0, 1, 10, 100, 1000, 70_000))
        if "empty-part-get" in self.avoid:
            size = size or 1
        return {**self.upload_target(), "number": number, "body": self.body(size)}

    def gen_multipart(self) -> list[Op]:
        """A whole upload: parts in random order (all but the last of the minimum size), the
        completion, and a GET of one part."""
        rng = self.rng
        create = Op("create_upload", self.gen_create_upload())
        target = {name: create.args[name] for name in ("handle", "role", "key")}
        count = rng.choice((1, 2, 2, 3)) if self.big else 1
        last = rng.choice((0, 0, 1, 100, 70_000))
        if "empty-part-get" in self.avoid:
            last = last or 1
        sizes = [MIN_PART + rng.choice((0, 1))] * (count - 1) + [last]
        bodies = [self.body(size) for size in sizes]
        uploads = [Op("upload_part", {**target, "number": i + 1, "body": bodies[i]})
                   for i in rng.sample(range(count), count)]
        complete = Op("complete", {**target, "parts": [(i + 1, hashlib.md5(b).hexdigest())
                                                       for i, b in enumerate(bodies)]})
        part = rng.randint(1, count + 1)
        get = Op("get", {"role": target["role"], "key": target["key"], "range_": None,
                         "part": part, "if_match": None, "if_none_match": None, "since": None,
                         "overrides": {}})
        return [create, *uploads, complete, get]

    def gen_upload_part_copy(self) -> dict[str, Any]:
        rng = self.rng
        src_role = self.role()
        src_key = self.existing(src_role)
        obj = self.model.lookup(self.names[src_role], src_key) if key_error(src_key) is None else None
        size = len(obj.body) if obj else 10
        a, b = rng.randint(0, size + 1), rng.randint(0, size + 1)
        span = rng.choice((None, None, f"bytes={min(a, b)}-{max(a, b)}", f"bytes={a}-{b}",
                           f"bytes={a}-", "bytes=0-0"))
        return {**self.upload_target(), "number": rng.choice((1, 2, 3)), "src_role": src_role,
                "src_key": src_key, "span": span}

    def gen_complete(self) -> dict[str, Any]:
        rng = self.rng
        target = self.upload_target()
        upload = self.model.uploads.get(target["handle"])
        stored = sorted(upload.parts.items()) if upload else []
        chosen = [(n, hashlib.md5(b).hexdigest()) for n, b in stored if rng.random() < 0.8]
        roll = rng.random()
        if roll < 0.05 and chosen:
            chosen.reverse()
        elif roll < 0.1:
            chosen.append((chosen[-1][0] + 1 if chosen else 1, EMPTY_MD5))
        elif roll < 0.15 and chosen:
            chosen[0] = (chosen[0][0], "0" * 32)
        if not chosen and rng.random() < 0.9:
            chosen = [(1, EMPTY_MD5)]
        return {**target, "parts": chosen}

    def gen_abort(self) -> dict[str, Any]:
        return self.upload_target()

    def gen_list_parts(self) -> dict[str, Any]:
        return {**self.upload_target(), "max_parts": self.rng.randint(1, 4)}

    def gen_list_uploads(self) -> dict[str, Any]:
        role = self.role()
        prefix = self.prefix(role) if self.rng.random() < 0.5 else ""
        # botocore does not ask this listing for encoding-type=url: the XML echoes the prefix
        return {"role": role, "prefix": prefix if xml_safe(prefix) else "",
                "delimiter": self.rng.choice((None, "/", "/", "a", "é")),
                "max_uploads": self.rng.randint(1, 5)}

    def prefix(self, role: str) -> str:
        rng = self.rng
        known = self.known(role)
        if not known or rng.random() < 0.3:
            long = "x" * (254 if "long-list-segment" in self.avoid else 300)
            return rng.choice(("", "a", "a/", "a.", "é", "\uffff", "\U0001f600", "a/b", long + "/",
                               long + "!", "/", "a//", "./", "a/./", "a/../"))
        key = rng.choice(known)
        return key[:rng.randint(0, len(key))]

    def gen_list(self) -> dict[str, Any]:
        rng = self.rng
        role = self.role()
        start = "" if rng.random() < 0.6 else self.prefix(role) + rng.choice(("", "!", "/", "0", "\uffff"))
        return {"role": role, "api": rng.choice(("v1", "v2", "versions")),
                "encoding": rng.choice(("auto", "auto", "url", "none")),
                "prefix": self.prefix(role) if rng.random() < 0.5 else "",
                "delimiter": rng.choice((None, None, "/", "/", "!", "a", "é", "/a", "")),
                "max_keys": rng.randint(1, 7), "start": start}


# ---------------------------------------------------------------------------------- driver


class Fuzzer:
    """Applies operations to the model and the server and compares the outcomes."""

    def __init__(self, client: Any, raw_client: Any, names: dict[str, str]) -> None:
        self.names = names
        self.model = Model(names.values())
        self.server = Remote(client, raw_client)

    def apply(self, op: Op) -> None:
        """Run `op` on both sides; Mismatch if they disagree."""
        args = dict(op.args)
        for role_arg in ("role", "src_role"):
            if role_arg in args:
                args[role_arg.replace("role", "bucket")] = self.names[args.pop(role_arg)]
        expected, actual = comparable(op.name, args, *self.run_both(op.name, args))
        if expected != actual:
            raise Mismatch(f"{op!r}\n{difference(expected, actual)}")

    def run_both(self, name: str, args: dict[str, Any]) -> tuple[Outcome, Outcome]:
        if name == "head":  # GET without the body
            expected = self.model.get(**args)
            if isinstance(expected, dict):
                expected["body"] = None
            return expected, self.server.get(**args, head=True)
        if name == "list":
            return self.list_both(args)
        actual = getattr(self.server, name)(**args)  # (first: it learns the upload ids)
        return getattr(self.model, name)(**args), actual

    def list_both(self, args: dict[str, Any]) -> tuple[Outcome, Outcome]:
        model_args = {k: v for k, v in args.items() if k not in ("api", "encoding")}
        expected = self.model.list_pages(**model_args)
        actual = self.server.list_pages(**args)
        if args["encoding"] == "none" and not all(xml_safe(text) for text in texts(args, expected)):
            # The answer cannot be XML 1.0: any failure to read it will do.
            expected = actual if isinstance(actual, Err) else Err("unparseable XML", 0)
        return expected, actual

    def run(self, seed: int, ops: int, seconds: float, big: bool = True,
            log: list[Op] | None = None, avoid: frozenset[str] = frozenset()) -> int:
        """Apply up to `ops` generated operations within `seconds`; returns how many ran."""
        generator = Generator(seed, self.model, self.names, big, avoid)
        deadline = time.monotonic() + seconds
        for done in range(ops):
            if time.monotonic() > deadline:
                return done
            for op in generator.ops():
                if log is not None:
                    log.append(op)
                self.apply(op)
        return ops


def comparable(name: str, args: dict[str, Any], expected: Outcome,
               actual: Outcome) -> tuple[Outcome, Outcome]:
    """The outcomes as they are compared. HEAD errors have no body (only the status is known),
    and neither have errors whose XML would carry a key that XML 1.0 cannot hold; an mtime the
    model does not know (the upload time) is not compared."""
    if isinstance(expected, Err) and isinstance(actual, Err):
        keys = [v for k, v in args.items() if k in ("key", "src_key")]
        if name == "head" or not all(xml_safe(k) for k in keys):
            return Err("", expected.status), Err("", actual.status)
    if isinstance(expected, dict) and isinstance(actual, dict) and "modified" in expected:
        actual = dict(actual)
        if "mtime" not in expected["meta"]:
            actual["meta"] = {k: v for k, v in actual["meta"].items() if k != "mtime"}
        if expected["modified"] is None:
            actual["modified"] = None
    return expected, actual


def difference(expected: Outcome, actual: Outcome) -> str:
    """What differs, shortly: the fields (or the first listing page) that do."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if "pages" in expected and "pages" in actual:
            pairs = list(zip_longest(expected["pages"], actual["pages"]))
            i, (expected, actual) = next((i, p) for i, p in enumerate(pairs) if p[0] != p[1])
            return f"  page {i}:\n{difference(expected, actual)}"
        return "\n".join(f"  {name}: expected {abbreviated(expected.get(name))!r}, "
                         f"actual {abbreviated(actual.get(name))!r}"
                         for name in sorted(expected.keys() | actual.keys())
                         if expected.get(name) != actual.get(name))
    return f"  expected {abbreviated(expected)!r}\n  actual   {abbreviated(actual)!r}"


def texts(args: dict[str, Any], outcome: Outcome) -> list[str]:
    """The strings a listing's XML carries: the request's echoed and the keys and prefixes."""
    out = [args["prefix"], args["start"], args["delimiter"] or ""]
    for page in outcome["pages"] if isinstance(outcome, dict) else []:
        out += [key for key, _, _ in page["contents"]] + page["prefixes"]
    return out


# ----------------------------------------------------------------------------------- tests

SEEDS = tuple(range(1, 9))
OPS_PER_SEED = 400
SECONDS_PER_SEED = 5.0
NO_CONDITIONS = {"if_match": None, "if_none_match": None, "since": None, "overrides": {}}
UPLOAD = {"handle": 1, "role": "A", "key": "m"}


def raw_client(make_client: Callable[..., Any]) -> Any:
    """A client that sends listings without encoding-type (keys come back as XML text)."""
    client = make_client()
    for operation in ("ListObjects", "ListObjectsV2", "ListObjectVersions"):
        client.meta.events.unregister(f"before-parameter-build.s3.{operation}",
                                      set_list_objects_encoding_type_url)
    return client


def new_fuzzer(make_client: Callable[..., Any], bucket: str) -> Fuzzer:
    """A Fuzzer on `bucket` (role A) and a second bucket (role B), without client retries."""
    client = make_client()
    other = f"{bucket}-b"
    client.create_bucket(Bucket=other)
    return Fuzzer(client, raw_client(make_client), {"A": bucket, "B": other})


@pytest.mark.parametrize("seed", SEEDS)
def test_random_operations_agree_with_model(make_client, bucket, seed):
    """Random operations (bounded: OPS_PER_SEED or SECONDS_PER_SEED) give what the model says."""
    fuzzer = new_fuzzer(make_client, bucket)
    log: list[Op] = []
    try:
        fuzzer.run(seed, OPS_PER_SEED, SECONDS_PER_SEED, log=log)
    except Mismatch as exc:
        history = "\n".join(f"  {op!r}" for op in log[-12:])
        pytest.fail(f"seed {seed}, op {len(log)}: {exc}\nlast operations:\n{history}")


def put(key: str, body: bytes = b"", **meta: str) -> Op:
    return Op("put", {"role": "A", "key": key, "body": body, "meta": meta, "headers": {},
                      "check": "default", "cond": None, "cond_etag": None})


def multipart(*bodies: bytes) -> list[Op]:
    """Upload `bodies` as the parts of object "m" and complete it."""
    create = Op("create_upload", {**UPLOAD, "meta": {}, "headers": {}, "algorithm": None,
                                  "checksum_type": None})
    parts = [Op("upload_part", {**UPLOAD, "number": i, "body": body})
             for i, body in enumerate(bodies, 1)]
    done = Op("complete", {**UPLOAD, "parts": [(i, hashlib.md5(body).hexdigest())
                                               for i, body in enumerate(bodies, 1)]})
    return [create, *parts, done]


def listing(**args: Any) -> Op:
    return Op("list", {"role": "A", "api": "v2", "encoding": "auto", "prefix": "",
                       "delimiter": None, "max_keys": 1000, "start": "", **args})


# Minimal cases of the disagreements the random operations found (see the module docstring).
REPRODUCTIONS: dict[str, list[Op]] = {
    # CopyObject onto itself (REPLACE) drops the part layout of a multipart object: its ETag
    # becomes the bare MD5 of the part MD5s (no "-1"), and ?partNumber answers change.
    "self-copy-keeps-multipart-etag": [
        *multipart(b"x" * 10),
        Op("copy", {"src_role": "A", "src_key": "m", "role": "A", "key": "m",
                    "directive": "REPLACE", "meta": {"k": "v"}, "headers": {}, "cond": None,
                    "cond_etag": None}),
        Op("head", {"role": "A", "key": "m", "range_": None, "part": None, **NO_CONDITIONS}),
    ],
    # GET ?partNumber=N of an empty part answers the whole object.
    "empty-part-is-empty": [
        *multipart(body_of(1, MIN_PART), b""),
        Op("get", {"role": "A", "key": "m", "range_": None, "part": 2, **NO_CONDITIONS}),
    ],
    # A second PUT of "d/" without x-amz-meta-mtime keeps the first one's mtime (1970 here)
    # instead of the upload time.
    "marker-put-again-is-modified": [
        put("d/", mtime="0"),
        put("d/"),
        Op("head", {"role": "A", "key": "d/", "range_": None, "part": None,
                    **NO_CONDITIONS, "since": ("IfUnmodifiedSince", 631152000)}),
    ],
    # A listing whose prefix or start-after holds a name over 255 bytes is refused
    # (KeyTooLongError) instead of answering (nothing, or the keys after it).
    "long-prefix-lists-nothing": [put("a", b"1"), listing(prefix="x" * 256 + "/")],
    "long-start-after-lists-after": [put("y", b"1"), listing(start="x" * 256 + "!")],
}


@pytest.mark.parametrize("name", sorted(REPRODUCTIONS))
def test_reproduction(make_client, bucket, name):
    """The minimal cases agree with the model too."""
    fuzzer = new_fuzzer(make_client, bucket)
    for op in REPRODUCTIONS[name]:
        fuzzer.apply(op)
