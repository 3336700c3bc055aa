"""The error catalogue, the error body, and the mapping from engine errors."""

from __future__ import annotations

import defusedxml.ElementTree as SafeET
import pytest

from cartridgefs import errors as fs
from s3api.errors import CATALOGUE, S3Error, error_xml, expired_request, from_cartridge_error

STATUSES = {
    "NoSuchBucket": 404, "NoSuchKey": 404, "NoSuchUpload": 404, "BucketAlreadyOwnedByYou": 409,
    "BucketAlreadyExists": 409, "BucketNotEmpty": 409, "InvalidBucketName": 400,
    "InvalidArgument": 400, "InvalidRange": 416, "PreconditionFailed": 412, "NotModified": 304,
    "SignatureDoesNotMatch": 403, "InvalidAccessKeyId": 403, "RequestTimeTooSkewed": 403,
    "AccessDenied": 403, "BadDigest": 400, "InvalidDigest": 400, "XAmzContentSHA256Mismatch": 400,
    "EntityTooLarge": 400, "EntityTooSmall": 400, "InvalidPart": 400, "InvalidPartOrder": 400,
    "MalformedXML": 400, "MethodNotAllowed": 405, "NotImplemented": 501,
    "MissingContentLength": 411, "InvalidRequest": 400, "IncompleteBody": 400,
    "KeyTooLongError": 400, "ExistingObjectIsDirectory": 409, "ObjectParentIsFile": 409,
    "DirectoryObjectContainsData": 400, "RequestHeaderSectionTooLarge": 400,
    "InternalError": 500, "ServiceUnavailable": 503, "SlowDown": 503,
}


@pytest.mark.parametrize(("code", "status"), sorted(STATUSES.items()))
def test_catalogue_statuses(code, status):
    assert S3Error(code).status == status
    assert CATALOGUE[code][0] == status


def test_error_xml():
    err = S3Error("NoSuchKey", Key="a<&>\rb", BucketName="bucket")
    root = SafeET.fromstring(error_xml(err, "req-1", "/bucket/a"))
    fields = {child.tag: child.text for child in root}
    assert root.tag == "Error"
    assert fields == {"Code": "NoSuchKey", "Message": "The specified key does not exist.",
                      "Key": "a<&>\rb", "BucketName": "bucket", "Resource": "/bucket/a",
                      "RequestId": "req-1"}


def test_expired_request_is_access_denied():
    err = expired_request("2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z")
    assert (err.code, err.status, err.message) == ("AccessDenied", 403, "Request has expired")
    assert b"<X-Amz-Expires>" in error_xml(err, "r")


@pytest.mark.parametrize(("exc", "key", "code", "status"), [
    (fs.NotFound(), None, "NoSuchBucket", 404),
    (fs.NotFound(), "k", "NoSuchKey", 404),
    (fs.Exists(), None, "BucketAlreadyOwnedByYou", 409),
    (fs.Exists(), "k", "PreconditionFailed", 412),
    (fs.NotEmpty(), None, "BucketNotEmpty", 409),
    (fs.NotEmpty(), "d/", "DirectoryNotEmpty", 409),
    (fs.IsADirectory(), "k", "ExistingObjectIsDirectory", 409),
    (fs.NotADirectory(), "a/b", "ObjectParentIsFile", 409),
    (fs.NameTooLong(), "k", "KeyTooLongError", 400),
    (fs.InvalidArgument("bad"), "k", "InvalidArgument", 400),
    (fs.TooLarge(), "k", "EntityTooLarge", 400),
    (fs.NoSpace(), "k", "InsufficientStorage", 507),
    (fs.ReadOnly(), "k", "AccessDenied", 403),
    (fs.PermissionDenied(), "k", "AccessDenied", 403),
    (fs.NotPermitted(), "k", "AccessDenied", 403),
    (fs.Busy(), "k", "ServiceUnavailable", 503),
    (fs.IntegrityError(), "k", "InternalError", 500),
    (fs.FormatError(), "k", "InternalError", 500),
    (fs.CartridgeError(), None, "InternalError", 500),
])
def test_from_cartridge_error(exc, key, code, status):
    err = from_cartridge_error(exc, bucket="bucket", key=key)
    assert (err.code, err.status) == (code, status)
