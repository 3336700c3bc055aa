"""Block pointers, sealing (xxh3-128 checksum or AES-256-GCM), extent codecs and sealed I/O.

Layouts are in docs/format.md ("Block pointers", "Superblocks"). Everything here is thread-safe
and leaves the heavy lifting (zstd, AES-GCM, xxhash) to C code that works on whole buffers.
"""

from __future__ import annotations

import hmac
import os
import struct
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

import xxhash
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cartridgefs.engine.blockdev import BLOCK_SIZE, BlockDevice
from cartridgefs.errors import (
    CartridgeError,
    FormatError,
    IntegrityError,
    InvalidArgument,
    TooLarge,
)

Buffer = bytes | bytearray | memoryview

KIND_SUPER = 0
KIND_NODE = 1
KIND_EXTENT = 2
KIND_BLOB = 3
KIND_NAMES = {
    KIND_SUPER: "superblock",
    KIND_NODE: "tree node",
    KIND_EXTENT: "data extent",
    KIND_BLOB: "value blob",
}

CODEC_RAW = 0
CODEC_ZSTD = 1

NONCE_SIZE = 12
SEAL_SIZE = 16
ZERO_NONCE = bytes(NONCE_SIZE)
NONCES_PER_EPOCH = 1 << 32

SUPER_MAGIC = b"CARTSUPB"

_PTR = struct.Struct("<QIQBBII12s16s")
PTR_SIZE = _PTR.size
_AD = struct.Struct("<16sQQB")  # UUID, block, birth, kind
_NONCE = struct.Struct("<QI")  # epoch, counter
_SUPER_HEAD = struct.Struct("<8sQ12sH")  # magic, generation, nonce, payload length
SUPER_MAX_PAYLOAD = BLOCK_SIZE - _SUPER_HEAD.size - SEAL_SIZE
_ZERO_SEAL = bytes(SEAL_SIZE)


@dataclass(frozen=True, slots=True)
class Ptr:
    """A block pointer: where an object lives and how to verify and decode it (58 bytes)."""

    block: int
    nblocks: int
    birth: int
    kind: int
    codec: int
    raw_len: int
    stored_len: int
    nonce: bytes
    seal: bytes

    def encode(self) -> bytes:
        """The 58-byte on-disk form."""
        return _PTR.pack(
            self.block,
            self.nblocks,
            self.birth,
            self.kind,
            self.codec,
            self.raw_len,
            self.stored_len,
            self.nonce,
            self.seal,
        )

    @classmethod
    def decode(cls, buf: Buffer, offset: int = 0) -> Ptr:
        """Parse the pointer at `offset` of `buf`."""
        return cls(*_PTR.unpack_from(buf, offset))


