"""Key management: the random data key, the passphrase-derived key that wraps it, the header MAC key."""

from __future__ import annotations

import getpass
import logging
import os
import stat
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from cartridgefs.errors import (
    InvalidArgument,
    NotFound,
    PassphraseRequired,
    PermissionDenied,
    WrongPassphrase,
)

log = logging.getLogger("cartridge.engine")

KEY_SIZE = 32
SALT_SIZE = 32
WRAP_NONCE_SIZE = 12
WRAPPED_KEY_SIZE = KEY_SIZE + 16
KDF_NONE = 0
KDF_SCRYPT = 1
SCRYPT_LOG2N = 17
SCRYPT_R = 8
SCRYPT_P = 1
# The KDF parameters come from the (not yet authenticated) header: refuse ones that would make
# opening a crafted file exhaust memory or time.
SCRYPT_MAX_MEMORY = 1 << 30
SCRYPT_MAX_P = 16

_WRAP_AD = b"cartridge-key-v1"
_MAC_INFO = b"cartridge header mac"


def new_data_key() -> bytes:
    """A fresh random 256-bit data key."""
    return os.urandom(KEY_SIZE)


def derive_kek(
    passphrase: bytes,
    salt: bytes,
    log2n: int = SCRYPT_LOG2N,
    r: int = SCRYPT_R,
    p: int = SCRYPT_P,
) -> bytes:
    """The key-encryption key: scrypt(passphrase, salt, n = 2^log2n, r, p), 32 bytes."""
    if not (1 <= log2n <= 63 and r >= 1 and 1 <= p <= SCRYPT_MAX_P):
        raise InvalidArgument(f"invalid scrypt parameters log2n={log2n} r={r} p={p}")
    if 128 * r * (1 << log2n) > SCRYPT_MAX_MEMORY:
        raise InvalidArgument(f"scrypt parameters log2n={log2n} r={r} need too much memory")
    kdf = Scrypt(salt=salt, length=KEY_SIZE, n=1 << log2n, r=r, p=p)
    return kdf.derive(passphrase)


def wrap_key(kek: bytes, data_key: bytes, uuid: bytes) -> tuple[bytes, bytes]:
    """Encrypt the data key under the KEK, bound to the container UUID: (nonce, 48 bytes)."""
    if len(data_key) != KEY_SIZE:
        raise InvalidArgument(f"data key must be {KEY_SIZE} bytes")
    nonce = os.urandom(WRAP_NONCE_SIZE)
    return nonce, AESGCM(kek).encrypt(nonce, data_key, uuid + _WRAP_AD)


def unwrap_key(kek: bytes, nonce: bytes, wrapped: bytes, uuid: bytes) -> bytes:
    """Recover the data key; WrongPassphrase if the KEK (or the wrapped key, or UUID) is wrong."""
    try:
        return AESGCM(kek).decrypt(nonce, wrapped, uuid + _WRAP_AD)
    except InvalidTag:
        # Tampering with the wrapped key looks exactly the same; the passphrase is far likelier.
        raise WrongPassphrase("wrong passphrase") from None


def header_mac_key(data_key: bytes) -> bytes:
    """The header HMAC key: HKDF-SHA256(data key, info "cartridge header mac")."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_MAC_INFO)
    return hkdf.derive(data_key)


def read_passphrase(
    passphrase_file: str | None = None,
    env_var: str = "CARTRIDGE_PASSPHRASE",
    prompt: bool = True,
    confirm: bool = False,
) -> bytes:
    """The passphrase from a file, else the environment, else a terminal prompt."""
    if passphrase_file is not None:
        return _from_file(passphrase_file)
    value = os.environ.get(env_var)
    if value:
        return os.fsencode(value)
    if prompt and sys.stdin.isatty():
        return _from_prompt(confirm)
    raise PassphraseRequired(
        f"the cartridge is encrypted: give a passphrase file or set ${env_var}"
    )


def _from_file(path: str) -> bytes:
    """File contents with one trailing newline (LF or CRLF) removed."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning("passphrase file %s is accessible by other users (chmod 600 it)", path)
            data = f.read()
    except FileNotFoundError:
        raise NotFound(f"passphrase file {path} not found") from None
    except PermissionError:
        raise PermissionDenied(f"passphrase file {path}: permission denied") from None
    for newline in (b"\r\n", b"\n"):
        if data.endswith(newline):
            data = data[: -len(newline)]
            break
    if not data:
        raise PassphraseRequired(f"passphrase file {path} is empty")
    return data


def _from_prompt(confirm: bool) -> bytes:
    """Ask on the terminal, twice when a new passphrase is being chosen."""
    first = getpass.getpass("Passphrase: ")
    if not first:
        raise PassphraseRequired("empty passphrase")
    if confirm and getpass.getpass("Repeat passphrase: ") != first:
        raise InvalidArgument("the passphrases do not match")
    return first.encode()
