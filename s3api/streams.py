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
BODY_BATCH = 1 << 20  # bytes of request body verified and written at a time


async def receive_body(req, ino: int, verifier: BodyVerifier, flush_every: int | None = None) -> VerifiedBody:
    """Stream the request body through `verifier` into the open file `ino` from offset 0, then
    verify it and store what is still buffered. `flush_every`: store the buffered bytes each
    time that many more arrived (default: the filesystem's own threshold).

    Two tasks, so the network and the hashing overlap: one gathers the arriving bytes into
    batches, the other verifies and hashes each batch in a worker thread (hashlib and zlib let
    go of the GIL) and writes it. At most a few batches are in memory at a time.
    """
    fs, ctx = req.fs, req.ctx
    send, receive = trio.open_memory_channel(2)

    async def gather() -> None:
        async with send:
            batch: list[bytes] = []
            size = 0
            async for chunk in req.chunks():
                batch.append(chunk)
                size += len(chunk)
                if size >= BODY_BATCH:
                    await send.send(b"".join(batch))
                    batch, size = [], 0
            if batch:
                await send.send(b"".join(batch))

    offset = flushed = 0
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gather)
            async with receive:
                async for batch in receive:
                    payload = await trio.to_thread.run_sync(verifier.feed, batch)
                    if payload:
                        await fs.write(ctx, ino, offset, payload)
                        offset += len(payload)
                        if flush_every is not None and offset - flushed >= flush_every:
                            await fs.flush(ino)
                            flushed = offset
    except BaseExceptionGroup as group:  # one failing task: report its error as it is
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
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
            data = await fs.read(src, first + pos, min(READ_CHUNK, length - pos), streaming=True)
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
