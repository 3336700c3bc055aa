"""Moving object bytes: a request body into a file (PutObject, UploadPart), and a byte range of
one file into another (CopyObject, UploadPartCopy). Memory stays bounded whatever the size."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from cartridgefs.fs.filesystem import Ctx, FileSystem
from s3api import checksums
from s3api.chunked import BodyVerifier, VerifiedBody
from s3api.errors import S3Error

READ_CHUNK = 1 << 20
BODY_BATCH = 512 << 10  # bytes of request body verified and written at a time
INLINE_BODY = 64 << 10  # bodies up to this size are verified on the loop: a thread hop costs more


async def receive_body(req, ino: int, verifier: BodyVerifier, flush_every: int | None = None) -> VerifiedBody:
    """Stream the request body through `verifier` into the open file `ino` from offset 0, then
    verify it. The last bytes may still be buffered in the open file (publishing or committing
    the file stores them). `flush_every`: store the buffered bytes each time that many more
    arrived (default: the filesystem's own threshold).

    A large body uses two tasks, so the network and the hashing overlap: one gathers the
    arriving bytes into batches, the other verifies and hashes each batch in a worker thread
    (hashlib and zlib let go of the GIL) and writes it. At most a few batches are in memory at a
    time. A small body (declared length up to INLINE_BODY) is handled in one pass on the loop.
    """
    fs, ctx = req.fs, req.ctx
    offset = flushed = 0

    async def store(batch: bytes) -> None:
        nonlocal offset, flushed
        if len(batch) <= INLINE_BODY:
            payload = verifier.feed(batch)
        else:
            payload = await trio.to_thread.run_sync(verifier.feed, batch)
        if payload:
            await fs.write(ctx, ino, offset, payload)
            offset += len(payload)
            if flush_every is not None and offset - flushed >= flush_every:
                await fs.flush(ino)
                flushed = offset

    if fits_in_memory(verifier):
        async for chunk in req.chunks():
            await store(chunk)
    else:
        await _pipelined(req.chunks(), store)
    return verifier.finish()


def fits_in_memory(verifier: BodyVerifier) -> bool:
    """Whether the body declares a payload of at most INLINE_BODY bytes (the verifier refuses
    more than declared, so `read_body` holds at most that)."""
    return verifier.declared_size is not None and verifier.declared_size <= INLINE_BODY


async def read_body(req, verifier: BodyVerifier) -> tuple[bytes, VerifiedBody]:
    """A body that `fits_in_memory`, read whole through `verifier` on the loop and verified:
    its payload and what the verifier found."""
    parts = [verifier.feed(chunk) async for chunk in req.chunks()]
    return b"".join(parts), verifier.finish()


async def _pipelined(chunks: AsyncIterator[bytes], store: Callable[[bytes], Awaitable[None]]) -> None:
    """`store` batches of about BODY_BATCH bytes of `chunks` while the next batch arrives."""
    send, receive = trio.open_memory_channel(2)

    async def gather() -> None:
        async with send:
            batch: list[bytes] = []
            size = 0
            async for chunk in chunks:
                batch.append(chunk)
                size += len(chunk)
                if size >= BODY_BATCH:
                    await send.send(b"".join(batch))
                    batch, size = [], 0
            if batch:
                await send.send(b"".join(batch))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gather)
            async with receive:
                async for batch in receive:
                    await store(batch)
    except BaseExceptionGroup as group:  # one failing task: report its error as it is
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


class _Read:
    """One read of file bytes started now and awaited later (read-ahead). It runs as a system
    task because the async generator that wants it cannot hold a nursery across its yields."""

    def __init__(self, fs: FileSystem, ino: int, offset: int, size: int) -> None:
        self.done = trio.Event()
        self._data: bytes | None = None
        self._error: Exception | None = None
        trio.lowlevel.spawn_system_task(self._run, fs, ino, offset, size)

    async def _run(self, fs: FileSystem, ino: int, offset: int, size: int) -> None:
        try:
            self._data = await fs.read(ino, offset, size, streaming=True)
        except Exception as exc:  # handed to whoever awaits the result
            self._error = exc
        finally:
            self.done.set()

    async def result(self) -> bytes:
        await self.done.wait()
        if self._error is not None:
            raise self._error
        assert self._data is not None
        return self._data


async def read_file(fs: FileSystem, ino: int, first: int, length: int) -> AsyncIterator[bytes]:
    """The bytes [first, first+length) of file `ino`, READ_CHUNK at a time; the next chunk is
    read while the caller uses the current one (sends it, writes it). The file is held open
    meanwhile, so its content stays readable even if it is replaced or deleted."""
    await fs.open(ino)
    pending: _Read | None = None
    try:
        pos, end = first, first + length
        if pos < end:
            pending = _Read(fs, ino, pos, min(READ_CHUNK, end - pos))
        while pending is not None:
            data = await pending.result()
            if not data:
                raise S3Error("InternalError", "The object shrank while it was being read.")
            pos += len(data)
            pending = _Read(fs, ino, pos, min(READ_CHUNK, end - pos)) if pos < end else None
            yield data
    finally:
        with trio.CancelScope(shield=True):
            if pending is not None:
                await pending.done.wait()  # no read of a released handle
            await fs.release(ino)


async def response_body(fs: FileSystem, ino: int, first: int, length: int) -> bytes | AsyncIterator[bytes]:
    """A GET body: the bytes themselves when they fit in one read (one consistent read needs no
    open handle, no stream), else `read_file`'s stream."""
    if length > READ_CHUNK:
        return read_file(fs, ino, first, length)
    data = await fs.read(ino, first, length, streaming=True)
    if len(data) != length:
        raise S3Error("InternalError", "The object changed while it was being read; retry.")
    return data


async def copy_range(fs: FileSystem, ctx: Ctx, src: int, dst: int, first: int, length: int,
                     algorithms: set[str] | frozenset[str] = frozenset()) -> tuple[bytes, dict[str, str]]:
    """Copy bytes [first, first+length) of file `src` to the start of the open file `dst`
    (the last bytes may still be buffered in `dst`, as after `receive_body`). Returns their MD5
    and the checksums (base64) of `algorithms`."""
    md5 = hashlib.md5(usedforsecurity=False)
    hashers = {algorithm: checksums.make_hasher(algorithm) for algorithm in algorithms}
    pos = 0
    # aclosing: a failed write releases `src` at once, not when the generator is collected.
    async with contextlib.aclosing(read_file(fs, src, first, length)) as chunks:
        async for data in chunks:
            await fs.write(ctx, dst, pos, data)
            md5.update(data)
            for hasher in hashers.values():
                hasher.update(data)
            pos += len(data)
    return md5.digest(), {algorithm: hasher.b64() for algorithm, hasher in hashers.items()}
