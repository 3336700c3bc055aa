"""S3 XML: safe parsing of request bodies, and rendering of response documents.

Parsing goes through defusedxml with DTDs forbidden, so entity bombs and external entities are
refused (MalformedXML) before anything expands; bodies are also size-limited. Element names are
matched without their namespace: clients differ on whether they send S3's.

Rendering takes plain dataclasses. ETags are given without quotes (the MD5 hex, or "hex-N" for
multipart) and rendered quoted; datetimes (aware, or naive UTC) render as ISO 8601 with
milliseconds and "Z", as AWS does.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from urllib.parse import quote

import defusedxml
import defusedxml.ElementTree as SafeET

from s3api.errors import S3Error

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
# CompleteMultipartUpload with 10,000 parts, or DeleteObjects with 1,000 long keys, fit easily.
MAX_XML_BODY = 8 << 20
MAX_DELETE_OBJECTS = 1000
MAX_PART_NUMBER = 10000

# Characters XML 1.0 text cannot hold literally ("\r" would be read back as "\n").
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")
_NO_CHECKSUMS: Mapping[str, str] = MappingProxyType({})
Encoder = Callable[[str], str]


# ---------------------------------------------------------------- parsing request bodies


@dataclass(frozen=True, slots=True)
class CompletedPart:
    """One <Part> of a CompleteMultipartUpload request; `etag` without quotes."""

    part_number: int
    etag: str
    checksums: dict[str, str] = field(default_factory=dict)  # "CRC32" -> base64


@dataclass(frozen=True, slots=True)
class ObjectToDelete:
    """One <Object> of a DeleteObjects request."""

    key: str
    version_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    """A DeleteObjects request: the objects, and whether only errors are to be reported."""

    objects: list[ObjectToDelete]
    quiet: bool


def parse_xml(body: bytes, root: str) -> ET.Element:
    """Parse a request body whose root element must be `root`; MalformedXML otherwise."""
    if len(body) > MAX_XML_BODY:
        raise S3Error("MaxMessageLengthExceeded")
    try:
        element = SafeET.fromstring(body, forbid_dtd=True)
    except (ET.ParseError, defusedxml.DefusedXmlException):
        raise S3Error("MalformedXML") from None
    if _local(element.tag) != root:
        raise S3Error("MalformedXML")
    return element


def parse_complete_multipart_upload(body: bytes) -> list[CompletedPart]:
    """The parts listed in a CompleteMultipartUpload body, checked to be in ascending order."""
    parts = []
    for part in _children(parse_xml(body, "CompleteMultipartUpload"), "Part"):
        number, etag = _text(part, "PartNumber"), _text(part, "ETag")
        if number is None or etag is None or not number.strip().isdigit():
            raise S3Error("MalformedXML")
        sums = {_local(child.tag).removeprefix("Checksum"): (child.text or "").strip()
                for child in part if _local(child.tag).startswith("Checksum")}
        parts.append(CompletedPart(int(number), etag.strip().strip('"'), sums))
    if not parts:
        raise S3Error("MalformedXML")
    numbers = [part.part_number for part in parts]
    if not all(1 <= number <= MAX_PART_NUMBER for number in numbers):
        raise S3Error("InvalidArgument", f"Part number must be an integer between 1 and "
                      f"{MAX_PART_NUMBER}, inclusive", ArgumentName="partNumber")
    if any(a >= b for a, b in zip(numbers, numbers[1:], strict=False)):
        raise S3Error("InvalidPartOrder")
    return parts


def parse_delete(body: bytes) -> DeleteRequest:
    """The objects of a DeleteObjects body (at most 1000) and its Quiet flag."""
    root = parse_xml(body, "Delete")
    objects = []
    for obj in _children(root, "Object"):
        key = _text(obj, "Key")
        if key is None:
            raise S3Error("MalformedXML")
        objects.append(ObjectToDelete(key, _text(obj, "VersionId")))
    if not objects or len(objects) > MAX_DELETE_OBJECTS:
        raise S3Error("MalformedXML")
    quiet = (_text(root, "Quiet") or "false").strip().lower() == "true"
    return DeleteRequest(objects, quiet)


def parse_create_bucket(body: bytes) -> str | None:
    """The LocationConstraint of a CreateBucket body (which may be empty), if any."""
    if not body.strip():
        return None
    location = _text(parse_xml(body, "CreateBucketConfiguration"), "LocationConstraint")
    return (location or "").strip() or None


def _local(tag: str) -> str:
    """An element name without its "{namespace}"."""
    return tag.rpartition("}")[2]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    """The direct children called `name`, whatever their namespace."""
    return [child for child in element if _local(child.tag) == name]


def _text(element: ET.Element, name: str) -> str | None:
    """The text of the first child called `name` ("" if empty), or None if there is none."""
    found = _children(element, name)
    return (found[0].text or "") if found else None


# ---------------------------------------------------------------- rendering responses


@dataclass(frozen=True, slots=True)
class Owner:
    """The owner shown in listings."""

    id: str
    display_name: str


@dataclass(frozen=True, slots=True)
class BucketInfo:
    """One bucket of ListBuckets."""

    name: str
    creation_date: datetime


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object of a listing (Contents, or Version in ListObjectVersions)."""

    key: str
    last_modified: datetime
    etag: str
    size: int
    storage_class: str = "STANDARD"
    owner: Owner | None = None
    checksum_algorithm: str | None = None


