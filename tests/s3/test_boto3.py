"""PutObject/GetObject/HeadObject/DeleteObject(s)/CopyObject/listings through boto3 (default config)."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError


def code(exc: pytest.ExceptionInfo) -> str:
    return exc.value.response["Error"]["Code"]


def keys(s3, bucket, **kwargs) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, **kwargs)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def test_buckets(s3, bucket):
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket=bucket)
    assert s3.get_bucket_location(Bucket=bucket).get("LocationConstraint") is None
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket=bucket)
    assert code(exc) == "BucketAlreadyOwnedByYou"
    s3.put_object(Bucket=bucket, Key="x", Body=b"1")
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket=bucket)
    assert code(exc) == "BucketNotEmpty"
    s3.delete_object(Bucket=bucket, Key="x")
    s3.delete_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as exc:
        s3.head_bucket(Bucket=bucket)
    assert exc.value.response["Error"]["Code"] in ("404", "NoSuchBucket")
    with pytest.raises(ClientError) as exc:
        s3.list_objects_v2(Bucket=bucket)
    assert code(exc) == "NoSuchBucket"


def test_invalid_bucket_name(s3):
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket="Bad_Name")
    assert code(exc) == "InvalidBucketName"


def test_put_get_head_metadata(s3, bucket):
    body = os.urandom(300_000)
    put = s3.put_object(Bucket=bucket, Key="dir/sub/file.bin", Body=body, ContentType="image/png",
                        ContentDisposition="attachment", CacheControl="no-cache",
                        ContentLanguage="fr", Metadata={"Color": "blue", "mtime": "1600000000.25"})
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key="dir/sub/file.bin")
    assert got["Body"].read() == body
    assert got["ContentType"] == "image/png"
    assert got["ContentDisposition"] == "attachment"
    assert got["CacheControl"] == "no-cache"
    assert got["ContentLanguage"] == "fr"
    assert got["Metadata"] == {"color": "blue", "mtime": "1600000000.25"}
    assert got["LastModified"] == datetime.fromtimestamp(1600000000, UTC)
    assert got["ChecksumCRC32"]  # stored at PUT, returned with x-amz-checksum-mode
    head = s3.head_object(Bucket=bucket, Key="dir/sub/file.bin")
    assert head["ContentLength"] == len(body)
    assert head["ETag"] == put["ETag"]
    # Without x-amz-meta-mtime the mtime is the upload time, and is returned as metadata.
    s3.put_object(Bucket=bucket, Key="plain", Body=b"abc")
    head = s3.head_object(Bucket=bucket, Key="plain")
    assert head["ContentType"] == "binary/octet-stream"
    assert abs(float(head["Metadata"]["mtime"]) - datetime.now(UTC).timestamp()) < 60


def test_missing_and_directories(s3, bucket):
    s3.put_object(Bucket=bucket, Key="a/b", Body=b"x")
    for key in ("nope", "a", "a/", "a/b/"):
        with pytest.raises(ClientError) as exc:
            s3.get_object(Bucket=bucket, Key=key)
        assert code(exc) == "NoSuchKey", key
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="a", Body=b"y")
    assert code(exc) == "ExistingObjectIsDirectory"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="a/b/c", Body=b"y")
    assert code(exc) == "ObjectParentIsFile"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="m/", Body=b"data")
    assert code(exc) == "DirectoryObjectContainsData"
    s3.put_object(Bucket=bucket, Key="m/", Body=b"")
    assert s3.get_object(Bucket=bucket, Key="m/")["Body"].read() == b""
    assert keys(s3, bucket) == ["a/b", "m/"]
    s3.put_object(Bucket=bucket, Key="m/inner", Body=b"1")
    assert keys(s3, bucket) == ["a/b", "m/inner"]  # a non-empty directory is no object
    s3.delete_object(Bucket=bucket, Key="m/inner")
    assert keys(s3, bucket) == ["a/b", "m/"]  # explicit: stays
    s3.delete_object(Bucket=bucket, Key="a/b")
    assert keys(s3, bucket) == ["m/"]  # implicit "a" went away with its last object
    s3.delete_object(Bucket=bucket, Key="m/")
    s3.delete_object(Bucket=bucket, Key="never/existed")  # idempotent
    assert keys(s3, bucket) == []
    s3.delete_bucket(Bucket=bucket)


@pytest.mark.parametrize("key", ["a//b", "./x", "a/../b", "/lead"])
def test_invalid_key(s3, bucket, key):
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    assert code(exc) == "InvalidArgument"
    assert keys(s3, bucket) == []


def test_ranges_and_conditionals(s3, bucket):
    body = bytes(range(256)) * 40
    etag = s3.put_object(Bucket=bucket, Key="r", Body=body)["ETag"]
    got = s3.get_object(Bucket=bucket, Key="r", Range="bytes=10-19")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == f"bytes 10-19/{len(body)}"
    assert got["Body"].read() == body[10:20]
    assert "ChecksumCRC32" not in got  # never for a part of the object
    assert s3.get_object(Bucket=bucket, Key="r", Range="bytes=-5")["Body"].read() == body[-5:]
    assert s3.get_object(Bucket=bucket, Key="r", Range="bytes=10000-")["Body"].read() == body[10000:]
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="r", Range=f"bytes={len(body)}-")
    assert code(exc) == "InvalidRange"
    assert s3.get_object(Bucket=bucket, Key="r", IfMatch=etag)["Body"].read() == body
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="r", IfMatch='"0000"')
    assert code(exc) == "PreconditionFailed"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="r", IfNoneMatch=etag)
    assert exc.value.response["Error"]["Code"] == "304"
    later = datetime.now(UTC) + timedelta(hours=1)
    earlier = datetime.now(UTC) - timedelta(hours=1)
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="r", IfModifiedSince=later)
    assert exc.value.response["Error"]["Code"] == "304"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="r", IfUnmodifiedSince=earlier)
    assert code(exc) == "PreconditionFailed"
    got = s3.get_object(Bucket=bucket, Key="r", ResponseContentType="text/csv",
                        ResponseContentDisposition="inline")
    assert got["ContentType"] == "text/csv" and got["ContentDisposition"] == "inline"


def test_bad_digest_leaves_nothing(s3, bucket):
    import base64
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="deep/er/obj", Body=b"payload", ContentMD5=wrong)
    assert code(exc) == "BadDigest"
    assert keys(s3, bucket) == []
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="deep/er/obj")
    # the implicit parents created for it are gone too
    assert s3.list_objects_v2(Bucket=bucket, Delimiter="/").get("CommonPrefixes") is None


def test_copy(s3, bucket):
    s3.put_object(Bucket=bucket, Key="src", Body=b"content", Metadata={"k": "v"}, ContentType="text/x")
    s3.copy_object(Bucket=bucket, Key="d/dst", CopySource={"Bucket": bucket, "Key": "src"})
    got = s3.get_object(Bucket=bucket, Key="d/dst")
    assert got["Body"].read() == b"content"
    assert got["Metadata"]["k"] == "v" and got["ContentType"] == "text/x"
    s3.copy_object(Bucket=bucket, Key="d/dst", CopySource={"Bucket": bucket, "Key": "src"},
                   MetadataDirective="REPLACE", Metadata={"new": "1", "mtime": "1500000000"})
    head = s3.head_object(Bucket=bucket, Key="d/dst")
    assert head["Metadata"] == {"new": "1", "mtime": "1500000000"}
    assert head["ContentType"] == "binary/octet-stream"
    # onto itself with REPLACE: what rclone does to set the mtime
    s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"},
                   MetadataDirective="REPLACE", Metadata={"mtime": "1400000000.5"})
    head = s3.head_object(Bucket=bucket, Key="src")
    assert head["Metadata"] == {"mtime": "1400000000.5"}
    assert head["LastModified"] == datetime.fromtimestamp(1400000000, UTC)
    assert s3.get_object(Bucket=bucket, Key="src")["Body"].read() == b"content"
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"})
    assert code(exc) == "InvalidRequest"
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="x", CopySource={"Bucket": bucket, "Key": "missing"})
    assert code(exc) == "NoSuchKey"


def test_listing_order_and_pagination(s3, bucket):
    names = ["a", "a.b", "a/x", "a/y/z", "a-c", "b/", "b0", "c/d/e", "c/d/f", "c!", "z z", "é"]
    names.remove("a")  # "a" cannot be both a file and the directory holding a/x
    for name in names:
        s3.put_object(Bucket=bucket, Key=name, Body=b"" if name.endswith("/") else name.encode())
    expected = sorted(names, key=lambda k: k.encode())
    for page_size in (1, 2, 3, 1000):
        assert keys(s3, bucket, PaginationConfig={"PageSize": page_size}) == expected
        pages = s3.get_paginator("list_objects").paginate(Bucket=bucket, PaginationConfig={"PageSize": page_size})
        assert [o["Key"] for p in pages for o in p.get("Contents", [])] == expected
    assert keys(s3, bucket, Prefix="a") == [k for k in expected if k.startswith("a")]
    assert keys(s3, bucket, Prefix="c/d/") == ["c/d/e", "c/d/f"]
    assert keys(s3, bucket, StartAfter="a/x") == [k for k in expected if k > "a/x"]
    for page_size in (1, 2, 1000):
        seen, prefixes = [], []
        for page in s3.get_paginator("list_objects").paginate(
                Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": page_size}):
            seen += [o["Key"] for o in page.get("Contents", [])]
            prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        assert seen == ["a-c", "a.b", "b0", "c!", "z z", "é"]
        assert prefixes == ["a/", "b/", "c/"]
    r = s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in r["Contents"]] == ["a/x"]
    assert r["CommonPrefixes"] == [{"Prefix": "a/y/"}]
    assert r["KeyCount"] == 2
    r = s3.list_objects(Bucket=bucket, Delimiter="-")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["a-"]
    r = s3.list_objects_v2(Bucket=bucket, EncodingType="url", Prefix="z")
    assert r["Contents"][0]["Key"] == "z%20z"  # asked for explicitly: boto3 leaves it encoded
    r = s3.list_objects_v2(Bucket=bucket, FetchOwner=True, MaxKeys=1)
    assert r["Contents"][0]["Owner"]["ID"] and r["IsTruncated"]
    versions = s3.list_object_versions(Bucket=bucket)
    assert [v["Key"] for v in versions["Versions"]] == expected
    assert all(v["VersionId"] == "null" and v["IsLatest"] for v in versions["Versions"])


def test_delete_objects(s3, bucket):
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"k/{i}", Body=b"x")
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": f"k/{i}"} for i in range(3)]
                                                  + [{"Key": "k//bad"}]})
    assert sorted(d["Key"] for d in r["Deleted"]) == ["k/0", "k/1", "k/2"]
    assert [e["Key"] for e in r["Errors"]] == ["k//bad"]
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k/3"}, {"Key": "k/4"}], "Quiet": True})
    assert "Deleted" not in r and "Errors" not in r
    assert keys(s3, bucket) == []


def test_large_object(s3, bucket, tmp_path):
    data = os.urandom(1 << 20) * 100  # 100 MiB
    s3.put_object(Bucket=bucket, Key="big", Body=data)
    got = s3.get_object(Bucket=bucket, Key="big")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    part = s3.get_object(Bucket=bucket, Key="big", Range="bytes=52428000-52429999")["Body"].read()
    assert part == data[52428000:52430000]


@pytest.mark.parametrize("signature_version", [None, "s3v4"])  # None: botocore's SigV2 default
def test_presigned_urls(server, make_client, bucket, signature_version):
    signer = make_client(**({"signature_version": signature_version} if signature_version else {}))
    key = "p k/ü+x"

    def presign(method: str, expires: int = 60) -> str:
        return signer.generate_presigned_url(method, Params={"Bucket": bucket, "Key": key},
                                             ExpiresIn=expires)

    url = presign("put_object")
    assert ("X-Amz-Signature=" in url) == (signature_version == "s3v4")
    assert server.send("PUT", url, b"presigned")[0] == 200
    status, _, body = server.send("GET", presign("get_object"))
    assert (status, body) == (200, b"presigned")
    status, _, body = server.send("DELETE", presign("get_object"))  # signed for GET only
    assert status == 403 and b"SignatureDoesNotMatch" in body
    url = presign("get_object", expires=1)
    time.sleep(2.1)
    status, _, body = server.send("GET", url)
    assert status == 403 and b"Request has expired" in body
