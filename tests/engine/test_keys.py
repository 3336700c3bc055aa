"""Key derivation, wrapping and the passphrase sources."""

from __future__ import annotations

import getpass
import logging
import os
import sys

import pytest

from cartridgefs.engine import keys
from cartridgefs.errors import (
    InvalidArgument,
    NotFound,
    PassphraseRequired,
    WrongPassphrase,
)

SALT = b"s" * 32
UUID = bytes(range(16))
FAST = dict(log2n=10, r=8, p=1)  # keep the KDF cheap in tests


def test_derive_kek():
    kek = keys.derive_kek(b"correct horse", SALT, **FAST)
    assert len(kek) == 32
    assert kek == keys.derive_kek(b"correct horse", SALT, **FAST)
    assert kek != keys.derive_kek(b"correct horsf", SALT, **FAST)
    assert kek != keys.derive_kek(b"correct horse", b"t" * 32, **FAST)
    assert kek != keys.derive_kek(b"correct horse", SALT, log2n=11, r=8, p=1)


@pytest.mark.parametrize(
    "params",
    [dict(log2n=0, r=8, p=1), dict(log2n=10, r=0, p=1), dict(log2n=10, r=8, p=0),
     dict(log2n=40, r=8, p=1), dict(log2n=22, r=8, p=1), dict(log2n=10, r=8, p=1000)],
)  # fmt: skip
def test_kdf_parameters_from_a_crafted_header_are_refused(params):
    with pytest.raises(InvalidArgument):
        keys.derive_kek(b"pw", SALT, **params)


def test_wrap_unwrap():
    data_key = keys.new_data_key()
    assert len(data_key) == 32 and data_key != keys.new_data_key()
    kek = keys.derive_kek(b"pw", SALT, **FAST)
    nonce, wrapped = keys.wrap_key(kek, data_key, UUID)
    assert (len(nonce), len(wrapped)) == (12, 48)
    assert data_key not in wrapped
    assert keys.unwrap_key(kek, nonce, wrapped, UUID) == data_key
    assert keys.wrap_key(kek, data_key, UUID)[0] != nonce  # fresh nonce every time


def test_wrong_passphrase():
    kek = keys.derive_kek(b"pw", SALT, **FAST)
    nonce, wrapped = keys.wrap_key(kek, keys.new_data_key(), UUID)
    wrong = keys.derive_kek(b"pW", SALT, **FAST)
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        keys.unwrap_key(wrong, nonce, wrapped, UUID)
    with pytest.raises(WrongPassphrase):  # the wrapped key is bound to its cartridge
        keys.unwrap_key(kek, nonce, wrapped, bytes(16))
    with pytest.raises(WrongPassphrase):
        keys.unwrap_key(kek, nonce, bytes([wrapped[0] ^ 1]) + wrapped[1:], UUID)


def test_header_mac_key():
    data_key = keys.new_data_key()
    mac_key = keys.header_mac_key(data_key)
    assert len(mac_key) == 32
    assert mac_key == keys.header_mac_key(data_key)
    assert mac_key != data_key


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("CARTRIDGE_PASSPHRASE", raising=False)


def write(tmp_path, content: bytes, mode: int = 0o600) -> str:
    path = tmp_path / "pass"
    path.write_bytes(content)
    os.chmod(path, mode)
    return str(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"secret", b"secret"), (b"secret\n", b"secret"), (b"secret\n\n", b"secret\n"),
     (b"secret\r\n", b"secret"), (b" sp\xffce \n", b" sp\xffce ")],
)  # fmt: skip
def test_passphrase_file(tmp_path, no_env, content, expected):
    assert keys.read_passphrase(write(tmp_path, content)) == expected


def test_passphrase_file_errors(tmp_path, no_env, caplog):
    with pytest.raises(NotFound):
        keys.read_passphrase(str(tmp_path / "missing"))
    with pytest.raises(PassphraseRequired):
        keys.read_passphrase(write(tmp_path, b"\n"))
    with caplog.at_level(logging.WARNING, logger="cartridge.engine"):
        assert keys.read_passphrase(write(tmp_path, b"pw", 0o644)) == b"pw"
    assert "other users" in caplog.text


def test_passphrase_sources_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("CARTRIDGE_PASSPHRASE", "from env")
    assert keys.read_passphrase(write(tmp_path, b"from file")) == b"from file"
    assert keys.read_passphrase(None) == b"from env"
    monkeypatch.setenv("OTHER", "other")
    assert keys.read_passphrase(None, env_var="OTHER") == b"other"


def test_no_passphrase_without_terminal(no_env, monkeypatch):
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    with pytest.raises(PassphraseRequired):
        keys.read_passphrase(None)


def test_prompt(no_env, monkeypatch):
    answers: list[str] = []
    monkeypatch.setattr(sys, "stdin", type("Tty", (), {"isatty": lambda self: True})())
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": answers.pop(0))
    answers[:] = ["pässword"]
    assert keys.read_passphrase(None) == "pässword".encode()
    with pytest.raises(PassphraseRequired):
        keys.read_passphrase(None, prompt=False)
    answers[:] = ["one", "one"]
    assert keys.read_passphrase(None, confirm=True) == b"one"
    answers[:] = ["one", "two"]
    with pytest.raises(InvalidArgument, match="do not match"):
        keys.read_passphrase(None, confirm=True)
    answers[:] = [""]
    with pytest.raises(PassphraseRequired):
        keys.read_passphrase(None)
