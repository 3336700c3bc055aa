"""The cartridge header: byte layout, validation, checksum, MAC, backup copy."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import struct

import pytest
import xxhash

from cartridgefs.engine import keys
from cartridgefs.engine.blockdev import BLOCK_SIZE, MemoryDevice
from cartridgefs.engine.crashdev import CrashDevice, SimulatedCrash
from cartridgefs.engine.header import (
    AclMode,
    Features,
    Fuses,
    Header,
    SseMode,
    VersioningMode,
    read_header,
    verify_mac,
    write_header,
)
from cartridgefs.errors import FormatError, IntegrityError, InvalidArgument

NBLOCKS = 16
UUID = bytes(range(16))
MAC_KEY = keys.header_mac_key(b"k" * 32)


def plain(**changes) -> Header:
    fields = dict(
        version=1,
        block_size=BLOCK_SIZE,
        nblocks=NBLOCKS,
        flags=Features.COMPRESSED,
        created_ns=1_700_000_000_123_456_789,
        fuses=Fuses(),
        uuid=UUID,
    )
    return Header(**(fields | changes))


def encrypted(**changes) -> Header:
    return plain(
        flags=Features.ENCRYPTED | Features.COMPRESSED,
        kdf_id=keys.KDF_SCRYPT,
        log2n=10,
        r=8,
        p=1,
        salt=b"s" * 32,
        wrap_nonce=b"n" * 12,
        wrapped_key=b"w" * 48,
        **changes,
    )


def rechecksum(raw: bytes | bytearray) -> bytes:
    """`raw` with a valid checksum again, as a deliberate (not accidental) change would have."""
    buf = bytearray(raw)
    struct.pack_into("<Q", buf, 4088, xxhash.xxh3_64_intdigest(bytes(buf[:4088])))
    return bytes(buf)


def test_round_trip_and_layout():
    header = encrypted(fuses=Fuses(VersioningMode.SNAPSHOT_BACKED, AclMode.ENFORCE, SseMode.RECORD))
    raw = header.encode(MAC_KEY)
    assert len(raw) == BLOCK_SIZE
    assert Header.decode(raw) == header
    assert raw[0:8] == b"CARTRIDG"
    assert struct.unpack_from("<IIQI", raw, 8) == (1, BLOCK_SIZE, NBLOCKS, 3)
    assert struct.unpack_from("<Q", raw, 32)[0] == header.created_ns
    assert raw[40:43] == bytes([1, 2, 1])
    assert raw[43:296] == bytes(253)
    assert raw[296:312] == UUID
    assert struct.unpack_from("<HBBB", raw, 312) == (1, 10, 8, 1)
    assert (raw[320:352], raw[352:364], raw[364:412]) == (b"s" * 32, b"n" * 12, b"w" * 48)
    assert raw[412:4056] == bytes(4056 - 412)
    assert struct.unpack_from("<Q", raw, 4088)[0] == xxhash.xxh3_64_intdigest(raw[:4088])
    verify_mac(raw, MAC_KEY)
    Header.verify_mac(raw, MAC_KEY)


def test_plain_header_has_no_mac():
    raw = plain().encode(None)
    assert raw[4056:4088] == bytes(32)
    assert Header.decode(raw) == plain()


@pytest.mark.parametrize(
    ("fuses", "expected"),
    [
        (Fuses(), b"\0\0\0"),
        (Fuses(1, 1, 2), b"\1\1\2"),
        (Fuses(VersioningMode.SNAPSHOT_BACKED, AclMode.RECORD, SseMode.TRANSPARENT), b"\1\1\2"),
        (Fuses(0, 2, 0), b"\0\2\0"),
    ],
)
def test_fuses_at_bytes_40_to_42(fuses, expected):
    raw = plain(fuses=fuses).encode(None)
    assert raw[40:43] == expected
    decoded = Header.decode(raw).fuses
    assert decoded == fuses
    assert isinstance(decoded.s3_acl_mode, AclMode)


@pytest.mark.parametrize("values", [(2, 0, 0), (0, 3, 0), (0, 0, 3), (-1, 0, 0)])
def test_invalid_fuses(values):
    with pytest.raises(InvalidArgument):
        Fuses(*values)
    fuses = Fuses()
    fuses.s3_sse_mode = 9  # mutable, but nothing invalid may reach the disk
    with pytest.raises(InvalidArgument):
        plain(fuses=fuses).encode(None)


def test_unknown_fuse_value_on_disk():
    raw = bytearray(plain().encode(None))
    raw[41] = 7
    with pytest.raises(FormatError, match="fuse"):
        Header.decode(rechecksum(raw))
    raw[41] = 0
    raw[100] = 1  # reserved fuse byte
    with pytest.raises(FormatError):
        Header.decode(rechecksum(raw))


def test_decode_errors():
    raw = plain().encode(None)
    with pytest.raises(FormatError, match="not a cartridge file"):
        Header.decode(bytes(BLOCK_SIZE))
    newer = bytearray(raw)
    struct.pack_into("<I", newer, 8, 2)
    with pytest.raises(FormatError, match="format version 2 not supported"):
        Header.decode(rechecksum(newer))
    for offset in (16, 41, 300, 2000, 4090):
        damaged = bytearray(raw)
        damaged[offset] ^= 0x10
        with pytest.raises(IntegrityError):
            Header.decode(bytes(damaged))
    for offset in (28, 318, 500, 4060):  # reserved bytes, or a MAC on a plain header
        odd = bytearray(raw)
        odd[offset] = 1
        with pytest.raises(FormatError):
            Header.decode(rechecksum(odd))
    flags = bytearray(raw)
    struct.pack_into("<I", flags, 24, 4)
    with pytest.raises(FormatError):
        Header.decode(rechecksum(flags))


def test_validation():
    with pytest.raises(InvalidArgument):
        plain(uuid=b"short")
    with pytest.raises(InvalidArgument):
        plain(nblocks=3)
    with pytest.raises(InvalidArgument):
        plain(flags=Features.ENCRYPTED)  # encrypted but no KDF
    with pytest.raises(InvalidArgument):
        plain(kdf_id=keys.KDF_SCRYPT)  # KDF but not encrypted
    with pytest.raises(InvalidArgument):
        plain(created_ns=-1).encode(None)
    with pytest.raises(InvalidArgument):
        encrypted().encode(None)  # an encrypted header must be authenticated
    with pytest.raises(InvalidArgument):
        plain().encode(MAC_KEY)
    header = plain()
    header.flags = Features(8)
    with pytest.raises(InvalidArgument):
        header.encode(None)
    assert dataclasses.replace(plain(), fuses=Fuses(1, 0, 0)).fuses.s3_versioning_mode == 1


def test_mac_detects_a_consistent_forgery():
    raw = bytearray(encrypted().encode(MAC_KEY))
    raw[40] = 1  # flip a fuse and fix the checksum: only the MAC can tell
    forged = rechecksum(raw)
    Header.decode(forged)
    with pytest.raises(IntegrityError, match="authentication"):
        verify_mac(forged, MAC_KEY)
    with pytest.raises(IntegrityError):
        verify_mac(encrypted().encode(MAC_KEY), keys.header_mac_key(b"x" * 32))


def test_write_and_read_back():
    dev = MemoryDevice(NBLOCKS)
    write_header(dev, encrypted(), MAC_KEY)
    header, raw = read_header(dev)
    assert header == encrypted()
    assert dev.read(0, 1) == dev.read(NBLOCKS - 1, 1) == raw
    with pytest.raises(InvalidArgument):
        write_header(MemoryDevice(NBLOCKS + 1), plain(), None)


def test_backup_fallback(caplog):
    dev = MemoryDevice(NBLOCKS)
    write_header(dev, plain(), None)
    dev.buffer[100] ^= 0xFF
    with caplog.at_level(logging.WARNING, logger="cartridge.engine"):
        header, raw = read_header(dev)
    assert header == plain()
    assert raw == dev.read(NBLOCKS - 1, 1)
    assert "backup" in caplog.text
    dev.buffer[(NBLOCKS - 1) * BLOCK_SIZE + 100] ^= 0xFF
    with pytest.raises(IntegrityError, match="both header copies"):
        read_header(dev)


def test_read_header_errors():
    with pytest.raises(FormatError, match="not a cartridge file"):
        read_header(MemoryDevice(NBLOCKS))
    dev = MemoryDevice(NBLOCKS)
    newer = bytearray(plain().encode(None))
    struct.pack_into("<I", newer, 8, 2)
    dev.write(0, rechecksum(newer))
    dev.write(NBLOCKS - 1, rechecksum(newer))
    with pytest.raises(FormatError, match="version 2"):
        read_header(dev)
    # A file that grew or shrank: the header no longer describes it.
    bigger = MemoryDevice(NBLOCKS + 1)
    bigger.write(0, plain().encode(None))
    with pytest.raises(IntegrityError, match="truncated or extended"):
        read_header(bigger)


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4, 5])
def test_power_loss_while_rewriting_the_header(crash_at):
    """A crash anywhere in write_header leaves the old or the new header readable."""
    old, new = plain(), plain(fuses=Fuses(1, 2, 2))
    setup = CrashDevice(NBLOCKS)
    write_header(setup, old, None)
    dev = CrashDevice.from_image(setup.durable, crash_after_writes=crash_at)
    with contextlib.suppress(SimulatedCrash):
        write_header(dev, new, None)
    rng = random.Random(crash_at)
    for mode in ("drop_all", "keep_all", "random", "torn", "torn", "torn"):
        image = dev.crash_image(rng, mode)
        header, _ = read_header(CrashDevice.from_image(image))
        assert header in (old, new)
        if crash_at > 4:
            assert header == new  # both syncs completed