@dataclass(frozen=True, slots=True)
class ListObjectsResult:
    """One page of ListObjects (v1: marker fields) or ListObjectsV2 (v2: token fields)."""

    bucket: str
    prefix: str
    max_keys: int
    is_truncated: bool
    contents: Sequence[ObjectInfo]
    common_prefixes: Sequence[str] = ()
    delimiter: str | None = None
    encoding_type: str | None = None
    marker: str = ""
    next_marker: str | None = None
    continuation_token: str | None = None
    next_continuation_token: str | None = None
    start_after: str | None = None


@dataclass(frozen=True, slots=True)
class ListVersionsResult:
    """One page of ListObjectVersions; without versioning every object is its "null" version."""

    bucket: str
    prefix: str
    max_keys: int
    is_truncated: bool
    versions: Sequence[ObjectInfo]
    common_prefixes: Sequence[str] = ()
    delimiter: str | None = None
    encoding_type: str | None = None
    key_marker: str = ""
    version_id_marker: str = ""
    next_key_marker: str | None = None
    next_version_id_marker: str | None = None


@dataclass(frozen=True, slots=True)
class PartInfo:
    """One part of ListParts."""

    part_number: int
    last_modified: datetime
    etag: str
    size: int
    checksums: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ListPartsResult:
    """One page of ListParts."""

    bucket: str
    key: str
    upload_id: str
    owner: Owner
    parts: Sequence[PartInfo]
    max_parts: int
    is_truncated: bool
    part_number_marker: int = 0
    next_part_number_marker: int | None = None
    storage_class: str = "STANDARD"
    checksum_algorithm: str | None = None
    checksum_type: str | None = None


@dataclass(frozen=True, slots=True)
class UploadInfo:
    """One in-progress multipart upload of ListMultipartUploads."""

    key: str
    upload_id: str
    initiated: datetime
    owner: Owner
    storage_class: str = "STANDARD"
    checksum_algorithm: str | None = None
    checksum_type: str | None = None


@dataclass(frozen=True, slots=True)
class ListUploadsResult:
    """One page of ListMultipartUploads."""

    bucket: str
    uploads: Sequence[UploadInfo]
    max_uploads: int
    is_truncated: bool
    common_prefixes: Sequence[str] = ()
    prefix: str = ""
    delimiter: str | None = None
    encoding_type: str | None = None
    key_marker: str = ""
    upload_id_marker: str = ""
    next_key_marker: str | None = None
    next_upload_id_marker: str | None = None


@dataclass(frozen=True, slots=True)
class DeletedEntry:
    """A <Deleted> entry of DeleteResult."""

    key: str
    version_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteErrorEntry:
    """An <Error> entry of DeleteResult."""

    key: str
    code: str
    message: str
    version_id: str | None = None


