"""Protocol edges: aborted and stalled uploads, virtual-hosted style, url-encoded listings,
conditional PUT, oversized heads, and requests that must leave no trace in the cartridge."""

from __future__ import annotations

import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import quote

import pytest
import trio
from botocore.exceptions import ClientError

from cartridgefs.engine.fsck import run_fsck
from cartridgefs.engine.store import Engine
from cartridgefs.fs.filesystem import FileSystem
from cartridgefs.fs.fsck import FS_CHECKS
from cartridgefs.fs.items import ROOT_INO

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
MiB = 1 << 20


def code(exc: pytest.ExceptionInfo) -> str:
    return exc.value.response["Error"]["Code"]


def cartridge_state(cart: Path) -> tuple[int, list[bytes]]:
    """(used blocks, every path) of a cartridge no server has open."""

    async def walk(fs: FileSystem, ino: int, base: bytes, out: list[bytes]) -> None:
        for name, entry in await fs.listdir_sorted(ino, b"", 10_000):
            out.append(base + name)
            if (await fs.getattr(entry.ino)).is_dir:
                await walk(fs, entry.ino, base + name + b"/", out)

    engine = Engine.open(str(cart), readonly=True)
    try:
        paths: list[bytes] = []
        trio.run(walk, FileSystem(engine), ROOT_INO, b"/", paths)
        return engine.info()["used_blocks"], paths
    finally:
        engine.close()


def start_put(server, path: str, length: int, first: bytes) -> socket.socket:
    """A signed PUT whose head declares `length` body bytes, of which only `first` are sent."""
    url = server.url(path)
    headers = server.sign("PUT", url, {"Content-Length": str(length)},
                          payload_hash="UNSIGNED-PAYLOAD")
    head = f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(head.encode() + first)
    return sock


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 response (head and Content-Length body) from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data or len(data) < _response_length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _response_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(head) + 4


@pytest.fixture
def seeded(own_server):
    """An own server's cartridge with bucket "bkt" holding "keep", and its state after a stop."""
    server = own_server()
    s3 = server.client()
    s3.create_bucket(Bucket="bkt")
    s3.put_object(Bucket="bkt", Key="keep", Body=b"x")
    server.stop()
    return server.cart, cartridge_state(server.cart)


def test_disconnect_mid_put_leaves_nothing(own_server, seeded):
    cart, before = seeded
    server = own_server()
    sock = start_put(server, "/bkt/dir/sub/big", 10 * MiB, b"\0" * MiB)
    sock.close()
    s3 = server.client()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the server notices the disconnect and cleans up
        with pytest.raises(ClientError):
            s3.head_object(Bucket="bkt", Key="dir/sub/big")
        if [o["Key"] for o in s3.list_objects_v2(Bucket="bkt", Delimiter="/").get("Contents", [])] == ["keep"]:
            break
        time.sleep(0.1)
    assert "CommonPrefixes" not in s3.list_objects_v2(Bucket="bkt", Delimiter="/")
    server.stop()
    assert cartridge_state(cart) == before  # same names, and every block freed again


def test_disconnect_mid_get_of_a_deleted_object_frees_it(own_server, seeded):
    """A GET holds the object open (it reads ahead); a client that goes away mid-way, after the
    key was deleted, leaves no handle behind: every block of the object is freed."""
    cart, before = seeded
    server = own_server()
    s3 = server.client()
    s3.put_object(Bucket="bkt", Key="gone", Body=b"\1" * (8 * MiB))
    url = server.url("/bkt/gone")
    headers = server.sign("GET", url, {}, payload_hash="UNSIGNED-PAYLOAD")
    head = f"GET /bkt/gone HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode())
        received = sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200")
        s3.delete_object(Bucket="bkt", Key="gone")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and s3.list_objects_v2(Bucket="bkt").get("KeyCount") != 1:
        time.sleep(0.1)
    time.sleep(0.5)  # the server notices the closed connection and ends the stream
    server.stop()
    assert cartridge_state(cart) == before


def test_invalid_names_leave_no_trace(own_server, seeded):
    cart, before = seeded
    server = own_server()
    for bucket in ("Bad_Name", "ab", "a" * 64, "-lead", "192.168.1.1", "a..b"):
        status, _, body = server.request("PUT", server.url(f"/{bucket}"))
        assert (status, b"InvalidBucketName" in body) == (400, True), bucket
        status, _, body = server.request("PUT", server.url(f"/{bucket}/key"), b"data")
        assert status == 400, bucket
    for key in ("x//y", "x/./y", "x/../y", "x/%00/y", "x/" + "k" * 256 + "/y", "x/" + "k/" * 520):
        status, _, body = server.request("PUT", server.url(f"/bkt/{quote(key, safe='/%')}"), b"data")
        assert status == 400 and (b"InvalidArgument" in body or b"KeyTooLong" in body), key
    server.stop()
    assert cartridge_state(cart) == before


def test_stalled_body_times_out(own_server):
    server = own_server("--body-timeout", "1")
    server.client().create_bucket(Bucket="bkt")
    sock = start_put(server, "/bkt/stalled", 100, b"0123456789")
    with sock:
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 400") and b"<Code>RequestTimeout</Code>" in response
    with pytest.raises(ClientError):
        server.client().head_object(Bucket="bkt", Key="stalled")


def fetch(server, url: str, signed: bool = True) -> tuple[int, bytes]:
    """(status, body) of a GET of `url` (sent to `server` whatever its host)."""
    status, _, body = (server.request if signed else server.send)("GET", url)
    return status, body


