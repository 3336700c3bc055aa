"""DeleteObjects of many keys at once (one transaction) and listings of many keys (a page read
from one state): the same answers as key-by-key semantics give."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError


def keys(s3, bucket, **kwargs) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, **kwargs)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def put_all(s3, bucket: str, bodies: dict[str, bytes]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), bodies.items()))


def delete(s3, bucket: str, *entries: str | tuple[str, str], quiet: bool = False) -> dict:
    objects = [{"Key": e} if isinstance(e, str) else {"Key": e[0], "VersionId": e[1]} for e in entries]
    return s3.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": quiet})


def test_delete_objects_mixed(s3, bucket):
    put_all(s3, bucket, {k: k.encode() for k in ("a/b/c/1", "a/b/c/2", "a/b/3", "a/4", "keep/x", "top")})
    put_all(s3, bucket, {"m/": b"", "e/": b""})
    s3.put_object(Bucket=bucket, Key="m/in", Body=b"in")
    r = delete(s3, bucket, "a/b/c/1", "missing", "a//bad", "a/b/c/2", "m/", "e/", "top", "a/../x",
               ("keep/x", "v1"), "a/b/3", "nope/deeper/", "a/4/under", "a/")
    assert [d["Key"] for d in r["Deleted"]] == [
        "a/b/c/1", "missing", "a/b/c/2", "m/", "e/", "top", "a/b/3", "nope/deeper/", "a/4/under", "a/"]
    assert [(e["Key"], e["Code"]) for e in r["Errors"]] == [
        ("a//bad", "InvalidArgument"), ("a/../x", "InvalidArgument"), ("keep/x", "InvalidArgument")]
    # "a/b/c" and "a/b" were implicit and left empty: gone. "e" went, "m" holds "m/in": it stays
    # as an implicit directory, no longer an object "m/".
    assert keys(s3, bucket) == ["a/4", "keep/x", "m/in"]
    r = s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in r["Contents"]] == ["a/4"] and "CommonPrefixes" not in r
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="m/")
    assert s3.get_object(Bucket=bucket, Key="a/4")["Body"].read() == b"a/4"
    r = delete(s3, bucket, "m/in", "keep/x", "a/4", "bad//key", quiet=True)
    assert "Deleted" not in r and [e["Key"] for e in r["Errors"]] == ["bad//key"]
    assert keys(s3, bucket) == [] and "CommonPrefixes" not in s3.list_objects_v2(Bucket=bucket, Delimiter="/")


def test_delete_objects_in_other_orders(s3, bucket):
    put_all(s3, bucket, {"x/": b"", "y/": b""})
    put_all(s3, bucket, {"x/1": b"1", "y/1": b"1", "z/deep/1": b"1"})
    # a marker before its last object, a marker after it, the same key twice
    r = delete(s3, bucket, "x/", "x/1", "y/1", "y/", "z/deep/1", "z/deep/1")
    assert [d["Key"] for d in r["Deleted"]] == ["x/", "x/1", "y/1", "y/", "z/deep/1", "z/deep/1"]
    assert keys(s3, bucket) == []
    assert "CommonPrefixes" not in s3.list_objects_v2(Bucket=bucket, Delimiter="/")


def test_delete_objects_of_a_missing_bucket(s3):
    with pytest.raises(ClientError) as exc:
        delete(s3, "no-such-bucket-here", "a")
    assert exc.value.response["Error"]["Code"] == "NoSuchBucket"


@pytest.mark.slow
def test_thousands_of_keys(s3, bucket):
    names = [f"d{i % 7}/{'sub/' if i % 3 else ''}{i:05d}" for i in range(2400)]
    names += ["a.b", "a-c", "z z", "é", "d1.x", "d10/x", "empty-dir/"]  # "d1.x" < "d1/…" < "d10/x"
    bodies = {name: b"" if name.endswith("/") else os.urandom(1 + len(name) % 50) for name in names}
    put_all(s3, bucket, bodies)
    # Different sources of ETags: a multipart object, one of one small part, an empty object.
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="d3/multi")["UploadId"]
    parts = [s3.upload_part(Bucket=bucket, Key="d3/multi", UploadId=upload_id, PartNumber=1,
                            Body=b"tiny")["ETag"]]
    s3.complete_multipart_upload(Bucket=bucket, Key="d3/multi", UploadId=upload_id,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": parts[0]}]})
    s3.put_object(Bucket=bucket, Key="d4/empty", Body=b"")
    expected = sorted([*names, "d3/multi", "d4/empty"], key=lambda k: k.encode())
    for page_size in (1000, 333):
        pages = list(s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, PaginationConfig={"PageSize": page_size}))
        listed = [o for page in pages for o in page.get("Contents", [])]
        assert [o["Key"] for o in listed] == expected
    for obj in listed:
        if obj["Key"] in bodies:
            body = bodies[obj["Key"]]
            assert (obj["Size"], obj["ETag"]) == (len(body), f'"{hashlib.md5(body).hexdigest()}"'), obj
    heads = {k: s3.head_object(Bucket=bucket, Key=k)["ETag"] for k in ("d3/multi", "d4/empty")}
    assert {o["Key"]: o["ETag"] for o in listed if o["Key"] in heads} == heads
    assert heads["d3/multi"].endswith('-1"')
    assert keys(s3, bucket, Prefix="d1", StartAfter="d1/") == [k for k in expected if k.startswith("d1") and k > "d1/"]
    r = s3.list_objects_v2(Bucket=bucket, Delimiter="/", Prefix="d2/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["d2/sub/"]
    assert [o["Key"] for o in r["Contents"]] == [k for k in expected if k.startswith("d2/") and "sub" not in k]
    for i in range(0, len(expected), 1000):
        r = delete(s3, bucket, *expected[i:i + 1000], quiet=True)
        assert "Errors" not in r
    assert keys(s3, bucket) == []
    assert "CommonPrefixes" not in s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    s3.delete_bucket(Bucket=bucket)