def iso8601(moment: datetime) -> str:
    """"2009-10-12T17:50:30.000Z": UTC, milliseconds, as S3 renders timestamps."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # isoformat, not strftime: a listing formats a thousand of these per page.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def serialize(root: ET.Element, entries: Sequence[str] = ()) -> bytes:
    """UTF-8 document with an XML declaration; control characters as character references.
    `entries`: children already rendered as text (with `_escape`), appended after root's."""
    text = _control_references(ET.tostring(root, encoding="unicode", short_empty_elements=not entries))
    if entries:
        close = f"</{root.tag}>"
        text = text[: -len(close)] + "".join(entries) + close
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{text}'.encode()


def _control_references(text: str) -> str:
    # ElementTree writes them raw, which no parser accepts; AWS writes references.
    return _CONTROL.sub(lambda m: f"&#{ord(m[0])};", text)


def _escape(text: str) -> str:
    """Character data as serialize writes it."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text if text.isprintable() else _control_references(text)


def _root(tag: str) -> ET.Element:
    """A response's root element, in the S3 namespace (as a plain xmlns: no ns0 prefixes)."""
    return ET.Element(tag, xmlns=NS)


def _add(parent: ET.Element, tag: str, value: object = None) -> ET.Element:
    """Append <tag>value</tag>; booleans render as true/false, datetimes as ISO 8601."""
    child = ET.SubElement(parent, tag)
    if isinstance(value, bool):
        child.text = "true" if value else "false"
    elif isinstance(value, datetime):
        child.text = iso8601(value)
    elif value is not None:
        child.text = str(value)
    return child


def _add_optional(parent: ET.Element, tag: str, value: object) -> None:
    """Append <tag>value</tag> unless value is None."""
    if value is not None:
        _add(parent, tag, value)


def _add_owner(parent: ET.Element, owner: Owner | None, tag: str = "Owner") -> None:
    """Append an <Owner> (or <Initiator>) element if there is an owner."""
    if owner is not None:
        element = _add(parent, tag)
        _add(element, "ID", owner.id)
        _add(element, "DisplayName", owner.display_name)


def _add_checksums(parent: ET.Element, sums: Mapping[str, str]) -> None:
    """Append <ChecksumCRC32>... elements, one per algorithm."""
    for algorithm, value in sums.items():
        _add(parent, f"Checksum{algorithm.upper()}", value)


def _url_encoder(encoding_type: str | None) -> Encoder:
    """The transformation `encoding-type` asks for: "url" percent-encodes, keeping "/"."""
    if encoding_type == "url":
        # "+" must be encoded: clients decode with unquote_plus, which reads it as a space.
        return lambda value: quote(value, safe="/")
    return lambda value: value


def _common_prefixes(prefixes: Sequence[str], encode: Encoder) -> list[str]:
    """One <CommonPrefixes><Prefix> per prefix, as text."""
    return [f"<CommonPrefixes><Prefix>{_escape(encode(prefix))}</Prefix></CommonPrefixes>"
            for prefix in prefixes]


def _objects(tag: str, objects: Sequence[ObjectInfo], encode: Encoder, versioned: bool) -> list[str]:
    """<Contents> or <Version> elements as text: one format string per object, as a listing of
    1000 keys would otherwise build and serialize some 8000 tree nodes."""
    version = "<VersionId>null</VersionId><IsLatest>true</IsLatest>" if versioned else ""
    out = []
    for obj in objects:
        owner = (f"<Owner><ID>{_escape(obj.owner.id)}</ID><DisplayName>"
                 f"{_escape(obj.owner.display_name)}</DisplayName></Owner>" if obj.owner else "")
        algorithm = (f"<ChecksumAlgorithm>{_escape(obj.checksum_algorithm)}</ChecksumAlgorithm>"
                     if obj.checksum_algorithm is not None else "")
        out.append(f"<{tag}><Key>{_escape(encode(obj.key))}</Key>{version}"
                   f"<LastModified>{iso8601(obj.last_modified)}</LastModified>"
                   f'<ETag>"{_escape(obj.etag)}"</ETag><Size>{obj.size}</Size>'
                   f"<StorageClass>{_escape(obj.storage_class)}</StorageClass>{owner}{algorithm}</{tag}>")
    return out