def test_virtual_hosted_style(own_server):
    server = own_server("--domain", "s3.local.test")
    bucket_url = server.url("", host="vhost.s3.local.test")
    assert server.request("PUT", bucket_url + "/")[0] == 200
    assert server.request("PUT", bucket_url + "/a%20b/c", b"virtual")[0] == 200
    assert fetch(server, bucket_url + "/a%20b/c") == (200, b"virtual")
    status, _, listing = server.request("GET", bucket_url + "/?list-type=2")
    assert status == 200 and b"<Key>a b/c</Key>" in listing
    assert fetch(server, server.url("/vhost/a%20b/c")) == (200, b"virtual")  # path style still works
    for config in ({}, {"signature_version": "s3v4"}):  # SigV2 (the default) and SigV4
        presigner = server.client("s3.local.test", s3={"addressing_style": "virtual"}, **config)
        url = presigner.generate_presigned_url("get_object", Params={"Bucket": "vhost", "Key": "a b/c"})
        assert url.startswith("http://vhost.s3.local.test:")
        assert fetch(server, url, signed=False) == (200, b"virtual")


def test_url_encoded_v1_listing(server, s3, bucket):
    keys = ["sp ace/ü+é.txt", "sp ace/x", "plain", "tab\tand%percent", "日本/語"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"k")
    # boto3 asks for encoding-type=url itself and decodes the answer
    listed = s3.list_objects(Bucket=bucket)
    assert listed["EncodingType"] == "url"
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(keys)
    rolled = s3.list_objects(Bucket=bucket, Delimiter="/", Prefix="", MaxKeys=2)
    assert [p["Prefix"] for p in rolled.get("CommonPrefixes", [])] == ["sp ace/"]
    page = s3.list_objects(Bucket=bucket, Delimiter="/", Marker=rolled["NextMarker"])
    assert [o["Key"] for o in page["Contents"]] == ["tab\tand%percent"]
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["日本/"]
    # on the wire every key, prefix and marker is percent-encoded
    status, _, body = server.request(
        "GET", server.url(f"/{bucket}?encoding-type=url&delimiter=%2F&marker=plain"))
    assert status == 200
    root = ET.fromstring(body)
    assert [k.text for k in root.iter(NS + "Key")] == ["tab%09and%25percent"]
    assert [p.text for p in root.iter(NS + "Prefix")][1:] == ["sp%20ace/", "%E6%97%A5%E6%9C%AC/"]
    assert root.findtext(NS + "Marker") == "plain"


def test_put_if_none_match(s3, bucket):
    s3.put_object(Bucket=bucket, Key="once", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="once", Body=b"second", IfNoneMatch="*")
    assert code(exc) == "PreconditionFailed"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket=bucket, Key="once")["Body"].read() == b"first"


@pytest.mark.parametrize("size", [3 << 10, 20 << 10, 100 << 10])
def test_oversized_headers(server, s3, bucket, size):
    url = server.url(f"/{bucket}/big-head")
    headers = server.sign("PUT", url, {"x-amz-meta-big": "v" * size}, b"body")
    status, _, body = server.send("PUT", url, b"body", headers)
    expected = b"MetadataTooLarge" if size < 16 << 10 else b"RequestHeaderSectionTooLarge"
    assert status == 400 and expected in body
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="big-head")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_directory_marker_on_implicit_directory(s3, bucket):
    def listed() -> list[str]:
        return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]

    s3.put_object(Bucket=bucket, Key="d/obj", Body=b"x")  # "d" is implicit
    s3.put_object(Bucket=bucket, Key="d/", Body=b"")  # ... and now explicit
    s3.delete_object(Bucket=bucket, Key="d/obj")
    assert listed() == ["d/"]  # it stayed, as the marker object
    s3.put_object(Bucket=bucket, Key="d/obj", Body=b"x")
    s3.delete_object(Bucket=bucket, Key="d/")  # only the marker goes: "d" is implicit again
    assert listed() == ["d/obj"]
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="d/")
    s3.delete_object(Bucket=bucket, Key="d/obj")
    assert listed() == []  # and went away with its last object
    assert "CommonPrefixes" not in s3.list_objects_v2(Bucket=bucket, Delimiter="/")


def test_delete_bucket_takes_its_unfinished_uploads(own_server, seeded):
    """As on AWS, DeleteBucket succeeds with unfinished multipart uploads and takes them along:
    every block of their parts is freed, and a new bucket of that name has no uploads."""
    cart, before = seeded
    server = own_server()
    s3 = server.client()
    s3.create_bucket(Bucket="gone")
    upload_id = s3.create_multipart_upload(Bucket="gone", Key="big")["UploadId"]
    for number in (1, 2):
        s3.upload_part(Bucket="gone", Key="big", UploadId=upload_id, PartNumber=number,
                       Body=bytes([number]) * 5 * MiB)
    s3.put_object(Bucket="gone", Key="obj", Body=b"x")
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket="gone")
    assert code(exc) == "BucketNotEmpty"  # objects still count
    s3.delete_object(Bucket="gone", Key="obj")
    s3.delete_bucket(Bucket="gone")
    s3.create_bucket(Bucket="gone")
    assert s3.list_multipart_uploads(Bucket="gone").get("Uploads", []) == []
    s3.delete_bucket(Bucket="gone")
    server.stop()
    assert cartridge_state(cart) == before
    engine = Engine.open(str(cart), readonly=True)
    try:
        assert {k: v for k, v in run_fsck(engine, extra=FS_CHECKS).items() if v} == {}
    finally:
        engine.close()
