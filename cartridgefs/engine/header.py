"""The cartridge header (blocks 0 and N-1): geometry, features, S3 fuses and the wrapped key."""

from __future__ import annotations

import hmac
import logging
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

import xxhash

from cartridgefs.engine.blockdev import BLOCK_SIZE, BlockDevice
from cartridgefs.engine.keys import (
    KDF_NONE,
    KDF_SCRYPT,
    SALT_SIZE,
    WRAP_NONCE_SIZE,
    WRAPPED_KEY_SIZE,
)
from cartridgefs.errors import FormatError, IntegrityError, InvalidArgument

log = logging.getLogger("cartridge.engine")

MAGIC = b"CARTRIDG"
FORMAT_VERSION = 1
# Header, two superblock slots, backup header.
MIN_BLOCKS = 4
UUID_SIZE = 16

FUSES_SIZE = 256
MAC_OFFSET = 4056
CHECKSUM_OFFSET = 4088

_FIXED = struct.Struct("<8sIIQI4xQ256s16sHBBB3x32s12s48s")
_FUSES = struct.Struct("<BBB")
_CHECKSUM = struct.Struct("<Q")
_ZERO_FUSE_RESERVED = bytes(FUSES_SIZE - _FUSES.size)
# Byte ranges the format reserves (must be zero): 28-31, 317-319, 412-4055.
_RESERVED = ((28, 32), (317, 320), (_FIXED.size, MAC_OFFSET))


class Features(IntFlag):
    """Feature flags (header bytes 24-27)."""

    ENCRYPTED = 1
    COMPRESSED = 2


class VersioningMode(IntEnum):
    NONE = 0
    SNAPSHOT_BACKED = 1


class AclMode(IntEnum):
    IGNORE = 0
    RECORD = 1
    ENFORCE = 2


class SseMode(IntEnum):
    IGNORE = 0
    RECORD = 1
    TRANSPARENT = 2


_KNOWN_FLAGS = int(Features.ENCRYPTED | Features.COMPRESSED)
_FUSE_TYPES = {
    "s3_versioning_mode": VersioningMode,
    "s3_acl_mode": AclMode,
    "s3_sse_mode": SseMode,
}


@dataclass
class Fuses:
    """S3 feature fuses (header bytes 40-295): interpreted by the S3 layer, stored by the engine."""

    s3_versioning_mode: VersioningMode = VersioningMode.NONE
    s3_acl_mode: AclMode = AclMode.IGNORE
    s3_sse_mode: SseMode = SseMode.IGNORE

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        """Coerce each fuse to its enum; InvalidArgument for a value outside it."""
        for name, enum in _FUSE_TYPES.items():
            value = getattr(self, name)
            try:
                setattr(self, name, enum(value))
            except ValueError:
                allowed = ", ".join(f"{m.value} ({m.name})" for m in enum)
                raise InvalidArgument(f"{name}={value!r}: must be one of {allowed}") from None

    def encode(self) -> bytes:
        """The 256-byte fuse area."""
        # Re-check: the dataclass is mutable, and nothing invalid may reach the disk.
        self._check()
        values = _FUSES.pack(self.s3_versioning_mode, self.s3_acl_mode, self.s3_sse_mode)
        return values.ljust(FUSES_SIZE, b"\0")

    @classmethod
    def decode(cls, raw: bytes) -> Fuses:
        """Parse the 256-byte fuse area; FormatError for unknown values."""
        if raw[_FUSES.size : FUSES_SIZE] != _ZERO_FUSE_RESERVED:
            raise FormatError("reserved fuse bytes are set (written by a newer version?)")
        try:
            return cls(*_FUSES.unpack_from(raw))
        except InvalidArgument as err:
            raise FormatError(f"unknown fuse value: {err}") from None


