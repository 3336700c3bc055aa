"""Moving object bytes: a request body into a file (PutObject, UploadPart), and a byte range of
one file into another (CopyObject, UploadPartCopy). Memory stays bounded whatever the size."""

from __future__ import annotations

import hashlib

import trio

from cartridgefs.fs.filesystem import Ctx, FileSystem
from s3api import checksums
from s3api.chunked import BodyVerifier, VerifiedBody
from s3api.errors import S3Error

READ_CHUNK = 1 << 20


async def receive_body(req, ino: int, verifier: BodyVerifier, flush_every: int | None = None) -> VerifiedBody:
    """Stream the request body through `verifier` into the open file `ino` from offset 0, then
    verify it and store what is still buffered. `flush_every`: store the buffered bytes each
    time that many more arrived (default: the filesystem's own threshold)."""
    fs, ctx = req.fs, req.ctx
    offset = flushed = 0
    async for chunk in req.chunks():
        payload = verifier.feed(chunk)
        if payload:
            await fs.write(ctx, ino, offset, payload)
            offset += len(payload)
            if flush_every is not None and offset - flushed >= flush_every:
                await fs.flush(ino)
                flushed = offset
    body = verifier.finish()
    await fs.flush(ino)
    return body


async def copy_range(fs: FileSystem, ctx: Ctx, src: int, dst: int, first: int, length: int,
                     algorithms: set[str] | frozenset[str] = frozenset()) -> tuple[bytes, dict[str, str]]:
    """Copy bytes [first, first+length) of file `src` to the start of the open file `dst`.
    Returns their MD5 and the checksums (base64) of `algorithms`."""
    md5 = hashlib.md5(usedforsecurity=False)
    hashers = {algorithm: checksums.make_hasher(algorithm) for algorithm in algorithms}
    await fs.open(src)
    try:
        pos = 0
        while pos < length:
            data = await fs.read(src, first + pos, min(READ_CHUNK, length - pos))
            if not data:
                raise S3Error("InternalError", "The source changed during the copy.")
            await fs.write(ctx, dst, pos, data)
            md5.update(data)
            for hasher in hashers.values():
                hasher.update(data)
            pos += len(data)
    finally:
        with trio.CancelScope(shield=True):
            await fs.release(src)
    await fs.flush(dst)
    return md5.digest(), {algorithm: hasher.b64() for algorithm, hasher in hashers.items()}
