"""Block pointers, sealers, codecs and sealed I/O."""

from __future__ import annotations

import dataclasses
import os
import struct
import threading

import pytest
import xxhash
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from cartridgefs.engine import seal as seal_module
from cartridgefs.engine.blockdev import BLOCK_SIZE, MemoryDevice
from cartridgefs.engine.seal import (
    CODEC_RAW,
    CODEC_ZSTD,
    KIND_BLOB,
    KIND_EXTENT,
    KIND_NODE,
    NONCES_PER_EPOCH,
    PTR_SIZE,
    SUPER_MAX_PAYLOAD,
    ZERO_NONCE,
    AeadSealer,
    ChecksumSealer,
    Ptr,
    decode_extent,
    encode_extent,
    read_sealed,
    write_sealed,
)
from cartridgefs.errors import (
    CartridgeError,
    FormatError,
    IntegrityError,
    InvalidArgument,
    TooLarge,
)

UUID = bytes(range(16))
KEY = bytes(range(32, 64))
TEXT = b"All work and no play makes Jack a dull boy. " * 200


def sealers():
    return [ChecksumSealer(UUID), AeadSealer(UUID, KEY, epoch=7)]


@pytest.fixture(params=["checksum", "aead"])
def sealer(request):
    return ChecksumSealer(UUID) if request.param == "checksum" else AeadSealer(UUID, KEY, 7)


# --- pointers ---

ptrs = st.builds(
    Ptr,
    block=st.integers(0, 2**64 - 1),
    nblocks=st.integers(0, 2**32 - 1),
    birth=st.integers(0, 2**64 - 1),
    kind=st.integers(0, 255),
    codec=st.integers(0, 255),
    raw_len=st.integers(0, 2**32 - 1),
    stored_len=st.integers(0, 2**32 - 1),
    nonce=st.binary(min_size=12, max_size=12),
    seal=st.binary(min_size=16, max_size=16),
)


@given(ptrs, st.binary(max_size=8))
def test_ptr_round_trip(ptr, prefix):
    raw = ptr.encode()
    assert len(raw) == PTR_SIZE == 58
    assert Ptr.decode(prefix + raw, len(prefix)) == ptr


def test_ptr_layout():
    ptr = Ptr(0x0102030405060708, 9, 10, KIND_EXTENT, CODEC_ZSTD, 11, 12, b"N" * 12, b"S" * 16)
    raw = ptr.encode()
    assert raw[0:8] == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert struct.unpack_from("<IQBBII", raw, 8) == (9, 10, 2, 1, 11, 12)
    assert (raw[30:42], raw[42:58]) == (b"N" * 12, b"S" * 16)
    with pytest.raises(AttributeError):
        ptr.block = 1  # frozen


# --- sealing ---


def test_round_trip(sealer):
    for data in (b"", b"x", TEXT, os.urandom(3 * BLOCK_SIZE)):
        stored, nonce, seal = sealer.seal(data, block=5, birth=9, kind=KIND_NODE)
        assert len(stored) == len(data) and len(nonce) == 12 and len(seal) == 16
        assert isinstance(stored, bytes)
        back = sealer.unseal(stored, block=5, birth=9, kind=KIND_NODE, nonce=nonce, seal=seal)
        assert back == data
        where = dict(block=5, birth=9, kind=KIND_NODE)
        stored, nonce, seal = sealer.seal(memoryview(data), **where)
        assert sealer.unseal(memoryview(stored), nonce=nonce, seal=seal, **where) == data


def test_checksum_layout():
    sealer = ChecksumSealer(UUID)
    stored, nonce, seal = sealer.seal(b"abc", block=5, birth=9, kind=KIND_EXTENT)
    ad = UUID + struct.pack("<QQB", 5, 9, KIND_EXTENT)
    assert (stored, nonce, seal) == (b"abc", ZERO_NONCE, xxhash.xxh3_128_digest(ad + b"abc"))