def render_list_buckets(owner: Owner, buckets: Sequence[BucketInfo]) -> bytes:
    """ListAllMyBucketsResult."""
    root = _root("ListAllMyBucketsResult")
    _add_owner(root, owner)
    container = _add(root, "Buckets")
    for bucket in buckets:
        element = _add(container, "Bucket")
        _add(element, "Name", bucket.name)
        _add(element, "CreationDate", bucket.creation_date)
    return serialize(root)


def _list_header(root: ET.Element, page: ListObjectsResult | ListVersionsResult, encode: Encoder) -> None:
    """The fields ListObjects, ListObjectsV2 and ListObjectVersions share."""
    _add(root, "Name", page.bucket)
    _add(root, "Prefix", encode(page.prefix))
    _add(root, "MaxKeys", page.max_keys)
    if page.delimiter is not None:
        _add(root, "Delimiter", encode(page.delimiter))
    _add(root, "IsTruncated", page.is_truncated)
    _add_optional(root, "EncodingType", page.encoding_type)


def render_list_objects_v1(page: ListObjectsResult) -> bytes:
    """ListBucketResult of ListObjects (v1)."""
    encode = _url_encoder(page.encoding_type)
    root = _root("ListBucketResult")
    _list_header(root, page, encode)
    _add(root, "Marker", encode(page.marker))
    if page.next_marker is not None:
        _add(root, "NextMarker", encode(page.next_marker))
    return serialize(root, [*_objects("Contents", page.contents, encode, versioned=False),
                            *_common_prefixes(page.common_prefixes, encode)])


def render_list_objects_v2(page: ListObjectsResult) -> bytes:
    """ListBucketResult of ListObjectsV2; KeyCount counts contents and common prefixes."""
    encode = _url_encoder(page.encoding_type)
    root = _root("ListBucketResult")
    _list_header(root, page, encode)
    _add(root, "KeyCount", len(page.contents) + len(page.common_prefixes))
    _add_optional(root, "ContinuationToken", page.continuation_token)
    _add_optional(root, "NextContinuationToken", page.next_continuation_token)
    if page.start_after is not None:
        _add(root, "StartAfter", encode(page.start_after))
    return serialize(root, [*_objects("Contents", page.contents, encode, versioned=False),
                            *_common_prefixes(page.common_prefixes, encode)])


def render_list_versions(page: ListVersionsResult) -> bytes:
    """ListVersionsResult: every object as version "null", the latest."""
    encode = _url_encoder(page.encoding_type)
    root = _root("ListVersionsResult")
    _list_header(root, page, encode)
    _add(root, "KeyMarker", encode(page.key_marker))
    _add(root, "VersionIdMarker", page.version_id_marker)
    if page.next_key_marker is not None:
        _add(root, "NextKeyMarker", encode(page.next_key_marker))
    _add_optional(root, "NextVersionIdMarker", page.next_version_id_marker)
    return serialize(root, [*_objects("Version", page.versions, encode, versioned=True),
                            *_common_prefixes(page.common_prefixes, encode)])


def render_location(region: str) -> bytes:
    """LocationConstraint; empty for us-east-1, as AWS answers."""
    root = _root("LocationConstraint")
    if region != "us-east-1":
        root.text = region
    return serialize(root)


def render_versioning(status: str | None = None) -> bytes:
    """VersioningConfiguration; empty if versioning was never enabled."""
    root = _root("VersioningConfiguration")
    _add_optional(root, "Status", status)
    return serialize(root)


def _copy_result(tag: str, etag: str, last_modified: datetime, sums: Mapping[str, str]) -> bytes:
    """CopyObjectResult or CopyPartResult."""
    root = _root(tag)
    _add(root, "ETag", f'"{etag}"')
    _add(root, "LastModified", last_modified)
    _add_checksums(root, sums)
    return serialize(root)


def render_copy_object(etag: str, last_modified: datetime, sums: Mapping[str, str] = _NO_CHECKSUMS) -> bytes:
    """CopyObjectResult."""
    return _copy_result("CopyObjectResult", etag, last_modified, sums)


def render_copy_part(etag: str, last_modified: datetime, sums: Mapping[str, str] = _NO_CHECKSUMS) -> bytes:
    """CopyPartResult."""
    return _copy_result("CopyPartResult", etag, last_modified, sums)


