"""SigV2 presigned URLs as botocore (default configuration) and s3cmd `signurl` make them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit

import botocore.session
import pytest
from botocore.config import Config
from test_sigv4 import CREDS, KEYS

from s3api import sigv2
from s3api.errors import S3Error
from s3api.sigv4 import SignedRequest, authenticate

ACCESS_KEY, SECRET_KEY = CREDS.access_key, CREDS.secret_key


def _client(addressing_style: str = "path", secret: str = SECRET_KEY):
    """A botocore client with the default signature configuration: SigV2 presigned URLs."""
    return botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url="http://cartridge.test:9000",
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=secret,
        config=Config(s3={"addressing_style": addressing_style}))


def _request(url: str, method: str = "GET", headers=(), now: datetime | None = None,
             virtual_bucket: str | None = None) -> SignedRequest:
    parts = urlsplit(url)
    return SignedRequest(method, parts.path, parts.query, [("host", parts.netloc), *headers],
                         now or datetime.now(UTC), virtual_bucket=virtual_bucket)


def _code(excinfo: pytest.ExceptionInfo[S3Error]) -> str:
    return excinfo.value.code


@pytest.mark.parametrize("key", KEYS)
def test_presigned_get(secrets, key):
    url = _client().generate_presigned_url(
        "get_object", Params={"Bucket": "bucket", "Key": key,
                              "ResponseContentDisposition": "attachment; filename=\"a b+c\""},
        ExpiresIn=300)
    assert "AWSAccessKeyId=" in url and "X-Amz-" not in url
    ctx = authenticate(_request(url), secrets)
    assert ctx.presigned and ctx.access_key == ACCESS_KEY and ctx.payload_hash == "UNSIGNED-PAYLOAD"


def test_presigned_put_with_content_type(secrets):
    url = _client().generate_presigned_url(
        "put_object", Params={"Bucket": "bucket", "Key": "k", "ContentType": "text/plain"},
        ExpiresIn=60)
    assert authenticate(_request(url, "PUT", [("Content-Type", "text/plain")]), secrets)
    with pytest.raises(S3Error) as excinfo:  # another type than the one signed
        authenticate(_request(url, "PUT", [("Content-Type", "text/html")]), secrets)
    assert _code(excinfo) == "SignatureDoesNotMatch"


def test_method_and_path_are_signed(secrets):
    url = _client().generate_presigned_url("get_object", Params={"Bucket": "bucket", "Key": "k"})
    for request in (_request(url, "DELETE"), _request(url.replace("/k?", "/other?"))):
        with pytest.raises(S3Error) as excinfo:
            authenticate(request, secrets)
        assert _code(excinfo) == "SignatureDoesNotMatch"


def test_virtual_hosted(secrets):
    url = _client("virtual").generate_presigned_url(
        "get_object", Params={"Bucket": "bucket", "Key": "a b"})
    assert urlsplit(url).netloc.startswith("bucket.")
    assert authenticate(_request(url, virtual_bucket="bucket"), secrets)
    with pytest.raises(S3Error):
        authenticate(_request(url), secrets)  # the bucket is part of what was signed


def test_wrong_secret_and_unknown_key(secrets):
    url = _client(secret="other").generate_presigned_url(
        "get_object", Params={"Bucket": "b", "Key": "k"})
    with pytest.raises(S3Error) as excinfo:
        authenticate(_request(url), secrets)
    assert _code(excinfo) == "SignatureDoesNotMatch" and excinfo.value.status == 403
    with pytest.raises(S3Error) as excinfo:
        authenticate(_request(url.replace(ACCESS_KEY, "AKIDUNKNOWN")), secrets)
    assert _code(excinfo) == "InvalidAccessKeyId"


def test_expired(secrets):
    url = _client().generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"},
                                           ExpiresIn=60)
    later = datetime.now(UTC) + timedelta(seconds=120)
    with pytest.raises(S3Error) as excinfo:
        authenticate(_request(url, now=later), secrets)
    assert (excinfo.value.code, excinfo.value.message) == ("AccessDenied", "Request has expired")


def test_s3cmd_signurl_form(secrets):
    """s3cmd signs "GET\\n\\n\\nEXPIRES\\n/bucket/quoted-object" and sends the same path."""
    expires = int(time.time()) + 60
    path = "/bucket/" + quote("dir/ü x.txt")
    digest = hmac.new(SECRET_KEY.encode(), f"GET\n\n\n{expires}\n{path}".encode(), hashlib.sha1)
    signature = quote(base64.b64encode(digest.digest()).decode(), safe="")
    url = f"http://h{path}?AWSAccessKeyId={ACCESS_KEY}&Expires={expires}&Signature={signature}"
    assert authenticate(_request(url), secrets)


def test_header_sigv2_still_refused(secrets):
    request = SignedRequest("GET", "/b/k", "", [("host", "h"), ("Authorization", "AWS AK:sig")],
                            datetime.now(UTC))
    with pytest.raises(S3Error) as excinfo:
        authenticate(request, secrets)
    assert _code(excinfo) == "InvalidRequest"


def test_sub_resources_in_string_to_sign():
    query = [("AWSAccessKeyId", "AK"), ("Expires", "9"), ("Signature", "s"), ("x-id", "GetObject"),
             ("versionId", "null"), ("response-content-type", "a/b"), ("uploads", "")]
    assert sigv2.string_to_sign("get", "/b/k", query, {"x-amz-meta-z": " v "}) == (
        "GET\n\n\n9\nx-amz-meta-z:v\n/b/k?response-content-type=a/b&uploads&versionId=null")
