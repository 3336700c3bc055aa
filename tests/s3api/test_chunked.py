"""aws-chunked decoding and body verification, on bodies made by botocore and per the AWS docs."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import zlib

import pytest
from botocore import httpchecksum as bc
from hypothesis import given, settings
from hypothesis import strategies as st

from s3api import sigv4
from s3api.chunked import AwsChunkedDecoder, BodyVerifier
from s3api.errors import S3Error
from s3api.sigv4 import AuthContext, authenticate

AWS_PAYLOAD = b"a" * 66560


def signed_body(ctx: AuthContext, data: bytes, chunk_size: int,
                trailers: dict[str, str] | None = None, sign_trailers: bool = True) -> bytes:
    """An aws-chunked body with chunk signatures, built as the AWS docs describe."""
    out, previous = [], ctx.seed_signature
    chunks = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)] + [b""]
    for chunk in chunks:
        previous = sigv4.sign_chunk(ctx, previous, hashlib.sha256(chunk).hexdigest())
        out.append(b"%x;chunk-signature=%s\r\n" % (len(chunk), previous.encode()))
        if chunk:
            out.append(chunk + b"\r\n")
    for name, value in (trailers or {}).items():
        out.append(f"{name}:{value}\r\n".encode())
    if trailers and sign_trailers:
        canonical = "".join(f"{name}:{value}\n" for name, value in trailers.items()).encode()
        out.append(f"x-amz-trailer-signature:{sigv4.sign_trailer(ctx, previous, canonical)}\r\n"
                   .encode())
    out.append(b"\r\n")
    return b"".join(out)


def unsigned_body(data: bytes, checksum_cls=bc.Crc32Checksum, name="x-amz-checksum-crc32",
                  chunk_size: int | None = None) -> bytes:
    """STREAMING-UNSIGNED-PAYLOAD-TRAILER bytes exactly as botocore produces them."""
    return bc.AwsChunkedWrapper(io.BytesIO(data), checksum_cls, name, chunk_size).read()


def feed_in_slices(verifier, body: bytes, cuts: list[int]) -> bytes:
    """Feed `body` split at `cuts`; return the concatenated payload."""
    points = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    return b"".join(verifier.feed(body[a:b]) for a, b in zip(points, points[1:], strict=False))


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


# ------------------------------------------------------------------ signed chunks (AWS example)


def test_aws_example_body(aws_example, aws_example_headers):
    body = signed_body(aws_example, AWS_PAYLOAD, 65536)
    assert len(body) == 66824  # the Content-Length of the AWS example
    assert b"ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648" in body
    verifier = BodyVerifier.from_headers(aws_example_headers, aws_example)
    assert verifier.feed(body) == AWS_PAYLOAD
    result = verifier.finish()
    assert result.size == 66560
    assert result.md5_hex == hashlib.md5(AWS_PAYLOAD).hexdigest()


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=40))
def test_signed_decoding_is_split_independent(aws_example, aws_example_headers, cuts):
    body = signed_body(aws_example, AWS_PAYLOAD, 65536)
    verifier = BodyVerifier.from_headers(aws_example_headers, aws_example)
    assert feed_in_slices(verifier, body, cuts) == AWS_PAYLOAD
    assert verifier.finish().size == len(AWS_PAYLOAD)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5000), chunk=st.integers(1, 700),
       cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_signed_trailer_split_independent(aws_example, data, chunk, cuts):
    body = signed_body(aws_example, data, chunk, {"x-amz-checksum-crc32": crc32_b64(data)})
    decoder = AwsChunkedDecoder(aws_example)
    assert feed_in_slices(decoder, body, cuts) == data
    assert decoder.finish() == {"x-amz-checksum-crc32": crc32_b64(data)}


def test_signed_chunk_is_withheld_until_verified(aws_example):
    body = signed_body(aws_example, AWS_PAYLOAD, 65536)
    decoder = AwsChunkedDecoder(aws_example)
    assert decoder.feed(body[:60000]) == b""  # most of chunk 1: nothing released yet
    assert decoder.feed(body[60000:65700]) == b"a" * 65536


@pytest.mark.parametrize("offset", [200, 65700, 66700])
def test_signed_tampered_data(aws_example, offset):
    body = bytearray(signed_body(aws_example, AWS_PAYLOAD, 65536))
    assert body[offset:offset + 1] == b"a"
    body[offset:offset + 1] = b"b"
    decoder = AwsChunkedDecoder(aws_example)
    with pytest.raises(S3Error) as excinfo:
        decoder.feed(bytes(body))
        decoder.finish()
    assert excinfo.value.code == "SignatureDoesNotMatch"


def test_signed_tampered_signature(aws_example):
    body = signed_body(aws_example, AWS_PAYLOAD, 65536).replace(b"chunk-signature=ad", b"chunk-signature=ae")
    with pytest.raises(S3Error) as excinfo:
        AwsChunkedDecoder(aws_example).feed(body)
    assert excinfo.value.code == "SignatureDoesNotMatch"


def test_signed_requires_chunk_signatures(aws_example):
    with pytest.raises(S3Error) as excinfo:
        AwsChunkedDecoder(aws_example).feed(b"5\r\nhello\r\n0\r\n\r\n")
    assert excinfo.value.code == "SignatureDoesNotMatch"


def test_signed_chunks_cannot_be_replayed_from_another_request(aws_example):
    other = dataclasses.replace(aws_example, seed_signature="0" * 64)
    body = signed_body(other, b"evil", 4)
    with pytest.raises(S3Error):
        AwsChunkedDecoder(aws_example).feed(body)


def test_signed_trailer_verified(aws_example):
    data = b"hello world" * 100
    good = {"x-amz-checksum-crc32": crc32_b64(data)}
    headers = {"x-amz-content-sha256": sigv4.STREAMING_SIGNED_TRAILER,
               "x-amz-trailer": "x-amz-checksum-crc32", "x-amz-decoded-content-length": "1100"}
    ctx = dataclasses.replace(aws_example, payload_hash=sigv4.STREAMING_SIGNED_TRAILER)
    verifier = BodyVerifier.from_headers(headers, ctx)
    verifier.feed(signed_body(ctx, data, 512, good))
    assert verifier.finish().checksums == {"CRC32": good["x-amz-checksum-crc32"]}

    wrong = {"x-amz-checksum-crc32": crc32_b64(b"other")}
    verifier = BodyVerifier.from_headers(headers, ctx)
    verifier.feed(signed_body(ctx, data, 512, wrong))  # correctly signed, wrong checksum
    with pytest.raises(S3Error) as excinfo:
        verifier.finish()
    assert excinfo.value.code == "BadDigest"

    forged = signed_body(ctx, data, 512, good).replace(
        good["x-amz-checksum-crc32"].encode(), wrong["x-amz-checksum-crc32"].encode())
    with pytest.raises(S3Error) as excinfo:
        AwsChunkedDecoder(ctx).feed(forged)
    assert excinfo.value.code == "SignatureDoesNotMatch"

    unsigned_trailers = signed_body(ctx, data, 512, good, sign_trailers=False)
    with pytest.raises(S3Error) as excinfo:
        AwsChunkedDecoder(ctx).feed(unsigned_trailers)
    assert excinfo.value.code == "SignatureDoesNotMatch"


# ------------------------------------------------------------------ unsigned trailer (botocore)

TRAILER_CHECKSUMS = [
    (bc.Crc32Checksum, "CRC32"), (bc.CrtCrc32cChecksum, "CRC32C"),
    (bc.CrtCrc64NvmeChecksum, "CRC64NVME"), (bc.Sha1Checksum, "SHA1"),
    (bc.Sha256Checksum, "SHA256"),
]


def _unsigned_headers(algorithm: str, size: int) -> dict[str, str]:
    return {"X-Amz-Content-SHA256": sigv4.STREAMING_UNSIGNED_TRAILER,
            "Content-Encoding": "aws-chunked", "X-Amz-Trailer": f"x-amz-checksum-{algorithm.lower()}",
            "X-Amz-Decoded-Content-Length": str(size)}


@pytest.mark.parametrize(("checksum_cls", "algorithm"), TRAILER_CHECKSUMS)
@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=4000), chunk=st.integers(1, 1500),
       cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_botocore_unsigned_trailer(checksum_cls, algorithm, data, chunk, cuts):
    body = unsigned_body(data, checksum_cls, f"x-amz-checksum-{algorithm.lower()}", chunk)
    verifier = BodyVerifier.from_headers(_unsigned_headers(algorithm, len(data)), None)
    assert feed_in_slices(verifier, body, cuts) == data
    expected = checksum_cls()
    expected.update(data)
    result = verifier.finish()
    assert result.checksums == {algorithm: expected.b64digest()}
    assert result.md5_hex == hashlib.md5(data).hexdigest()


def test_unsigned_trailer_corrupted_data():
    data = b"0123456789" * 1000
    body = bytearray(unsigned_body(data, chunk_size=4096))
    body[5000] ^= 1
    verifier = BodyVerifier.from_headers(_unsigned_headers("CRC32", len(data)), None)
    verifier.feed(bytes(body))
    with pytest.raises(S3Error) as excinfo:
        verifier.finish()
    assert excinfo.value.code == "BadDigest"


def test_unsigned_trailer_streams_without_buffering():
    decoder = AwsChunkedDecoder()
    assert decoder.feed(b"100000\r\nabc") == b"abc"  # a 1 MiB chunk: data flows at once


def test_missing_final_crlf_is_tolerated():
    body = unsigned_body(b"data").removesuffix(b"\r\n")
    verifier = BodyVerifier.from_headers(_unsigned_headers("CRC32", 4), None)
    verifier.feed(body)
    assert verifier.finish().size == 4


@pytest.mark.parametrize("cut", [3, 10, 20, -3])
def test_truncated_body(cut):
    body = unsigned_body(b"0123456789abcdef", chunk_size=8)
    verifier = BodyVerifier.from_headers(_unsigned_headers("CRC32", 16), None)
    verifier.feed(body[:cut])
    with pytest.raises(S3Error) as excinfo:
        verifier.finish()
    assert excinfo.value.code == "IncompleteBody"


def test_decoded_length_mismatch():
    body = unsigned_body(b"0123456789")
    short = BodyVerifier.from_headers(_unsigned_headers("CRC32", 11), None)
    short.feed(body)
    with pytest.raises(S3Error) as excinfo:
        short.finish()
    assert excinfo.value.code == "IncompleteBody"
    with pytest.raises(S3Error) as excinfo:
        BodyVerifier.from_headers(_unsigned_headers("CRC32", 9), None).feed(body)
    assert excinfo.value.code == "InvalidRequest"


def test_undeclared_or_missing_trailer():
    body = unsigned_body(b"x", bc.CrtCrc32cChecksum, "x-amz-checksum-crc32c")
    verifier = BodyVerifier.from_headers(_unsigned_headers("CRC32", 1), None)
    verifier.feed(body)
    with pytest.raises(S3Error) as excinfo:
        verifier.finish()
    assert excinfo.value.code == "InvalidRequest"


@pytest.mark.parametrize("body", [
    b"zz\r\n", b"5;chunk-signature\r\nhello\r\n0\r\n\r\n" + b"extra", b"3\r\nabcd\r\n",
    b"1" * 5000, b"2000000\r\n",
])
def test_malformed_framing(body):
    decoder = AwsChunkedDecoder()
    with pytest.raises(S3Error) as excinfo:
        decoder.feed(body)
        decoder.finish()
    assert excinfo.value.code in ("InvalidRequest", "IncompleteBody")


def test_unsupported_streaming_mode():
    with pytest.raises(S3Error) as excinfo:
        BodyVerifier.from_headers(
            {"x-amz-content-sha256": "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"}, None)
    assert excinfo.value.code == "NotImplemented"


# ------------------------------------------------------------------ real client requests


def _body_bytes(request) -> bytes:
    body = request.body
    return body.read() if hasattr(body, "read") else (body or b"")


@pytest.mark.parametrize("algorithm", [None, "CRC32C", "SHA256", "CRC64NVME"])
def test_real_client_tls_upload(fake_s3_tls, signed, secrets, algorithm):
    data = bytes(range(256)) * 5000
    extra = {"ChecksumAlgorithm": algorithm} if algorithm else {}
    fake_s3_tls.client.put_object(Bucket="b", Key="k", Body=io.BytesIO(data), **extra)
    fake_s3_tls.client.upload_part(Bucket="b", Key="k", UploadId="u", PartNumber=1,
                                   Body=io.BytesIO(data), **extra)
    for request in fake_s3_tls.requests:
        body = _body_bytes(request)
        wire = signed(request)
        ctx = authenticate(wire, secrets)
        verifier = BodyVerifier.from_headers(wire.headers, ctx)
        assert feed_in_slices(verifier, body, list(range(0, len(body), 65537))) == data
        result = verifier.finish()
        assert list(result.checksums) == [algorithm or "CRC32"]
        assert result.md5_hex == hashlib.md5(data).hexdigest()


def test_real_client_plain_upload(fake_s3, signed, secrets):
    data = b"plain body" * 1000
    fake_s3.client.put_object(Bucket="b", Key="k", Body=data, ContentMD5=base64.b64encode(
        hashlib.md5(data).digest()).decode())
    wire = signed(fake_s3.last)
    ctx = authenticate(wire, secrets)
    assert ctx.payload_hash == hashlib.sha256(data).hexdigest()
    verifier = BodyVerifier.from_headers(wire.headers, ctx)
    assert verifier.feed(data) == data
    assert verifier.finish().size == len(data)

    tampered = BodyVerifier.from_headers(wire.headers, ctx)
    tampered.feed(data[:-1] + b"X")
    with pytest.raises(S3Error) as excinfo:
        tampered.finish()
    assert excinfo.value.code == "XAmzContentSHA256Mismatch"


def _plain(headers: dict[str, str], body: bytes):
    verifier = BodyVerifier.from_headers(headers, None)
    verifier.feed(body)
    return verifier.finish()


def test_plain_digest_headers():
    body = b"hello"
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    assert _plain({"Content-MD5": md5, "x-amz-checksum-crc32": crc32_b64(body)}, body).checksums == {
        "CRC32": crc32_b64(body)}
    cases = [
        ({"Content-MD5": base64.b64encode(b"x" * 16).decode()}, "BadDigest"),
        ({"Content-MD5": "not-base64"}, "InvalidDigest"),
        ({"Content-MD5": base64.b64encode(b"short").decode()}, "InvalidDigest"),
        ({"x-amz-checksum-crc32": crc32_b64(b"other")}, "BadDigest"),
        ({"x-amz-checksum-crc32": "!!"}, "InvalidRequest"),
        ({"x-amz-checksum-crc32": crc32_b64(body), "x-amz-checksum-sha1": "x"}, "InvalidRequest"),
        ({"x-amz-content-sha256": hashlib.sha256(b"other").hexdigest()}, "XAmzContentSHA256Mismatch"),
        ({"Content-Length": "6"}, "IncompleteBody"),
    ]
    for headers, code in cases:
        with pytest.raises(S3Error) as excinfo:
            _plain(headers, body)
        assert excinfo.value.code == code, headers


def test_plain_unsigned_payload_and_extra_algorithms():
    verifier = BodyVerifier.from_headers({"x-amz-content-sha256": "UNSIGNED-PAYLOAD"}, None,
                                         extra_algorithms=["CRC64NVME"])
    verifier.feed(b"123456789")
    assert verifier.finish().checksums == {
        "CRC64NVME": base64.b64encode(bytes.fromhex("ae8b14860a799888")).decode()}
