"""Multipart uploads through boto3 against the session server (issue #4)."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

MiB = 1 << 20


def multipart_etag(parts: list[bytes]) -> str:
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return f'"{hashlib.md5(digests).hexdigest()}-{len(parts)}"'


def upload(s3, bucket: str, key: str, parts: list[bytes], **create) -> tuple[str, list[dict]]:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, **create)["UploadId"]
    done = []
    for number, body in enumerate(parts, 1):
        etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)["ETag"]
        done.append({"PartNumber": number, "ETag": etag})
    return upload_id, done


def complete(s3, bucket: str, key: str, upload_id: str, parts: list[dict]) -> dict:
    return s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                        MultipartUpload={"Parts": parts})


def error_code(exc: pytest.ExceptionInfo) -> str:
    return exc.value.response["Error"]["Code"]


@pytest.mark.parametrize("sizes", [
    pytest.param([5 * MiB, 100], id="two-small"),
    pytest.param([5 * MiB, 6 * MiB, 3 * MiB], id="three-medium"),
    pytest.param([8 * MiB, 2 * MiB], id="aws-cli-like"),
    pytest.param([100], id="single-part"),
    pytest.param([5 * MiB, 5 * MiB, 1], id="last-one-byte"),
])
def test_upload_and_read_back(s3, bucket, sizes):
    parts = [os.urandom(size) for size in sizes]
    upload_id, done = upload(s3, bucket, "dir/obj.bin", parts, ContentType="text/x-test", Metadata={"k": "v"})
    result = complete(s3, bucket, "dir/obj.bin", upload_id, done)
    assert result["ETag"] == multipart_etag(parts)
    got = s3.get_object(Bucket=bucket, Key="dir/obj.bin")
    assert got["Body"].read() == b"".join(parts)
    assert got["ETag"] == multipart_etag(parts)
    assert got["ContentType"] == "text/x-test" and got["Metadata"]["k"] == "v"
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["ETag"], o["Size"]) for o in listed] == [("dir/obj.bin", multipart_etag(parts), sum(sizes))]
    # GET/HEAD ?partNumber=N: that part's range, and the part count
    for number, body in enumerate(parts, 1):
        part = s3.get_object(Bucket=bucket, Key="dir/obj.bin", PartNumber=number)
        assert part["PartsCount"] == len(parts) and part["Body"].read() == body
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="dir/obj.bin", PartNumber=len(parts) + 1)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416
    with pytest.raises(ClientError) as exc:  # as AWS: not both a Range and a part number
        s3.get_object(Bucket=bucket, Key="dir/obj.bin", PartNumber=1, Range="bytes=0-0")
    assert error_code(exc) == "InvalidRequest"
    with pytest.raises(ClientError) as exc:
        s3.list_parts(Bucket=bucket, Key="dir/obj.bin", UploadId=upload_id)
    assert error_code(exc) == "NoSuchUpload"


@pytest.mark.parametrize("sizes", [
    pytest.param([MiB, 512 * 1024], id="1MiB+512KiB"),
    pytest.param([100, 5 * MiB, 1, 2 * MiB], id="varying"),
    pytest.param([1024] * 100, id="100-small-parts"),
])
def test_small_parts_are_refused(s3, bucket, sizes):
    """As on AWS, every part but the last must be at least 5 MiB; nothing is created."""
    parts = [os.urandom(size) for size in sizes]
    upload_id, done = upload(s3, bucket, "small", parts)
    with pytest.raises(ClientError) as exc:
        complete(s3, bucket, "small", upload_id, done)
    assert error_code(exc) == "EntityTooSmall"
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    # the upload is still there (fixable by re-uploading parts), and ListParts pages through it
    seen, marker = [], 0
    for _ in range(len(parts)):
        page = s3.list_parts(Bucket=bucket, Key="small", UploadId=upload_id, MaxParts=30, PartNumberMarker=marker)
        seen += [(p["PartNumber"], p["Size"]) for p in page.get("Parts", [])]
        if not page["IsTruncated"]:
            break
        marker = page["NextPartNumberMarker"]
    assert seen == [(n, size) for n, size in enumerate(sizes, 1)]
    s3.abort_multipart_upload(Bucket=bucket, Key="small", UploadId=upload_id)


def test_part_replacement_and_invalid_lists(s3, bucket):
    first, second, tail = os.urandom(5 * MiB), os.urandom(5 * MiB), b"tail"
    upload_id, done = upload(s3, bucket, "k", [first, tail])
    old = done[0]["ETag"]
    done[0]["ETag"] = s3.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=1, Body=second)["ETag"]
    parts = s3.list_parts(Bucket=bucket, Key="k", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["ETag"]) for p in parts] == [(1, done[0]["ETag"]), (2, done[1]["ETag"])]
    cases = [
        ([{"PartNumber": 1, "ETag": old}, done[1]], "InvalidPart"),  # the replaced part
        ([done[0], {"PartNumber": 3, "ETag": done[1]["ETag"]}], "InvalidPart"),  # a missing part
        ([done[1], done[0]], "InvalidPartOrder"),
    ]
    for parts_list, code in cases:
        with pytest.raises(ClientError) as exc:
            complete(s3, bucket, "k", upload_id, parts_list)
        assert error_code(exc) == code
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=10001, Body=b"x")
    assert error_code(exc) == "InvalidArgument"
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="other", UploadId=upload_id, PartNumber=1, Body=b"x")
    assert error_code(exc) == "NoSuchUpload"
    result = complete(s3, bucket, "k", upload_id, done)
    assert result["ETag"] == multipart_etag([second, tail])
    # a retried completion gets the same answer; the object is the same
    assert complete(s3, bucket, "k", upload_id, done)["ETag"] == result["ETag"]
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == second + tail


def test_complete_replaces_an_existing_object(s3, bucket):
    s3.put_object(Bucket=bucket, Key="obj", Body=b"old content")
    upload_id, done = upload(s3, bucket, "obj", [b"new"])
    assert s3.get_object(Bucket=bucket, Key="obj")["Body"].read() == b"old content"
    complete(s3, bucket, "obj", upload_id, done)
    assert s3.get_object(Bucket=bucket, Key="obj")["Body"].read() == b"new"


def test_abort_and_unknown_uploads(s3, bucket):
    upload_id, _ = upload(s3, bucket, "gone", [b"data"])
    s3.abort_multipart_upload(Bucket=bucket, Key="gone", UploadId=upload_id)
    for call in (
        lambda: s3.list_parts(Bucket=bucket, Key="gone", UploadId=upload_id),
        lambda: s3.upload_part(Bucket=bucket, Key="gone", UploadId=upload_id, PartNumber=1, Body=b"x"),
        lambda: s3.abort_multipart_upload(Bucket=bucket, Key="gone", UploadId=upload_id),
        lambda: complete(s3, bucket, "gone", upload_id, [{"PartNumber": 1, "ETag": "x"}]),
        lambda: s3.list_parts(Bucket=bucket, Key="gone", UploadId="no-such-id"),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert error_code(exc) == "NoSuchUpload"
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_list_multipart_uploads(s3, bucket):
    keys = ["a/1", "a/2", "b", "c/x/y", "c/z", "d"]
    ids = {}
    for key in keys + ["b"]:  # two uploads of "b", listed in initiation order
        ids.setdefault(key, []).append(s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])
    listed = s3.list_multipart_uploads(Bucket=bucket)
    assert [(u["Key"], u["UploadId"]) for u in listed["Uploads"]] == [
        (key, upload_id) for key in keys for upload_id in ids[key]]
    folded = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in folded["CommonPrefixes"]] == ["a/", "c/"]
    assert [u["Key"] for u in folded["Uploads"]] == ["b", "b", "d"]
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix="c/")["Uploads"]] == ["c/x/y", "c/z"]
    # pages of 2, following the markers, give everything once
    seen, markers = [], {}
    for _ in range(10):
        page = s3.list_multipart_uploads(Bucket=bucket, MaxUploads=2, **markers)
        seen += [u["UploadId"] for u in page.get("Uploads", [])]
        if not page["IsTruncated"]:
            break
        markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}
    assert seen == [upload_id for key in keys for upload_id in ids[key]]
    after_b = s3.list_multipart_uploads(Bucket=bucket, KeyMarker="b", UploadIdMarker=ids["b"][0])
    assert [u["UploadId"] for u in after_b["Uploads"]][:1] == [ids["b"][1]]
    for key, upload_ids in ids.items():
        for upload_id in upload_ids:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


def test_concurrent_parts(s3, bucket):
    parts = [os.urandom(5 * MiB + n) for n in range(8)]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="concurrent")["UploadId"]

    def send(number: int) -> dict:
        etag = s3.upload_part(Bucket=bucket, Key="concurrent", UploadId=upload_id, PartNumber=number,
                              Body=parts[number - 1])["ETag"]
        return {"PartNumber": number, "ETag": etag}

    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(send, range(1, len(parts) + 1)))
    complete(s3, bucket, "concurrent", upload_id, done)
    assert hashlib.sha256(s3.get_object(Bucket=bucket, Key="concurrent")["Body"].read()).digest() == \
        hashlib.sha256(b"".join(parts)).digest()


def test_upload_part_copy(s3, bucket):
    source = os.urandom(6 * MiB)
    s3.put_object(Bucket=bucket, Key="src", Body=source)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="copied")["UploadId"]
    first = s3.upload_part_copy(Bucket=bucket, Key="copied", UploadId=upload_id, PartNumber=1,
                                CopySource={"Bucket": bucket, "Key": "src"})["CopyPartResult"]
    second = s3.upload_part_copy(Bucket=bucket, Key="copied", UploadId=upload_id, PartNumber=2,
                                 CopySource={"Bucket": bucket, "Key": "src"},
                                 CopySourceRange="bytes=100-1099")["CopyPartResult"]
    assert second["ETag"] == f'"{hashlib.md5(source[100:1100]).hexdigest()}"'
    with pytest.raises(ClientError) as exc:
        s3.upload_part_copy(Bucket=bucket, Key="copied", UploadId=upload_id, PartNumber=3,
                            CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange=f"bytes=0-{6 * MiB}")
    assert error_code(exc) == "InvalidRange"
    complete(s3, bucket, "copied", upload_id, [{"PartNumber": 1, "ETag": first["ETag"]},
                                              {"PartNumber": 2, "ETag": second["ETag"]}])
    assert s3.get_object(Bucket=bucket, Key="copied")["Body"].read() == source + source[100:1100]


@pytest.mark.parametrize("checksum_type", ["COMPOSITE", "FULL_OBJECT"])
def test_checksums(s3, bucket, checksum_type):
    parts = [os.urandom(5 * MiB), os.urandom(1000)]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="sum", ChecksumAlgorithm="CRC32",
                                           ChecksumType=checksum_type)["UploadId"]
    done = []
    for number, body in enumerate(parts, 1):
        r = s3.upload_part(Bucket=bucket, Key="sum", UploadId=upload_id, PartNumber=number, Body=body,
                           ChecksumAlgorithm="CRC32")
        done.append({"PartNumber": number, "ETag": r["ETag"], "ChecksumCRC32": r["ChecksumCRC32"]})
    result = complete(s3, bucket, "sum", upload_id, done)
    crc = lambda data: base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()  # noqa: E731
    if checksum_type == "COMPOSITE":
        digests = b"".join(zlib.crc32(p).to_bytes(4, "big") for p in parts)
        expected = f"{crc(digests)}-2"
    else:
        expected = crc(b"".join(parts))
    assert result["ChecksumCRC32"] == expected and result["ChecksumType"] == checksum_type
    head = s3.head_object(Bucket=bucket, Key="sum", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == expected and head["ChecksumType"] == checksum_type
    got = s3.get_object(Bucket=bucket, Key="sum", ChecksumMode="ENABLED")  # botocore validates
    assert got["Body"].read() == b"".join(parts)


def test_boto3_transfer_20mib(s3, bucket, tmp_path):
    """upload_file/download_file with the default TransferConfig (multipart above 8 MiB)."""
    source, target = tmp_path / "source", tmp_path / "target"
    source.write_bytes(os.urandom(20 * MiB))
    s3.upload_file(str(source), bucket, "transfer", Config=TransferConfig())
    assert s3.head_object(Bucket=bucket, Key="transfer")["ETag"].endswith('-3"')
    s3.download_file(bucket, "transfer", str(target), Config=TransferConfig())
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
