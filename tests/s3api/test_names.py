"""Bucket-name and object-key validation."""

from __future__ import annotations

import pytest

from s3api.errors import S3Error
from s3api.names import ObjectPath, parse_key, validate_bucket_name


@pytest.mark.parametrize("name", ["abc", "my-bucket", "my.bucket.1", "a" * 63, "1bucket", "b-1.c-2"])
def test_valid_bucket_names(name):
    validate_bucket_name(name)


@pytest.mark.parametrize("name", [
    "ab", "a" * 64, "MyBucket", "my_bucket", "-bucket", "bucket-", ".bucket", "bucket.",
    "my..bucket", "my.-bucket", "my-.bucket", "192.168.5.4", "xn--bucket", "sthree-bucket",
    "bucket-s3alias", "bucket--ol-s3", "bucket--x-s3", "bücket", "bucket name", "",
])
def test_invalid_bucket_names(name):
    with pytest.raises(S3Error) as excinfo:
        validate_bucket_name(name)
    assert (excinfo.value.code, excinfo.value.status) == ("InvalidBucketName", 400)


@pytest.mark.parametrize(("key", "expected"), [
    ("file.txt", ObjectPath(("file.txt",), False)),
    ("a/b/c", ObjectPath(("a", "b", "c"), False)),
    ("dir/", ObjectPath(("dir",), True)),
    ("a/b/", ObjectPath(("a", "b"), True)),
    ("...", ObjectPath(("...",), False)),
    ("with space/ünï/鍵 +=~", ObjectPath(("with space", "ünï", "鍵 +=~"), False)),
    ("x" * 255 + "/" + "y" * 255, ObjectPath(("x" * 255, "y" * 255), False)),
])
def test_valid_keys(key, expected):
    assert parse_key(key) == expected


@pytest.mark.parametrize(("key", "code"), [
    ("", "InvalidArgument"), ("/abs", "InvalidArgument"), ("a//b", "InvalidArgument"),
    ("a/./b", "InvalidArgument"), ("../x", "InvalidArgument"), ("a/..", "InvalidArgument"),
    ("dir//", "InvalidArgument"), ("nul\0byte", "InvalidArgument"), (".", "InvalidArgument"),
    ("bad\udcffutf8", "InvalidArgument"),
    ("k" * 1025, "KeyTooLongError"), ("é" * 513, "KeyTooLongError"),
    ("x" * 256, "KeyTooLongError"), ("a/" + "é" * 128, "KeyTooLongError"),
])
def test_invalid_keys(key, code):
    with pytest.raises(S3Error) as excinfo:
        parse_key(key)
    assert excinfo.value.code == code and excinfo.value.status == 400
