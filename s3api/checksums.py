"""Streaming hashers for every S3 checksum algorithm, and the multipart combinations.

All hashers share one interface: `update(data)`, `digest() -> bytes`, `b64() -> str`. The
implementations are the ones botocore itself uses (hashlib, zlib, awscrt); each releases the GIL
on large buffers, so hashing can run in a worker thread without stalling the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Callable, Sequence
from typing import Protocol

from awscrt import checksums as crt

from s3api.errors import S3Error

Buffer = bytes | bytearray | memoryview


class Hasher(Protocol):
    """What every checksum object offers."""

    algorithm: str

    def update(self, data: Buffer) -> None: ...

    def digest(self) -> bytes: ...

    def b64(self) -> str: ...


class _HashlibHasher:
    """A hashlib digest (MD5, SHA-1, SHA-256, SHA-512)."""

    def __init__(self, algorithm: str, name: str) -> None:
        self.algorithm = algorithm
        # usedforsecurity=False: MD5 is an ETag here, and FIPS builds refuse it otherwise.
        self._hash = hashlib.new(name, usedforsecurity=False)

    def update(self, data: Buffer) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.digest()

    def b64(self) -> str:
        return base64.b64encode(self.digest()).decode()


class _CrcHasher:
    """A running CRC; the digest is the big-endian value, as AWS encodes it."""

    def __init__(self, algorithm: str, fn: Callable[[Buffer, int], int], width: int) -> None:
        self.algorithm = algorithm
        self._fn = fn
        self._width = width
        self.value = 0

    def update(self, data: Buffer) -> None:
        self.value = self._fn(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(self._width, "big")

    def b64(self) -> str:
        return base64.b64encode(self.digest()).decode()


class _XxHasher:
    """An awscrt xxHash; finalizing is destructive there, so the digest is kept."""

    def __init__(self, algorithm: str, factory: Callable[[], crt.XXHash]) -> None:
        self.algorithm = algorithm
        self._hash = factory()
        self._digest: bytes | None = None

    def update(self, data: Buffer) -> None:
        if self._digest is not None:
            raise ValueError("hasher already finalized")
        # awscrt's xxHash binding takes only bytes, not other buffers.
        self._hash.update(data if isinstance(data, bytes) else bytes(data))

    def digest(self) -> bytes:
        if self._digest is None:
            self._digest = self._hash.finalize()
        return self._digest

    def b64(self) -> str:
        return base64.b64encode(self.digest()).decode()


_FACTORIES: dict[str, Callable[[], Hasher]] = {
    "MD5": lambda: _HashlibHasher("MD5", "md5"),
    "SHA1": lambda: _HashlibHasher("SHA1", "sha1"),
    "SHA256": lambda: _HashlibHasher("SHA256", "sha256"),
    "SHA512": lambda: _HashlibHasher("SHA512", "sha512"),
    # zlib.crc32 releases the GIL above 5 KiB, like awscrt's functions.
    "CRC32": lambda: _CrcHasher("CRC32", zlib.crc32, 4),
    "CRC32C": lambda: _CrcHasher("CRC32C", crt.crc32c, 4),
    "CRC64NVME": lambda: _CrcHasher("CRC64NVME", crt.crc64nvme, 8),
    "XXHASH64": lambda: _XxHasher("XXHASH64", crt.XXHash.new_xxhash64),
    "XXHASH3": lambda: _XxHasher("XXHASH3", crt.XXHash.new_xxhash3_64),
    "XXHASH128": lambda: _XxHasher("XXHASH128", crt.XXHash.new_xxhash3_128),
}
ALGORITHMS = frozenset(_FACTORIES)
DIGEST_SIZES = {"MD5": 16, "SHA1": 20, "SHA256": 32, "SHA512": 64, "CRC32": 4, "CRC32C": 4,
                "CRC64NVME": 8, "XXHASH64": 8, "XXHASH3": 8, "XXHASH128": 16}
HEADER_PREFIX = "x-amz-checksum-"

# Only CRCs can be combined without re-reading the data (FULL_OBJECT multipart checksums).
_COMBINE: dict[str, Callable[[int, int, int], int]] = {
    "CRC32": crt.combine_crc32,
    "CRC32C": crt.combine_crc32c,
    "CRC64NVME": crt.combine_crc64nvme,
}


def algorithm_name(name: str) -> str:
    """Normalize "crc32c", "CRC32C" or "x-amz-checksum-crc32c" to "CRC32C"; InvalidRequest if unknown."""
    lowered = name.strip().lower()
    algorithm = lowered.removeprefix(HEADER_PREFIX).upper()
    if algorithm not in ALGORITHMS:
        raise S3Error("InvalidRequest", f"Unsupported checksum algorithm: {name}")
    return algorithm


def header_name(algorithm: str) -> str:
    """The header (and trailer) carrying a checksum: "CRC32" -> "x-amz-checksum-crc32"."""
    return HEADER_PREFIX + algorithm_name(algorithm).lower()


def make_hasher(name: str) -> Hasher:
    """A fresh hasher for an AWS algorithm name or checksum header name."""
    return _FACTORIES[algorithm_name(name)]()


def decode_checksum(algorithm: str, value: str) -> bytes:
    """The raw digest in a base64 checksum value; InvalidRequest if malformed for `algorithm`."""
    algorithm = algorithm_name(algorithm)
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != DIGEST_SIZES[algorithm]:
        raise S3Error("InvalidRequest", f"Value for {header_name(algorithm)} header is invalid.")
    return raw


def default_checksum_type(algorithm: str) -> str:
    """AWS's default multipart checksum type: FULL_OBJECT for CRC64NVME, else COMPOSITE."""
    return "FULL_OBJECT" if algorithm_name(algorithm) == "CRC64NVME" else "COMPOSITE"


def resolve_checksum_type(algorithm: str, requested: str | None) -> str:
    """Validate an `x-amz-checksum-type` against the algorithm (InvalidRequest), or default it."""
    algorithm = algorithm_name(algorithm)
    if requested is None:
        return default_checksum_type(algorithm)
    checksum_type = requested.strip().upper()
    allowed = {"FULL_OBJECT"} if algorithm == "CRC64NVME" else {"COMPOSITE"}
    if algorithm in ("CRC32", "CRC32C"):
        allowed.add("FULL_OBJECT")
    if checksum_type not in allowed:
        raise S3Error(
            "InvalidRequest",
            f"The {algorithm} checksum algorithm does not support the {requested} checksum type.",
        )
    return checksum_type


def composite_checksum(algorithm: str, part_checksums: Sequence[str]) -> str:
    """COMPOSITE multipart checksum: the hash of the parts' raw digests, rendered "b64-N"."""
    hasher = make_hasher(algorithm)
    for value in part_checksums:
        hasher.update(decode_checksum(algorithm, value))
    return f"{hasher.b64()}-{len(part_checksums)}"


def full_object_checksum(algorithm: str, parts: Sequence[tuple[str, int]]) -> str:
    """FULL_OBJECT multipart checksum from (part checksum b64, part size) pairs: the CRC of the
    whole object, combined from the parts' CRCs without re-reading the data."""
    algorithm = algorithm_name(algorithm)
    if algorithm not in _COMBINE:
        raise S3Error("InvalidRequest", f"{algorithm} does not support the FULL_OBJECT type.")
    combined = 0
    for value, size in parts:
        crc = int.from_bytes(decode_checksum(algorithm, value), "big")
        combined = _COMBINE[algorithm](combined, crc, size)
    return base64.b64encode(combined.to_bytes(DIGEST_SIZES[algorithm], "big")).decode()