def test_aead_hides_plaintext():
    sealer = AeadSealer(UUID, KEY, 1)
    known = b"secret-plaintext-marker-0123456789"
    data = known * 300
    stored, _, _ = sealer.seal(data, block=3, birth=1, kind=KIND_EXTENT)
    for i in range(0, len(known) - 8):
        assert known[i : i + 8] not in stored
    same, _, _ = sealer.seal(data, block=3, birth=1, kind=KIND_EXTENT)
    assert same != stored  # a fresh nonce every time


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([0, 1]),
    st.binary(min_size=1, max_size=300),
    st.sampled_from(["stored", "nonce", "seal"]),
    st.integers(0, 10**6),
    st.integers(1, 255),
)
def test_any_flipped_byte_is_detected(which, data, field, where, mask):
    sealer = sealers()[which]
    stored, nonce, seal = sealer.seal(data, block=5, birth=9, kind=KIND_EXTENT)
    parts = {"stored": bytearray(stored), "nonce": bytearray(nonce), "seal": bytearray(seal)}
    parts[field][where % len(parts[field])] ^= mask
    with pytest.raises(IntegrityError, match="data extent at block 5"):
        sealer.unseal(
            bytes(parts["stored"]),
            block=5,
            birth=9,
            kind=KIND_EXTENT,
            nonce=bytes(parts["nonce"]),
            seal=bytes(parts["seal"]),
        )


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([0, 1]),
    st.binary(max_size=100),
    st.sampled_from(["block", "birth", "kind"]),
    st.integers(1, 2**32),
)
def test_misplaced_or_stale_objects_are_detected(which, data, field, delta):
    sealer = sealers()[which]
    where = {"block": 5, "birth": 9, "kind": KIND_EXTENT}
    stored, nonce, seal = sealer.seal(data, **where)
    modulus = 256 if field == "kind" else 2**64
    where[field] = (where[field] + 1 + delta % (modulus - 1)) % modulus  # always a change
    with pytest.raises(IntegrityError):
        sealer.unseal(stored, nonce=nonce, seal=seal, **where)


def test_other_cartridge_or_key_is_detected(sealer):
    stored, nonce, seal = sealer.seal(TEXT, block=5, birth=9, kind=KIND_NODE)
    others = [ChecksumSealer(bytes(16)), AeadSealer(bytes(16), KEY, 7)]
    for other in [*others, AeadSealer(UUID, bytes(32), 7)]:
        with pytest.raises(IntegrityError):
            other.unseal(stored, block=5, birth=9, kind=KIND_NODE, nonce=nonce, seal=seal)