def render_initiate_multipart(bucket: str, key: str, upload_id: str) -> bytes:
    """InitiateMultipartUploadResult."""
    root = _root("InitiateMultipartUploadResult")
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "UploadId", upload_id)
    return serialize(root)


def render_complete_multipart(
    location: str, bucket: str, key: str, etag: str, sums: Mapping[str, str] = _NO_CHECKSUMS,
    checksum_type: str | None = None,
) -> bytes:
    """CompleteMultipartUploadResult."""
    root = _root("CompleteMultipartUploadResult")
    _add(root, "Location", location)
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "ETag", f'"{etag}"')
    _add_checksums(root, sums)
    _add_optional(root, "ChecksumType", checksum_type)
    return serialize(root)


def render_list_parts(page: ListPartsResult) -> bytes:
    """ListPartsResult."""
    root = _root("ListPartsResult")
    _add(root, "Bucket", page.bucket)
    _add(root, "Key", page.key)
    _add(root, "UploadId", page.upload_id)
    _add_owner(root, page.owner, "Initiator")
    _add_owner(root, page.owner)
    _add(root, "StorageClass", page.storage_class)
    _add(root, "PartNumberMarker", page.part_number_marker)
    _add_optional(root, "NextPartNumberMarker", page.next_part_number_marker)
    _add(root, "MaxParts", page.max_parts)
    _add(root, "IsTruncated", page.is_truncated)
    _add_optional(root, "ChecksumAlgorithm", page.checksum_algorithm)
    _add_optional(root, "ChecksumType", page.checksum_type)
    for part in page.parts:
        element = _add(root, "Part")
        _add(element, "PartNumber", part.part_number)
        _add(element, "LastModified", part.last_modified)
        _add(element, "ETag", f'"{part.etag}"')
        _add(element, "Size", part.size)
        _add_checksums(element, part.checksums)
    return serialize(root)


def render_list_uploads(page: ListUploadsResult) -> bytes:
    """ListMultipartUploadsResult."""
    encode = _url_encoder(page.encoding_type)
    root = _root("ListMultipartUploadsResult")
    _add(root, "Bucket", page.bucket)
    _add(root, "KeyMarker", encode(page.key_marker))
    _add(root, "UploadIdMarker", page.upload_id_marker)
    if page.next_key_marker is not None:
        _add(root, "NextKeyMarker", encode(page.next_key_marker))
    _add_optional(root, "NextUploadIdMarker", page.next_upload_id_marker)
    _add(root, "Prefix", encode(page.prefix))
    if page.delimiter is not None:
        _add(root, "Delimiter", encode(page.delimiter))
    _add(root, "MaxUploads", page.max_uploads)
    _add(root, "IsTruncated", page.is_truncated)
    _add_optional(root, "EncodingType", page.encoding_type)
    for upload in page.uploads:
        element = _add(root, "Upload")
        _add(element, "Key", encode(upload.key))
        _add(element, "UploadId", upload.upload_id)
        _add_owner(element, upload.owner, "Initiator")
        _add_owner(element, upload.owner)
        _add(element, "StorageClass", upload.storage_class)
        _add(element, "Initiated", upload.initiated)
        _add_optional(element, "ChecksumAlgorithm", upload.checksum_algorithm)
        _add_optional(element, "ChecksumType", upload.checksum_type)
    return serialize(root, _common_prefixes(page.common_prefixes, encode))


def render_delete_result(
    deleted: Sequence[DeletedEntry], errors: Sequence[DeleteErrorEntry] = ()
) -> bytes:
    """DeleteResult; in Quiet mode the caller passes no `deleted` entries."""
    root = _root("DeleteResult")
    for entry in deleted:
        element = _add(root, "Deleted")
        _add(element, "Key", entry.key)
        _add_optional(element, "VersionId", entry.version_id)
    for error in errors:
        element = _add(root, "Error")
        _add(element, "Key", error.key)
        _add_optional(element, "VersionId", error.version_id)
        _add(element, "Code", error.code)
        _add(element, "Message", error.message)
    return serialize(root)
