"""Checksums against known vectors and against botocore's own implementations."""

from __future__ import annotations

import base64
import hashlib

import pytest
from botocore import httpchecksum as bc
from hypothesis import given
from hypothesis import strategies as st

from s3api import checksums
from s3api.errors import S3Error

CHECK = b"123456789"
# (algorithm, check value of "123456789"), from the CRC catalogue and the hash standards.
VECTORS = [
    ("CRC32", "cbf43926"),
    ("CRC32C", "e3069283"),
    ("CRC64NVME", "ae8b14860a799888"),
    ("MD5", hashlib.md5(CHECK).hexdigest()),
    ("SHA1", "f7c3bc1d808e04732adf679965ccc34ca7ae3441"),
    ("SHA256", "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225"),
]
BOTOCORE = {
    "CRC32": bc.Crc32Checksum, "CRC32C": bc.CrtCrc32cChecksum,
    "CRC64NVME": bc.CrtCrc64NvmeChecksum, "SHA1": bc.Sha1Checksum, "SHA256": bc.Sha256Checksum,
    "SHA512": bc.Sha512Checksum, "XXHASH64": bc.CrtXxhash64Checksum,
    "XXHASH3": bc.CrtXxhash3Checksum, "XXHASH128": bc.CrtXxhash128Checksum,
}


@pytest.mark.parametrize(("algorithm", "expected"), VECTORS)
def test_check_values(algorithm, expected):
    hasher = checksums.make_hasher(algorithm)
    hasher.update(CHECK)
    assert hasher.digest().hex() == expected
    assert hasher.b64() == base64.b64encode(bytes.fromhex(expected)).decode()


@pytest.mark.parametrize("algorithm", sorted(BOTOCORE))
@given(pieces=st.lists(st.binary(max_size=3000), max_size=6))
def test_streaming_matches_botocore(algorithm, pieces):
    ours, theirs = checksums.make_hasher(algorithm), BOTOCORE[algorithm]()
    for piece in pieces:
        ours.update(piece)
        theirs.update(piece)
    assert ours.b64() == theirs.b64digest()
    assert ours.b64() == theirs.b64digest()  # digest() is repeatable, even for xxHash


def test_large_buffers_and_memoryviews():
    data = bytes(range(256)) * 40000
    for algorithm, cls in BOTOCORE.items():
        hasher = checksums.make_hasher(algorithm)
        hasher.update(memoryview(data)[:5000])
        hasher.update(bytearray(data[5000:]))
        reference = cls()
        reference.update(data)
        assert hasher.digest() == reference.digest(), algorithm


@pytest.mark.parametrize("name", ["crc32c", "CRC32C", "x-amz-checksum-crc32c", "X-Amz-Checksum-CRC32C"])
def test_names(name):
    assert checksums.algorithm_name(name) == "CRC32C"
    assert checksums.make_hasher(name).algorithm == "CRC32C"
    assert checksums.header_name(name) == "x-amz-checksum-crc32c"


def test_unknown_algorithm():
    with pytest.raises(S3Error) as excinfo:
        checksums.make_hasher("crc16")
    assert excinfo.value.code == "InvalidRequest"


@pytest.mark.parametrize("value", ["", "AAAA", "not base64!", "AAAAAAAA"])
def test_decode_rejects_malformed(value):
    with pytest.raises(S3Error):
        checksums.decode_checksum("CRC32", value)


def _digest(algorithm: str, data: bytes) -> str:
    checksum = BOTOCORE[algorithm]()
    checksum.update(data)
    return checksum.b64digest()


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "SHA1", "SHA256"])
@given(parts=st.lists(st.binary(max_size=500), min_size=1, max_size=5))
def test_composite(algorithm, parts):
    part_sums = [_digest(algorithm, part) for part in parts]
    raw = b"".join(base64.b64decode(value) for value in part_sums)
    expected = f"{_digest(algorithm, raw)}-{len(parts)}"
    assert checksums.composite_checksum(algorithm, part_sums) == expected


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME"])
@given(parts=st.lists(st.binary(max_size=2000), min_size=1, max_size=5))
def test_full_object_equals_crc_of_whole(algorithm, parts):
    pairs = [(_digest(algorithm, part), len(part)) for part in parts]
    assert checksums.full_object_checksum(algorithm, pairs) == _digest(algorithm, b"".join(parts))


def test_full_object_refuses_hashes():
    with pytest.raises(S3Error):
        checksums.full_object_checksum("SHA256", [(_digest("SHA256", b"x"), 1)])


@pytest.mark.parametrize(("algorithm", "requested", "expected"), [
    ("CRC64NVME", None, "FULL_OBJECT"), ("CRC32", None, "COMPOSITE"),
    ("SHA256", None, "COMPOSITE"), ("crc32c", "full_object", "FULL_OBJECT"),
    ("CRC32", "COMPOSITE", "COMPOSITE"),
])
def test_checksum_type(algorithm, requested, expected):
    assert checksums.resolve_checksum_type(algorithm, requested) == expected


@pytest.mark.parametrize(("algorithm", "requested"), [("CRC64NVME", "COMPOSITE"), ("SHA1", "FULL_OBJECT")])
def test_checksum_type_refused(algorithm, requested):
    with pytest.raises(S3Error) as excinfo:
        checksums.resolve_checksum_type(algorithm, requested)
    assert excinfo.value.code == "InvalidRequest"