class Sealer(ABC):
    """Binds stored bytes to their place (UUID, block, birth, kind) and detects any change."""

    encrypted: bool

    def __init__(self, uuid: bytes) -> None:
        if len(uuid) != 16:
            raise InvalidArgument("the container UUID is 16 bytes")
        self.uuid = uuid

    @abstractmethod
    def _block_nonce(self) -> bytes:
        """The nonce for the next page or extent."""

    @abstractmethod
    def _super_nonce(self) -> bytes:
        """The nonce for a superblock."""

    @abstractmethod
    def _protect(self, data: Buffer, nonce: bytes, ad: bytes) -> tuple[Buffer, bytes]:
        """(stored bytes, seal) for `data`."""

    @abstractmethod
    def _protect_into(self, data: Buffer, nonce: bytes, ad: bytes, out: memoryview) -> bytes:
        """Write the stored bytes to out[:len(data)] (the next SEAL_SIZE bytes are scratch, left
        zero) and return the seal."""

    @abstractmethod
    def _open(self, stored: Buffer, nonce: bytes, ad: bytes, seal: bytes) -> bytes | None:
        """The encoded bytes, or None if the seal does not verify."""

    def _ad(self, block: int, birth: int, kind: int) -> bytes:
        return _AD.pack(self.uuid, block, birth, kind)

    def seal(
        self, data: Buffer, *, block: int, birth: int, kind: int
    ) -> tuple[Buffer, bytes, bytes]:
        """(stored bytes, nonce, seal) for encoded bytes that will live at `block`."""
        nonce = self._block_nonce()
        stored, seal = self._protect(data, nonce, self._ad(block, birth, kind))
        return stored, nonce, seal

    def seal_into(
        self, data: Buffer, out: memoryview, *, block: int, birth: int, kind: int
    ) -> tuple[bytes, bytes]:
        """Like seal(), but the stored bytes go to out[:len(data)], which needs SEAL_SIZE bytes
        of room after them (left zero): (nonce, seal). Saves a copy of big extents."""
        if len(out) < len(data) + SEAL_SIZE:
            raise InvalidArgument("seal_into needs len(data) + SEAL_SIZE bytes of room")
        nonce = self._block_nonce()
        return nonce, self._protect_into(data, nonce, self._ad(block, birth, kind), out)

    def unseal(
        self, stored: Buffer, *, block: int, birth: int, kind: int, nonce: bytes, seal: bytes
    ) -> bytes:
        """The encoded bytes; IntegrityError if they are damaged, altered, stale or misplaced."""
        data = self._open(stored, nonce, self._ad(block, birth, kind), seal)
        if data is None:
            name = KIND_NAMES.get(kind, f"kind {kind}")
            raise IntegrityError(
                f"{name} at block {block} (generation {birth}) failed verification: "
                "damaged, altered or not the object the pointer expects"
            )
        return data

    def seal_super(self, payload: Buffer, *, block: int, generation: int) -> bytes:
        """The complete 4096-byte superblock for slot `block` (layout in docs/format.md)."""
        if len(payload) > SUPER_MAX_PAYLOAD:
            raise TooLarge(f"superblock payload of {len(payload)} bytes > {SUPER_MAX_PAYLOAD}")
        nonce = self._super_nonce()
        head = _SUPER_HEAD.pack(SUPER_MAGIC, generation, nonce, len(payload))
        stored, seal = self._protect(payload, nonce, self._ad(block, generation, KIND_SUPER) + head)
        return b"".join((head, stored, seal)).ljust(BLOCK_SIZE, b"\0")

    def unseal_super(self, raw: Buffer, *, block: int) -> tuple[int, bytes]:
        """(generation, payload) of a superblock; IntegrityError if the slot holds no valid one."""
        if len(raw) != BLOCK_SIZE:
            raise InvalidArgument(f"a superblock is {BLOCK_SIZE} bytes, not {len(raw)}")
        magic, generation, nonce, length = _SUPER_HEAD.unpack_from(raw)
        if magic != SUPER_MAGIC:
            raise IntegrityError(f"superblock slot at block {block} holds no superblock")
        if length > SUPER_MAX_PAYLOAD:
            raise IntegrityError(f"superblock at block {block}: impossible length {length}")
        view = memoryview(raw)
        start, end = _SUPER_HEAD.size, _SUPER_HEAD.size + length
        ad = self._ad(block, generation, KIND_SUPER) + bytes(view[:start])
        payload = self._open(view[start:end], nonce, ad, bytes(view[end : end + SEAL_SIZE]))
        if payload is None:
            raise IntegrityError(
                f"superblock at block {block} (generation {generation}) failed verification"
            )
        return generation, payload


class ChecksumSealer(Sealer):
    """Not encrypted: seal = xxh3-128(AD ‖ stored), stored = encoded, nonce zero."""

    encrypted = False

    def _block_nonce(self) -> bytes:
        return ZERO_NONCE

    def _super_nonce(self) -> bytes:
        return ZERO_NONCE

    @staticmethod
    def _digest(data: Buffer, ad: bytes) -> bytes:
        # Streaming avoids concatenating AD and a possibly large buffer.
        hasher = xxhash.xxh3_128(ad)
        hasher.update(data)
        return hasher.digest()

    def _protect(self, data: Buffer, nonce: bytes, ad: bytes) -> tuple[Buffer, bytes]:
        return data, self._digest(data, ad)  # stored as they are: no copy of a large extent

    def _protect_into(self, data: Buffer, nonce: bytes, ad: bytes, out: memoryview) -> bytes:
        out[: len(data)] = data
        return self._digest(data, ad)

    def _open(self, stored: Buffer, nonce: bytes, ad: bytes, seal: bytes) -> bytes | None:
        # The nonce is not covered by the checksum, so it must be exactly the zero it always is.
        if nonce != ZERO_NONCE or not hmac.compare_digest(self._digest(stored, ad), seal):
            return None
        return bytes(stored)


