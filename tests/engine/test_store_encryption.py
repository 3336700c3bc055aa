"""Encrypted cartridges: nothing readable on disk, wrong keys refused, tampering detected."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cartridgefs.engine.seal import KIND_EXTENT, KIND_NODE
from cartridgefs.engine.store import Engine
from cartridgefs.errors import IntegrityError, PassphraseRequired, WrongPassphrase

PASSPHRASE = b"correct horse battery staple"
NAME = b"Quarterly-Report-Confidential.xlsx"
PLAINTEXT = b"The launch codes are 0000-0000. " * 400  # 12.8 KiB, would compress well
SPILLED = b"A value long enough to be spilled to its own block. " * 40
NBLOCKS = 600


def make(store, path: str, passphrase: bytes | None) -> None:
    engine = Engine.create(path, NBLOCKS, compression=False, passphrase=passphrase, kdf_log2n=10)
    store.write_file(engine, NAME, PLAINTEXT)
    with engine.txn() as t:
        t.put("fs", NAME + b".inline", b"inline secret: " + NAME)
        t.put("meta", b"spilled", SPILLED)
    engine.snapshot_create("snap-" + NAME.decode())
    engine.close()


def leaks(raw: bytes) -> list[str]:
    """Which known secrets appear in `raw` (checked in 16-byte windows, too)."""
    found = [name for name, secret in (("name", NAME), ("passphrase", PASSPHRASE)) if secret in raw]
    for label, text in (("plaintext", PLAINTEXT), ("spilled", SPILLED)):
        if any(text[i : i + 16] in raw for i in range(0, 64, 4)):
            found.append(label)
    return found


@pytest.fixture
def cart(tmp_path, store) -> str:
    path = str(tmp_path / "secret.cart")
    make(store, path, PASSPHRASE)
    return path


def test_raw_file_holds_no_plaintext(tmp_path, store, cart) -> None:
    raw = Path(cart).read_bytes()
    assert leaks(raw) == []
    assert leaks(raw[:4096]) == [] and leaks(raw[-4096:]) == []
    # The control: the same content without encryption is visible (so the check can fail).
    plain = str(tmp_path / "plain.cart")
    make(store, plain, None)
    assert set(leaks(Path(plain).read_bytes())) == {"name", "plaintext", "spilled"}


def test_data_key_not_on_disk(cart) -> None:
    engine = Engine.open(cart, passphrase=PASSPHRASE)
    key = engine._data_key
    engine.close()
    assert key and key not in Path(cart).read_bytes()


def test_reads_back_with_the_passphrase(store, cart) -> None:
    engine = Engine.open(cart, passphrase=PASSPHRASE)
    assert store.read_file(engine, NAME) == PLAINTEXT
    assert store.dump(engine)["meta"] == {b"spilled": SPILLED}
    assert engine.info()["encrypted"]
    store.assert_fsck_clean(engine)
    engine.close()


def test_wrong_or_missing_passphrase(cart) -> None:
    with pytest.raises(WrongPassphrase):
        Engine.open(cart, passphrase=b"correct horse battery stapler")
    with pytest.raises(PassphraseRequired):
        Engine.open(cart)
    with pytest.raises(PassphraseRequired):
        Engine.open(cart, readonly=True)


def _objects(store, cart: str):
    engine = Engine.open(cart, passphrase=PASSPHRASE)
    pages = store.objects_of_kind(engine, KIND_NODE, "fs")
    extents = store.objects_of_kind(engine, KIND_EXTENT)
    engine.close()
    return pages, extents


def _patch(path: str, edit) -> None:
    with open(path, "r+b") as f:
        buf = bytearray(f.read())
        edit(buf)
        f.seek(0)
        f.write(buf)


def _assert_detected(store, cart: str) -> None:
    engine = Engine.open(cart, passphrase=PASSPHRASE)
    with pytest.raises(IntegrityError):
        store.dump(engine)
    assert engine.damaged
    engine.close()


def test_flipped_page_is_detected(store, cart) -> None:
    pages, _ = _objects(store, cart)
    rng = random.Random(3)
    _patch(cart, lambda buf: store.flip_byte(buf, pages[0].block, pages[0].stored_len, rng))
    _assert_detected(store, cart)


def test_page_copied_over_another_block_is_detected(store, cart) -> None:
    """A valid page moved to another block (misplaced / replayed) fails: the block is sealed in."""
    pages, extents = _objects(store, cart)
    src, dst = extents[0], pages[0]

    def copy(buf: bytearray) -> None:
        buf[dst.block * 4096 : (dst.block + 1) * 4096] = buf[src.block * 4096 : (src.block + 1) * 4096]

    _patch(cart, copy)
    _assert_detected(store, cart)


def test_old_version_of_a_block_replayed_is_detected(store, cart) -> None:
    """Rewriting a block with what it held at an earlier generation (a rollback) fails."""
    before = Path(cart).read_bytes()
    engine = Engine.open(cart, passphrase=PASSPHRASE)
    with engine.txn() as t:
        t.put("fs", NAME + b".inline", b"changed")
    engine.sync()
    live = {p.block: p for p in store.objects_of_kind(engine, KIND_NODE, "fs")}
    engine.close()
    after = Path(cart).read_bytes()
    changed = [b for b in live if before[b * 4096 : (b + 1) * 4096] != after[b * 4096 : (b + 1) * 4096]]
    assert changed, "the commit rewrote no live page in place of an older one"
    block = changed[0]
    _patch(cart, lambda buf: buf.__setitem__(slice(block * 4096, (block + 1) * 4096), before[block * 4096 : (block + 1) * 4096]))
    _assert_detected(store, cart)


def test_tampered_header_with_fixed_checksum_is_refused(cart) -> None:
    """Changing a fuse and recomputing the xxh3 checksum still fails the header MAC."""
    import xxhash

    def tamper(buf: bytearray) -> None:
        buf[40] ^= 1  # s3_versioning_mode
        buf[4088:4096] = xxhash.xxh3_64_intdigest(bytes(buf[:4088])).to_bytes(8, "little")

    _patch(cart, tamper)
    with pytest.raises(IntegrityError):
        Engine.open(cart, passphrase=PASSPHRASE)
