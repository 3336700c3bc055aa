"""Small PutObject bodies (up to INLINE_BODY) are stored with their name and metadata in one
transaction: the objects are the same as streamed ones, byte for byte and item for item, and a
refused or abandoned small PUT leaves nothing behind, not even reserved blocks."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib

import pytest
import trio
from botocore.exceptions import ClientError
from test_edges import cartridge_state, code, start_put

from cartridgefs import control
from cartridgefs.engine.fsck import run_fsck
from cartridgefs.engine.store import Engine
from cartridgefs.fs.filesystem import FileSystem
from s3api import mapping
from s3api.streams import INLINE_BODY

SIZES = [0, 1, 4096, INLINE_BODY, INLINE_BODY + 1, 300_000]  # both sides of the limit


def crc32(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def stored(cart, keys: list[str]) -> dict[str, tuple]:
    """Per key of bucket "bkt": (nlink, size, data_version, etag, xattrs) as stored, and fsck clean."""

    async def read(fs: FileSystem) -> dict[str, tuple]:
        out = {}
        for key in keys:
            inode = await fs.resolve([b"bkt", *key.encode().split(b"/")])
            out[key] = (inode.nlink, inode.size, inode.data_version, inode.etag, await fs.xattrs(inode.ino))
        return out

    engine = Engine.open(str(cart), readonly=True)
    try:
        assert {k: v for k, v in run_fsck(engine).items() if v} == {}
        return trio.run(read, FileSystem(engine))
    finally:
        engine.close()


def test_small_and_streamed_puts_store_the_same(own_server):
    server = own_server()
    s3 = server.client()
    s3.create_bucket(Bucket="bkt")
    bodies = {f"d/{size}": os.urandom(size) for size in SIZES}
    for key, body in bodies.items():
        s3.put_object(Bucket="bkt", Key=key, Body=b"old" * 30_000)  # replaced at once
        put = s3.put_object(Bucket="bkt", Key=key, Body=body, ContentType="text/x-test",
                            Metadata={"who": "me"})
        assert (put["ETag"], put["ChecksumCRC32"]) == (f'"{hashlib.md5(body).hexdigest()}"', crc32(body))
    for key, body in bodies.items():
        got = s3.get_object(Bucket="bkt", Key=key, ChecksumMode="ENABLED")
        assert hashlib.sha256(got["Body"].read()).digest() == hashlib.sha256(body).digest()
        assert (got["ContentType"], got["Metadata"]["who"], got["ChecksumCRC32"]) == ("text/x-test", "me", crc32(body))
    server.stop()
    for key, (nlink, size, version, etag, xattrs) in stored(server.cart, list(bodies)).items():
        body = bodies[key]
        assert (nlink, size, version, etag) == (1, len(body), 1 if body else 0, hashlib.md5(body).hexdigest())
        assert xattrs == {
            mapping.XATTR_PREFIX + b"content-type": b"text/x-test",
            mapping.META_PREFIX + b"who": b"me",
            mapping.CHECKSUM_PREFIX + b"CRC32": b"%d:%s" % (version, crc32(body).encode()),
        }


def test_refused_small_puts_leave_nothing(own_server):
    server = own_server()
    s3 = server.client()
    s3.create_bucket(Bucket="bkt")
    s3.put_object(Bucket="bkt", Key="dir/file", Body=b"x")
    server.stop()
    before = cartridge_state(server.cart)
    server = own_server()
    s3 = server.client()
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as exc:  # refused once the body is in, before any storing
        s3.put_object(Bucket="bkt", Key="new/sub/obj", Body=b"y" * 5000, ContentMD5=wrong_md5)
    assert code(exc) == "BadDigest"
    for size in (5000, INLINE_BODY + 1):  # refused in the transaction, the body's extent written
        with pytest.raises(ClientError) as exc:
            s3.put_object(Bucket="bkt", Key="dir", Body=os.urandom(size))
        assert code(exc) == "ExistingObjectIsDirectory"
    start_put(server, "/bkt/gone/obj", 1000, b"z" * 10).close()  # the client goes away mid-body
    assert control.request(str(server.cart), "info")["reserved_blocks"] == 0
    server.stop()
    assert cartridge_state(server.cart) == before  # same names, same blocks
