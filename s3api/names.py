"""Bucket-name and object-key validation for the S3 to POSIX mapping.

Keys map to paths: "a/b/c" is file c in directory a/b, and "a/b/" (a directory marker) is the
directory itself. So keys must be paths our filesystem can hold, which is narrower than S3: no
empty, "." or ".." segments, no leading "/", no NUL, and segments of at most 255 bytes. Such keys
are refused with InvalidArgument (AWS has no "InvalidObjectName" code that clients know), except
over-long segments, which get KeyTooLongError: clients already understand "your key is too long".
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from s3api.errors import S3Error

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255

_BUCKET_CHARS = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Prefixes and suffixes AWS reserves for access points, S3 Express, Object Lambda, etc.
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def validate_bucket_name(name: str) -> None:
    """Raise InvalidBucketName unless `name` follows AWS's general-purpose bucket naming rules."""
    problem = None
    if not _BUCKET_CHARS.fullmatch(name):
        problem = "must be 3-63 lowercase letters, digits, '.' or '-', starting and ending alphanumeric"
    elif ".." in name or ".-" in name or "-." in name:
        # Each dot-separated label must be a valid DNS label for virtual-hosted addressing.
        problem = "must not contain '..', '.-' or '-.'"
    elif _is_ip_address(name):
        problem = "must not be formatted as an IP address"
    elif name.startswith(_RESERVED_PREFIXES) or name.endswith(_RESERVED_SUFFIXES):
        problem = "uses a reserved prefix or suffix"
    if problem:
        raise S3Error("InvalidBucketName", f"The specified bucket is not valid: {problem}.",
                      BucketName=name)


def _is_ip_address(name: str) -> bool:
    """True for dotted-quad names like 192.168.5.4."""
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class ObjectPath:
    """A validated key: its path segments, and whether it is a directory marker ("dir/")."""

    segments: tuple[str, ...]
    is_directory: bool


def parse_key(key: str) -> ObjectPath:
    """Validate an object key for the POSIX mapping and split it into path segments."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates: what a decoder leaves of bytes that were not UTF-8.
        raise S3Error("InvalidArgument", "Object key is not valid UTF-8.", Key=key) from None
    if size > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", Size=str(size), MaxSizeAllowed=str(MAX_KEY_BYTES))
    if not key or key.startswith("/") or "\0" in key:
        raise S3Error("InvalidArgument", "Object key must be non-empty, not start with '/' "
                      "and not contain NUL.", Key=key)
    is_directory = key.endswith("/")
    segments = tuple(key.removesuffix("/").split("/"))
    for segment in segments:
        if segment in ("", ".", ".."):
            raise S3Error("InvalidArgument", "Object key must not contain empty, '.' or '..' "
                          "path segments.", Key=key)
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise S3Error("KeyTooLongError", f"Each '/'-separated part of a key must be at most "
                          f"{MAX_SEGMENT_BYTES} bytes.", Key=key)
    return ObjectPath(segments, is_directory)