@dataclass
class Header:
    """The decoded header; kdf/wrap fields stay zero for a cartridge that is not encrypted."""

    version: int
    block_size: int
    nblocks: int
    flags: Features
    created_ns: int
    fuses: Fuses
    uuid: bytes
    kdf_id: int = KDF_NONE
    log2n: int = 0
    r: int = 0
    p: int = 0
    salt: bytes = bytes(SALT_SIZE)
    wrap_nonce: bytes = bytes(WRAP_NONCE_SIZE)
    wrapped_key: bytes = bytes(WRAPPED_KEY_SIZE)

    def __post_init__(self) -> None:
        self._check()

    @property
    def encrypted(self) -> bool:
        return Features.ENCRYPTED in self.flags

    @property
    def compressed(self) -> bool:
        return Features.COMPRESSED in self.flags

    def _check(self) -> None:
        """InvalidArgument unless the header is one this version can write."""
        if self.version != FORMAT_VERSION:
            raise InvalidArgument(f"format version {self.version} not supported")
        if self.block_size != BLOCK_SIZE:
            raise InvalidArgument(f"block size {self.block_size} not supported")
        if self.nblocks < MIN_BLOCKS:
            raise InvalidArgument(f"a cartridge needs at least {MIN_BLOCKS} blocks")
        if int(self.flags) & ~_KNOWN_FLAGS:
            raise InvalidArgument(f"unknown feature flags {int(self.flags):#x}")
        self.flags = Features(self.flags)
        if not isinstance(self.fuses, Fuses):
            raise InvalidArgument("fuses must be a Fuses")
        for name, size in (
            ("uuid", UUID_SIZE),
            ("salt", SALT_SIZE),
            ("wrap_nonce", WRAP_NONCE_SIZE),
            ("wrapped_key", WRAPPED_KEY_SIZE),
        ):
            if len(getattr(self, name)) != size:
                raise InvalidArgument(f"{name} must be {size} bytes")
        expected_kdf = KDF_SCRYPT if self.encrypted else KDF_NONE
        if self.kdf_id != expected_kdf:
            raise InvalidArgument(f"kdf id {self.kdf_id} does not match feature flags")

    def encode(self, mac_key: bytes | None) -> bytes:
        """The 4096-byte header block; encrypted headers must be MACed, others must not."""
        self._check()
        if self.encrypted != (mac_key is not None):
            raise InvalidArgument("an encrypted header needs a MAC key, a plain one none")
        buf = bytearray(BLOCK_SIZE)
        try:
            _FIXED.pack_into(
                buf,
                0,
                MAGIC,
                self.version,
                self.block_size,
                self.nblocks,
                self.flags,
                self.created_ns,
                self.fuses.encode(),
                self.uuid,
                self.kdf_id,
                self.log2n,
                self.r,
                self.p,
                self.salt,
                self.wrap_nonce,
                self.wrapped_key,
            )
        except struct.error as err:
            raise InvalidArgument(f"header field out of range: {err}") from None
        view = memoryview(buf)
        if mac_key is not None:
            buf[MAC_OFFSET:CHECKSUM_OFFSET] = hmac.digest(mac_key, view[:MAC_OFFSET], "sha256")
        _CHECKSUM.pack_into(buf, CHECKSUM_OFFSET, xxhash.xxh3_64_intdigest(view[:CHECKSUM_OFFSET]))
        return bytes(buf)

    @classmethod
    def decode(cls, raw: bytes) -> Header:
        """Parse a header block: FormatError if not one we know, IntegrityError if damaged."""
        if len(raw) != BLOCK_SIZE:
            raise InvalidArgument(f"a header is {BLOCK_SIZE} bytes, not {len(raw)}")
        if raw[:8] != MAGIC:
            raise FormatError("not a cartridge file")
        (version,) = struct.unpack_from("<I", raw, 8)
        if version != FORMAT_VERSION:
            raise FormatError(f"format version {version} not supported")
        view = memoryview(raw)
        (checksum,) = _CHECKSUM.unpack_from(raw, CHECKSUM_OFFSET)
        if xxhash.xxh3_64_intdigest(view[:CHECKSUM_OFFSET]) != checksum:
            raise IntegrityError("header checksum mismatch (torn or damaged header)")
        if any(raw[start:end] != bytes(end - start) for start, end in _RESERVED):
            raise FormatError("reserved header bytes are set (written by a newer version?)")
        fields = list(_FIXED.unpack_from(raw))
        fields[6] = Fuses.decode(fields[6])
        try:
            header = cls(*fields[1:])
        except InvalidArgument as err:
            raise FormatError(f"invalid header: {err}") from None
        if not header.encrypted and raw[MAC_OFFSET:CHECKSUM_OFFSET] != bytes(32):
            raise FormatError("header of a plain cartridge carries a MAC")
        return header

    @staticmethod
    def verify_mac(raw: bytes, mac_key: bytes) -> None:
        """IntegrityError unless the header block's HMAC matches (encrypted cartridges)."""
        view = memoryview(raw)
        expected = hmac.digest(mac_key, view[:MAC_OFFSET], "sha256")
        if not hmac.compare_digest(expected, view[MAC_OFFSET:CHECKSUM_OFFSET]):
            raise IntegrityError("header authentication failed: the header was altered")


verify_mac = Header.verify_mac


def write_header(dev: BlockDevice, header: Header, mac_key: bytes | None) -> None:
    """Write the backup, sync, then the primary, sync: a torn write always leaves one good copy."""
    if header.nblocks != dev.nblocks:
        raise InvalidArgument(f"header says {header.nblocks} blocks, device has {dev.nblocks}")
    raw = header.encode(mac_key)
    dev.write(dev.nblocks - 1, raw)
    dev.sync()
    dev.write(0, raw)
    dev.sync()


def read_header(dev: BlockDevice) -> tuple[Header, bytes]:
    """The primary header if valid, else the backup; with the raw block for verify_mac."""
    try:
        return _read_copy(dev, 0)
    except (FormatError, IntegrityError) as err:
        primary_error = err
    backup = dev.nblocks - 1
    try:
        header, raw = _read_copy(dev, backup)
    except (FormatError, IntegrityError) as err:
        if isinstance(primary_error, FormatError) and isinstance(err, FormatError):
            raise primary_error from None
        raise IntegrityError(
            f"both header copies are unusable: block 0: {primary_error}; block {backup}: {err}"
        ) from None
    log.warning("primary header unusable (%s); using the backup at block %d", primary_error, backup)
    return header, raw


def _read_copy(dev: BlockDevice, block: int) -> tuple[Header, bytes]:
    """Decode one header copy and check it describes this device."""
    raw = dev.read(block, 1)
    header = Header.decode(raw)
    if header.nblocks != dev.nblocks:
        raise IntegrityError(
            f"header says {header.nblocks} blocks but the file holds {dev.nblocks} "
            "(truncated or extended)"
        )
    return header, raw
