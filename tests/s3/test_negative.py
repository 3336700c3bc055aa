"""Authentication failures and malformed requests."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError


def code(exc) -> str:
    return exc.value.response["Error"]["Code"]


def test_bad_signature(make_client, bucket):
    with pytest.raises(ClientError) as exc:
        make_client(secret="not-the-secret").list_objects_v2(Bucket=bucket)
    assert code(exc) == "SignatureDoesNotMatch"


def test_unknown_access_key(make_client, bucket):
    with pytest.raises(ClientError) as exc:
        make_client(access="AKIDUNKNOWN").put_object(Bucket=bucket, Key="k", Body=b"x")
    assert code(exc) == "InvalidAccessKeyId"


def test_anonymous_refused(server, bucket):
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"{server.endpoint}/{bucket}")
    assert exc.value.code == 403 and b"<Code>AccessDenied</Code>" in exc.value.read()


def _signed(server, credentials, method: str, path: str, body: bytes, headers: dict[str, str]) -> urllib.request.Request:
    request = AWSRequest(method, server.endpoint + path, data=body,
                         headers={**headers, "x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
    S3SigV4Auth(Credentials(*credentials), "s3", "us-east-1").add_auth(request)
    return urllib.request.Request(request.url, data=body, method=method, headers=dict(request.headers.items()))


def test_malformed_delete_xml(server, credentials, s3, bucket):
    s3.put_object(Bucket=bucket, Key="keep", Body=b"x")
    for body in (b"<Delete><Object><Key>keep", b"<NotDelete/>", b"<Delete></Delete>"):
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(_signed(server, credentials, "POST", f"/{bucket}?delete", body, {}))
        assert exc.value.code == 400
        assert b"<Code>MalformedXML</Code>" in exc.value.read()
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"x"


def test_error_body_has_request_id(server, credentials, bucket):
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(_signed(server, credentials, "GET", f"/{bucket}/missing", b"", {}))
    body = exc.value.read()
    request_id = exc.value.headers["x-amz-request-id"]
    assert exc.value.code == 404 and b"<Code>NoSuchKey</Code>" in body
    assert f"<RequestId>{request_id}</RequestId>".encode() in body


def test_payload_hash_mismatch(server, credentials, s3, bucket):
    request = _signed(server, credentials, "PUT", f"/{bucket}/obj", b"original", {})
    request.data = b"tampered"
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(request)
    assert b"XAmzContentSHA256Mismatch" in exc.value.read()
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="obj")


def test_unsupported_subresource(s3, bucket):
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_acl(Bucket=bucket)
    assert code(exc) == "NotImplemented"


@pytest.mark.parametrize("body", [
    # billion laughs: entity expansion must not happen (nor take memory or time)
    b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
    b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
    b"<Delete><Object><Key>&c;</Key></Object></Delete>",
    # an external entity must not be read
    b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/hostname">]>'
    b"<Delete><Object><Key>&x;</Key></Object></Delete>",
])
def test_delete_xml_entities_refused(server, credentials, s3, bucket, body):
    s3.put_object(Bucket=bucket, Key="keep", Body=b"x")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(_signed(server, credentials, "POST", f"/{bucket}?delete", body, {}))
    assert exc.value.code == 400 and b"<Code>MalformedXML</Code>" in exc.value.read()
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"x"
