"""SigV4 verification against requests signed by botocore itself."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from s3api import sigv4
from s3api.errors import S3Error
from s3api.sigv4 import SignedRequest, authenticate

KEYS = ["plain.txt", "with space.txt", "unicodé/ключ/鍵.bin", "a+b=c~d", "dir/sub dir/x&y?.txt",
        "percent%20literal", "semi;colon,comma'quote(paren)!*", "trailing/"]
CREDS = Credentials("AKIDCARTRIDGETEST", "s3cr3t/K7MDENG+bPxRfiCYEXAMPLEKEY")


def _codes(excinfo: pytest.ExceptionInfo[S3Error]) -> str:
    return excinfo.value.code


@pytest.mark.parametrize("key", KEYS)
def test_client_operations_verify(fake_s3, signed, secrets, key):
    fake_s3.client.put_object(Bucket="bucket", Key=key, Body=b"hello")
    fake_s3.client.get_object(Bucket="bucket", Key=key, Range="bytes=0-1")
    fake_s3.client.head_object(Bucket="bucket", Key=key)
    fake_s3.client.delete_object(Bucket="bucket", Key=key)
    for request in fake_s3.requests:
        ctx = authenticate(signed(request), secrets)
        assert ctx is not None and ctx.access_key == "AKIDCARTRIDGETEST"
        assert ctx.region == "us-east-1" and not ctx.presigned
    # Over plain http botocore signs the payload itself.
    put = fake_s3.requests[0]
    assert authenticate(signed(put), secrets).payload_hash == hashlib.sha256(b"hello").hexdigest()


def test_listing_queries_verify(fake_s3, signed, secrets):
    fake_s3.respond = lambda request: (200, {}, b"<ListBucketResult/>")
    fake_s3.client.list_objects_v2(Bucket="bucket", Prefix="a/b c+", Delimiter="/",
                                   StartAfter="a/b ~x", MaxKeys=7)
    fake_s3.client.list_objects(Bucket="bucket", Prefix="ü/", Marker="ü/+")
    fake_s3.client.list_multipart_uploads(Bucket="bucket")
    assert "list-type=2" in fake_s3.requests[0].url
    for request in fake_s3.requests:
        assert authenticate(signed(request), secrets) is not None


def test_streaming_upload_over_tls_verifies(fake_s3_tls, signed, secrets):
    fake_s3_tls.client.put_object(Bucket="bucket", Key="k", Body=b"x" * 10)
    ctx = authenticate(signed(fake_s3_tls.last), secrets)
    assert ctx.payload_hash == sigv4.STREAMING_UNSIGNED_TRAILER


def _aws_request(method: str, url: str, headers: dict[str, str] | None = None) -> AWSRequest:
    request = AWSRequest(method=method, url=url, headers=headers or {})
    S3SigV4Auth(CREDS, "s3", "eu-west-3").add_auth(request)
    return request


def _from_aws_request(request: AWSRequest, now: datetime | None = None) -> SignedRequest:
    url = urlsplit(request.url)
    headers = [*request.headers.items(), ("host", url.netloc)]
    return SignedRequest(request.method, url.path, url.query, headers, now or datetime.now(UTC))


@pytest.mark.parametrize("query", [
    "x-id=PutObject", "list-type=2&prefix=a%2Fb", "uploads", "prefix=&delimiter=%2F",
    "b=2&a=1&a=0", "tagging&versionId=null", "prefix=%E2%9C%93%20%2B",
])
def test_signer_query_strings(secrets, query):
    request = _aws_request("GET", f"http://localhost:9000/bucket/some%20key?{query}")
    assert authenticate(_from_aws_request(request), secrets).region == "eu-west-3"


def test_literal_plus_in_query_is_a_space(secrets):
    # A form-encoding client sends "+" for a space but signs it canonically as %20.
    request = _aws_request("GET", "http://localhost:9000/bucket?prefix=a%20b")
    wire = _from_aws_request(request)
    wire = dataclasses.replace(wire, raw_query="prefix=a+b")
    assert authenticate(wire, secrets) is not None


def test_over_encoded_path_still_verifies(secrets):
    # Encoding an unreserved character ("~" as %7E) does not change the canonical URI.
    request = _aws_request("GET", "http://localhost:9000/bucket/a~b")
    wire = dataclasses.replace(_from_aws_request(request), raw_path="/bucket/a%7Eb")
    assert authenticate(wire, secrets) is not None


def test_header_whitespace_is_collapsed(secrets):
    request = _aws_request("GET", "http://localhost:9000/bucket/k",
                           {"x-amz-meta-note": "  two   spaces\there  "})
    assert authenticate(_from_aws_request(request), secrets) is not None


def test_repeated_headers_join_with_commas():
    assert sigv4.header_map([("X-A", "1"), ("x-a", "2"), ("B", "3")]) == {"x-a": "1,2", "b": "3"}


@pytest.mark.parametrize("tamper", ["signature", "path", "query", "header", "method", "secret"])
def test_tampering_fails(fake_s3, signed, secrets, tamper):
    fake_s3.client.put_object(Bucket="bucket", Key="key", Body=b"hello", Metadata={"m": "v"})
    request = signed(fake_s3.last)
    headers = dict(request.headers)
    if tamper == "signature":
        auth = headers["Authorization"]
        last = "0" if auth[-1] != "0" else "1"
        headers["Authorization"] = auth[:-1] + last
        request = dataclasses.replace(request, headers=headers)
    elif tamper == "path":
        request = dataclasses.replace(request, raw_path=request.raw_path + "x")
    elif tamper == "query":
        request = dataclasses.replace(request, raw_query="x-id=DeleteObject")
    elif tamper == "header":
        headers["x-amz-meta-m"] = "w"
        request = dataclasses.replace(request, headers=headers)
    elif tamper == "method":
        request = dataclasses.replace(request, method="POST")
    with pytest.raises(S3Error) as excinfo:
        authenticate(request, (lambda _: "wrong") if tamper == "secret" else secrets)
    assert _codes(excinfo) == "SignatureDoesNotMatch"
    assert excinfo.value.status == 403


def test_unsigned_amz_header_is_refused(fake_s3, signed, secrets):
    fake_s3.client.get_object(Bucket="bucket", Key="key")
    request = signed(fake_s3.last)
    request = dataclasses.replace(request, headers=[*request.headers, ("x-amz-acl", "public-read")])
    with pytest.raises(S3Error) as excinfo:
        authenticate(request, secrets)
    assert _codes(excinfo) == "AccessDenied"


def test_unknown_access_key(fake_s3, signed):
    fake_s3.client.get_object(Bucket="bucket", Key="key")
    with pytest.raises(S3Error) as excinfo:
        authenticate(signed(fake_s3.last), lambda _: None)
    assert _codes(excinfo) == "InvalidAccessKeyId"


@pytest.mark.parametrize("skew", [timedelta(minutes=16), -timedelta(minutes=16)])
def test_clock_skew(fake_s3, signed, secrets, skew):
    fake_s3.client.get_object(Bucket="bucket", Key="key")
    with pytest.raises(S3Error) as excinfo:
        authenticate(signed(fake_s3.last, datetime.now(UTC) + skew), secrets)
    assert _codes(excinfo) == "RequestTimeTooSkewed"
    assert authenticate(signed(fake_s3.last, datetime.now(UTC) + skew / 2), secrets)


def test_anonymous_request_is_not_authenticated(secrets):
    request = SignedRequest("GET", "/bucket/key", "", [("host", "h")], datetime.now(UTC))
    assert authenticate(request, secrets) is None


def test_other_auth_schemes_are_refused(secrets):
    request = SignedRequest("GET", "/b/k", "", [("host", "h"), ("Authorization", "AWS AK:sig")],
                            datetime.now(UTC))
    with pytest.raises(S3Error) as excinfo:
        authenticate(request, secrets)
    assert _codes(excinfo) == "InvalidRequest"


def test_missing_content_sha256_is_refused(fake_s3, signed, secrets):
    fake_s3.client.get_object(Bucket="bucket", Key="key")
    request = signed(fake_s3.last)
    headers = [(k, v) for k, v in request.headers if k.lower() != "x-amz-content-sha256"]
    with pytest.raises(S3Error) as excinfo:
        authenticate(dataclasses.replace(request, headers=headers), secrets)
    assert _codes(excinfo) in ("InvalidRequest", "AuthorizationHeaderMalformed")


# ------------------------------------------------------------------ presigned URLs


def _presigned(url: str, now: datetime | None = None, headers=()) -> SignedRequest:
    parts = urlsplit(url)
    return SignedRequest("GET", parts.path, parts.query, [("host", parts.netloc), *headers],
                         now or datetime.now(UTC))


@pytest.mark.parametrize("key", KEYS)
def test_presigned_get(fake_s3, secrets, key):
    url = fake_s3.client.generate_presigned_url(
        "get_object", Params={"Bucket": "bucket", "Key": key,
                              "ResponseContentDisposition": "attachment; filename=\"a b+c\""},
        ExpiresIn=300)
    ctx = authenticate(_presigned(url), secrets)
    assert ctx.presigned and ctx.payload_hash == sigv4.UNSIGNED_PAYLOAD


def test_presigned_put(fake_s3, secrets):
    url = fake_s3.client.generate_presigned_url(
        "put_object", Params={"Bucket": "bucket", "Key": "k"}, ExpiresIn=60)
    parts = urlsplit(url)
    request = SignedRequest("PUT", parts.path, parts.query, [("host", parts.netloc)],
                            datetime.now(UTC))
    assert authenticate(request, secrets).presigned


def test_presigned_expired(fake_s3, secrets):
    url = fake_s3.client.generate_presigned_url(
        "get_object", Params={"Bucket": "bucket", "Key": "k"}, ExpiresIn=60)
    with pytest.raises(S3Error) as excinfo:
        authenticate(_presigned(url, datetime.now(UTC) + timedelta(seconds=120)), secrets)
    assert (excinfo.value.code, excinfo.value.message) == ("AccessDenied", "Request has expired")
    assert excinfo.value.status == 403


def test_presigned_not_yet_valid(fake_s3, secrets):
    url = fake_s3.client.generate_presigned_url(
        "get_object", Params={"Bucket": "bucket", "Key": "k"}, ExpiresIn=60)
    with pytest.raises(S3Error) as excinfo:
        authenticate(_presigned(url, datetime.now(UTC) - timedelta(hours=1)), secrets)
    assert _codes(excinfo) == "AccessDenied"


def test_presigned_expiry_limit(secrets):
    request = AWSRequest(method="GET", url="http://localhost:9000/bucket/key")
    S3SigV4QueryAuth(CREDS, "s3", "us-east-1", expires=604801).add_auth(request)
    with pytest.raises(S3Error) as excinfo:
        authenticate(_presigned(request.url), secrets)
    assert _codes(excinfo) == "AuthorizationQueryParametersError"


def test_presigned_tampered(fake_s3, secrets):
    url = fake_s3.client.generate_presigned_url(
        "get_object", Params={"Bucket": "bucket", "Key": "k"}, ExpiresIn=60)
    for bad in (url.replace("/k?", "/j?"), url.replace("X-Amz-Expires=60", "X-Amz-Expires=600")):
        with pytest.raises(S3Error) as excinfo:
            authenticate(_presigned(bad), secrets)
        assert _codes(excinfo) == "SignatureDoesNotMatch"


def test_presigned_and_header_auth_together_refused(fake_s3, secrets):
    url = fake_s3.client.generate_presigned_url(
        "get_object", Params={"Bucket": "bucket", "Key": "k"}, ExpiresIn=60)
    with pytest.raises(S3Error) as excinfo:
        authenticate(_presigned(url, headers=[("Authorization", "AWS4-HMAC-SHA256 x")]), secrets)
    assert _codes(excinfo) == "InvalidArgument"


# ------------------------------------------------------------------ AWS documentation example

SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
CHUNK_SIGNATURES = [
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
]


def test_aws_example_seed_and_chunk_signatures(aws_example):
    ctx = aws_example
    assert ctx.seed_signature == SEED
    assert ctx.scope == "20130524/us-east-1/s3/aws4_request"
    previous = SEED
    for data, expected in zip([b"a" * 65536, b"a" * 1024, b""], CHUNK_SIGNATURES, strict=True):
        signature = sigv4.sign_chunk(ctx, previous, hashlib.sha256(data).hexdigest())
        assert signature == expected
        sigv4.verify_chunk_signature(ctx, previous, hashlib.sha256(data).hexdigest(), signature)
        previous = signature
    with pytest.raises(S3Error):
        sigv4.verify_chunk_signature(ctx, SEED, sigv4.EMPTY_SHA256, CHUNK_SIGNATURES[0])


def test_signing_key_matches_botocore():
    request = AWSRequest(method="GET", url="http://h/b")
    request.context["timestamp"] = "20240102T030405Z"
    auth = S3SigV4Auth(CREDS, "s3", "ap-south-1")
    expected = auth.signature("string to sign", request)
    key = sigv4.signing_key(CREDS.secret_key, "20240102", "ap-south-1")
    assert hmac.new(key, b"string to sign", hashlib.sha256).hexdigest() == expected


def test_date_header_instead_of_x_amz_date(secrets):
    # botocore signs with the Date header (and sends no X-Amz-Date) when one is set.
    request = _aws_request("GET", "http://localhost:9000/bucket/k", {"Date": "placeholder"})
    assert "X-Amz-Date" not in request.headers
    assert authenticate(_from_aws_request(request), secrets) is not None


def test_signing_key_not_in_repr(aws_example):
    assert "signing_key" not in repr(aws_example)