class AeadSealer(Sealer):
    """Encrypted: AES-256-GCM with nonce epoch ‖ counter; the epoch is durable before use."""

    encrypted = True

    def __init__(self, uuid: bytes, data_key: bytes, epoch: int) -> None:
        super().__init__(uuid)
        if len(data_key) != 32:
            raise InvalidArgument("the data key is 32 bytes")
        if not 0 <= epoch < 1 << 64:
            raise InvalidArgument(f"nonce epoch {epoch} out of range")
        self.epoch = epoch
        self._aead = AESGCM(data_key)
        self._counter = 0
        self._lock = threading.Lock()

    @property
    def nonces_left(self) -> int:
        """How many more pages or extents this epoch can encrypt."""
        return NONCES_PER_EPOCH - self._counter

    def _block_nonce(self) -> bytes:
        with self._lock:
            counter = self._counter
            if counter >= NONCES_PER_EPOCH:
                raise CartridgeError(f"nonce epoch {self.epoch} is exhausted: commit a new epoch")
            self._counter = counter + 1
        return _NONCE.pack(self.epoch, counter)

    def _super_nonce(self) -> bytes:
        # The superblock is what makes a new epoch durable, so it cannot use an epoch nonce.
        return os.urandom(NONCE_SIZE)

    def _protect(self, data: Buffer, nonce: bytes, ad: bytes) -> tuple[bytes, bytes]:
        size = len(data)
        out = _scratch(size + SEAL_SIZE)
        self._aead.encrypt_into(nonce, data, ad, out[: size + SEAL_SIZE])
        return bytes(out[:size]), bytes(out[size : size + SEAL_SIZE])

    def _protect_into(self, data: Buffer, nonce: bytes, ad: bytes, out: memoryview) -> bytes:
        size = len(data)
        self._aead.encrypt_into(nonce, data, ad, out[: size + SEAL_SIZE])
        seal = bytes(out[size : size + SEAL_SIZE])
        out[size : size + SEAL_SIZE] = _ZERO_SEAL
        return seal

    def _open(self, stored: Buffer, nonce: bytes, ad: bytes, seal: bytes) -> bytes | None:
        # AES-GCM wants ciphertext ‖ tag in one buffer.
        size = len(stored)
        sealed = _scratch(size + SEAL_SIZE)[: size + SEAL_SIZE]
        sealed[:size] = stored
        sealed[size:] = seal
        try:
            return self._aead.decrypt(nonce, sealed, ad)
        except InvalidTag:
            return None


# Per-thread state: zstd compressor and decompressor objects are not thread-safe, and a reused
# scratch buffer keeps AES-GCM from allocating several fresh megabyte buffers per extent, which
# glibc's malloc serves from freshly faulted pages (about 10x slower than the cipher itself).
_local = threading.local()
_SCRATCH_MAX = 4 << 20


def _scratch(size: int) -> memoryview:
    """A buffer of at least `size` bytes, reused by this thread (unless unusually large)."""
    buf = _local.__dict__.get("scratch")
    if buf is None or len(buf) < size:
        buf = bytearray(size)
        if size <= _SCRATCH_MAX:
            _local.scratch = buf
    return memoryview(buf)


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = _local.__dict__.setdefault("compressors", {})
    if level not in cache:
        # No zstd checksum: the seal already covers every byte.
        cache[level] = zstandard.ZstdCompressor(level=level, write_checksum=False)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    if "decompressor" not in _local.__dict__:
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor


SAMPLE = 4096  # bytes of each of the three samples `_compressible` looks at
SAMPLE_LEVEL = -1  # zstd's fast mode: ~5 µs for the samples, a tenth of compressing 128 KiB


def _compressible(data: Buffer) -> bool:
    """False for data that does not compress at all (compressed audio or video, archives,
    encrypted files), judged from three samples (start, middle, end) for a tenth of the cost
    of compressing it whole. Data whose samples do not compress is stored raw even if other
    parts would: a small loss of compression for a large saving of CPU."""
    n = len(data)
    if n <= 4 * SAMPLE:
        return True
    view = memoryview(data)
    sample = b"".join((view[:SAMPLE], view[n // 2 : n // 2 + SAMPLE], view[n - SAMPLE :]))
    return len(_compressor(SAMPLE_LEVEL).compress(sample)) * 100 < len(sample) * 99


def encode_extent(data: Buffer, compress: bool, level: int = 3) -> tuple[int, Buffer]:
    """(codec, encoded): the zstd frame if compression saves at least 3 %, else `data` itself."""
    if compress and data and _compressible(data):
        frame = _compressor(level).compress(data)
        if len(frame) * 100 <= len(data) * 97:
            return CODEC_ZSTD, frame
    return CODEC_RAW, data


def decode_extent(codec: int, encoded: Buffer, raw_len: int) -> bytes:
    """The decoded bytes; IntegrityError unless they are exactly `raw_len` long."""
    if codec == CODEC_RAW:
        data = bytes(encoded)
    elif codec == CODEC_ZSTD:
        try:
            # Check the declared size first, so a bad frame cannot make us allocate gigabytes.
            if zstandard.frame_content_size(encoded) != raw_len:
                raise IntegrityError(f"zstd frame does not declare {raw_len} bytes")
            data = _decompressor().decompress(encoded, allow_extra_data=False)
        except zstandard.ZstdError as err:
            raise IntegrityError(f"zstd frame cannot be decoded: {err}") from None
    else:
        raise FormatError(f"unknown codec {codec}")
    if len(data) != raw_len:
        raise IntegrityError(f"decoded {len(data)} bytes where {raw_len} were expected")
    return data


def write_sealed(
    dev: BlockDevice,
    sealer: Sealer,
    data: Buffer,
    *,
    block: int,
    nblocks: int,
    birth: int,
    kind: int,
    compress: bool,
) -> Ptr:
    """Encode, seal and write `data` at `block` (at most `nblocks` blocks).

    The returned pointer's nblocks is what was actually written, which compression can make
    smaller than `nblocks`: the caller may free the rest.
    """
    codec, encoded = encode_extent(data, compress)
    size = len(encoded)
    used = -(-size // BLOCK_SIZE)
    if used > nblocks:
        raise InvalidArgument(f"{size} bytes do not fit in {nblocks} blocks")
    buf = memoryview(bytearray(used * BLOCK_SIZE + SEAL_SIZE))
    nonce, seal = sealer.seal_into(encoded, buf, block=block, birth=birth, kind=kind)
    dev.write(block, buf[: used * BLOCK_SIZE])
    return Ptr(block, used, birth, kind, codec, len(data), size, nonce, seal)


def read_sealed(dev: BlockDevice, sealer: Sealer, ptr: Ptr) -> bytes:
    """Read, verify and decode the object `ptr` points to."""
    raw = dev.read(ptr.block, ptr.nblocks)
    if ptr.stored_len > len(raw):
        raise IntegrityError(
            f"pointer to block {ptr.block} claims {ptr.stored_len} bytes in {ptr.nblocks} blocks"
        )
    stored = raw if ptr.stored_len == len(raw) else memoryview(raw)[: ptr.stored_len]
    encoded = sealer.unseal(
        stored, block=ptr.block, birth=ptr.birth, kind=ptr.kind, nonce=ptr.nonce, seal=ptr.seal
    )
    return decode_extent(ptr.codec, encoded, ptr.raw_len)