def test_nonces_unique_across_threads():
    sealer = AeadSealer(UUID, KEY, epoch=0x0102030405060708)
    per_thread, nthreads = 2000, 8
    results: list[list[bytes]] = [[] for _ in range(nthreads)]

    def work(out: list[bytes]) -> None:
        for _ in range(per_thread):
            out.append(sealer.seal(b"x", block=1, birth=1, kind=KIND_NODE)[1])

    threads = [threading.Thread(target=work, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    nonces = [n for r in results for n in r]
    assert len(set(nonces)) == len(nonces) == per_thread * nthreads
    assert {n[:8] for n in nonces} == {struct.pack("<Q", 0x0102030405060708)}
    assert sorted(struct.unpack("<I", n[8:])[0] for n in nonces) == list(range(len(nonces)))
    assert sealer.nonces_left == NONCES_PER_EPOCH - len(nonces)


def test_nonce_exhaustion():
    sealer = AeadSealer(UUID, KEY, epoch=3)
    sealer._counter = NONCES_PER_EPOCH - 1  # fast-forward to the end of the epoch
    _, nonce, _ = sealer.seal(b"x", block=1, birth=1, kind=KIND_NODE)
    assert nonce == struct.pack("<QI", 3, 2**32 - 1)
    assert sealer.nonces_left == 0
    with pytest.raises(CartridgeError, match="exhausted"):
        sealer.seal(b"x", block=1, birth=1, kind=KIND_NODE)


def test_constructor_checks():
    with pytest.raises(InvalidArgument):
        ChecksumSealer(b"short")
    with pytest.raises(InvalidArgument):
        AeadSealer(UUID, b"short", 1)
    with pytest.raises(InvalidArgument):
        AeadSealer(UUID, KEY, 2**64)
    assert not ChecksumSealer(UUID).encrypted and AeadSealer(UUID, KEY, 0).encrypted


# --- superblocks ---


def test_superblock_round_trip_and_layout(sealer):
    payload = b"roots and counters" * 10
    raw = sealer.seal_super(payload, block=2, generation=41)
    assert len(raw) == BLOCK_SIZE
    assert raw[0:8] == b"CARTSUPB"
    assert struct.unpack_from("<QxxxxxxxxxxxxH", raw, 8) == (41, len(payload))
    assert (raw[16:28] == ZERO_NONCE) == (not sealer.encrypted)
    assert (raw[30 : 30 + len(payload)] == payload) == (not sealer.encrypted)
    assert raw[30 + len(payload) + 16 :] == bytes(BLOCK_SIZE - 46 - len(payload))
    assert sealer.unseal_super(raw, block=2) == (41, payload)
    assert sealer.unseal_super(sealer.seal_super(b"", block=1, generation=0), block=1) == (0, b"")
    big = bytes(SUPER_MAX_PAYLOAD)
    assert sealer.unseal_super(sealer.seal_super(big, block=1, generation=2), block=1)[1] == big
    with pytest.raises(TooLarge):
        sealer.seal_super(big + b"x", block=1, generation=2)


def test_superblock_tampering(sealer):
    payload = b"p" * 50
    raw = sealer.seal_super(payload, block=1, generation=6)
    for offset in range(0, 30 + len(payload) + 16):
        bad = bytearray(raw)
        bad[offset] ^= 0x40
        with pytest.raises(IntegrityError):
            sealer.unseal_super(bytes(bad), block=1)
    with pytest.raises(IntegrityError):
        sealer.unseal_super(raw, block=2)  # copied to the other slot
    with pytest.raises(IntegrityError, match="holds no superblock"):
        sealer.unseal_super(bytes(BLOCK_SIZE), block=1)
    with pytest.raises(InvalidArgument):
        sealer.unseal_super(raw[:100], block=1)


def test_superblock_nonces_are_random():
    sealer = AeadSealer(UUID, KEY, 1)
    a = sealer.seal_super(b"x", block=1, generation=1)
    b = sealer.seal_super(b"x", block=1, generation=1)
    assert a[16:28] != b[16:28]
    assert sealer.nonces_left == NONCES_PER_EPOCH  # the epoch counter is untouched
    with pytest.raises(IntegrityError):
        ChecksumSealer(UUID).unseal_super(a, block=1)


# --- codecs ---


def test_codec_choice():
    assert encode_extent(TEXT, compress=True)[0] == CODEC_ZSTD
    assert encode_extent(os.urandom(65536), compress=True)[0] == CODEC_RAW
    assert encode_extent(TEXT, compress=False) == (CODEC_RAW, TEXT)
    assert encode_extent(b"", compress=True) == (CODEC_RAW, b"")
    codec, frame = encode_extent(memoryview(TEXT), compress=True, level=1)
    assert codec == CODEC_ZSTD and decode_extent(codec, frame, len(TEXT)) == TEXT


def test_samples_decide_whether_to_compress(monkeypatch):
    """Incompressible data is recognised from its samples, without compressing all of it; data
    with a compressible sample is compressed whole, and kept compressed if that pays."""
    calls: list[int] = []
    real = seal_module._compressor

    def counting(level: int):
        calls.append(level)
        return real(level)

    monkeypatch.setattr(seal_module, "_compressor", counting)
    noise = os.urandom(128 * 1024)
    assert encode_extent(noise, compress=True)[0] == CODEC_RAW
    assert calls == [seal_module.SAMPLE_LEVEL]  # the samples only
    calls.clear()
    text_in_middle = noise[:32768] + (TEXT * 100)[:65536] + noise[-32768:]
    codec, frame = encode_extent(text_in_middle, compress=True)
    assert calls == [seal_module.SAMPLE_LEVEL, 3]
    assert codec == CODEC_ZSTD and decode_extent(codec, frame, len(text_in_middle)) == text_in_middle


def test_codec_needs_three_percent():
    # Random bytes with a compressible tail: the saving straddles the 3 % threshold.
    for tail in (0, 4000, 8000):
        data = os.urandom(100_000 - tail) + bytes(tail)
        codec, encoded = encode_extent(data, compress=True)
        frame = zstandard.ZstdCompressor(level=3, write_checksum=False).compress(data)
        assert (codec == CODEC_ZSTD) == (len(frame) <= 0.97 * len(data))
        assert decode_extent(codec, encoded, len(data)) == data


def test_decode_errors():
    _, frame = encode_extent(TEXT, compress=True)
    with pytest.raises(IntegrityError):
        decode_extent(CODEC_ZSTD, frame, len(TEXT) + 1)
    with pytest.raises(IntegrityError):
        decode_extent(CODEC_ZSTD, frame[:-3], len(TEXT))
    with pytest.raises(IntegrityError):
        decode_extent(CODEC_ZSTD, frame + b"junk", len(TEXT))
    with pytest.raises(IntegrityError):
        decode_extent(CODEC_ZSTD, b"not zstd at all", 15)
    with pytest.raises(IntegrityError):
        decode_extent(CODEC_RAW, b"abc", 4)
    with pytest.raises(FormatError):
        decode_extent(9, b"abc", 3)


# --- sealed I/O ---


def put(dev, sealer, data, block, nblocks, *, birth=4, kind=KIND_EXTENT, compress=False) -> Ptr:
    return write_sealed(
        dev, sealer, data, block=block, nblocks=nblocks, birth=birth, kind=kind, compress=compress
    )


@pytest.mark.parametrize("compress", [False, True])
def test_write_read_sealed(sealer, compress):
    dev = MemoryDevice(64)
    for data in (b"", b"x", TEXT, os.urandom(2 * BLOCK_SIZE), bytes(5 * BLOCK_SIZE)):
        nblocks = max(1, -(-len(data) // BLOCK_SIZE))
        ptr = put(dev, sealer, data, 10, nblocks, kind=KIND_BLOB, compress=compress)
        assert (ptr.block, ptr.birth, ptr.kind, ptr.raw_len) == (10, 4, KIND_BLOB, len(data))
        assert ptr.nblocks == -(-ptr.stored_len // BLOCK_SIZE) <= nblocks
        raw = dev.read(10, ptr.nblocks)
        assert raw[ptr.stored_len :] == bytes(len(raw) - ptr.stored_len)  # zero padding
        assert read_sealed(dev, sealer, ptr) == data
        assert read_sealed(dev, sealer, Ptr.decode(ptr.encode())) == data
    if compress:
        ptr = put(dev, sealer, TEXT, 10, 3, compress=True)
        assert ptr.codec == CODEC_ZSTD and ptr.nblocks == 1  # the caller may free the rest


def test_sealed_io_detects_damage_and_misdirection(sealer):
    dev = MemoryDevice(64)
    ptr = put(dev, sealer, TEXT, 10, 3)
    dev.buffer[10 * BLOCK_SIZE + 777] ^= 1
    with pytest.raises(IntegrityError, match="block 10"):
        read_sealed(dev, sealer, ptr)
    dev.buffer[10 * BLOCK_SIZE + 777] ^= 1
    # The same bytes copied elsewhere, or an older version left in place, do not verify.
    dev.write(20, dev.read(10, ptr.nblocks))
    with pytest.raises(IntegrityError):
        read_sealed(dev, sealer, dataclasses.replace(ptr, block=20))
    old = put(dev, sealer, b"old" * 100, 30, 1, birth=2)
    put(dev, sealer, b"new" * 100, 30, 1, birth=3)
    with pytest.raises(IntegrityError):
        read_sealed(dev, sealer, old)
    with pytest.raises(IntegrityError, match="claims"):
        read_sealed(dev, sealer, dataclasses.replace(ptr, nblocks=1))
    with pytest.raises(InvalidArgument):
        put(dev, sealer, os.urandom(5000), 40, 1, compress=True)


def test_sealed_io_from_many_threads(sealer):
    dev = MemoryDevice(256)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(20):
                block = 1 + (t * 20 + i) * 3
                data = (f"thread {t} item {i} ".encode() * 500)[: 2 * BLOCK_SIZE + t * 100]
                ptr = put(dev, sealer, data, block, 3, compress=bool(i % 2))
                assert read_sealed(dev, sealer, ptr) == data
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
