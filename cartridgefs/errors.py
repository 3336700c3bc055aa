"""The one exception hierarchy of Cartridge.

Every layer raises these; the FUSE adapter maps them to errno once (`errno` attribute) and the
S3 layer maps them to S3 error codes once (in `s3api.errors`).
"""

from __future__ import annotations

import errno as _errno


class CartridgeError(Exception):
    """Base class; `errno` is what a Linux filesystem would return for it."""

    errno: int = _errno.EIO


class FormatError(CartridgeError):
    """The file is not a cartridge, or of a format version we do not know."""

    errno = _errno.EINVAL


class WrongPassphrase(CartridgeError):
    """The passphrase does not unwrap the data key."""

    errno = _errno.EACCES


class PassphraseRequired(CartridgeError):
    """The cartridge is encrypted and no passphrase was given."""

    errno = _errno.EACCES


class IntegrityError(CartridgeError):
    """A page, extent, header or superblock failed its checksum or authentication tag."""

    errno = _errno.EIO


class NoSpace(CartridgeError):
    """The cartridge has no free blocks left for this operation."""

    errno = _errno.ENOSPC


class ReadOnly(CartridgeError):
    """The cartridge is open read-only, or turned read-only after detecting damage."""

    errno = _errno.EROFS


class NotFound(CartridgeError):
    errno = _errno.ENOENT


class Exists(CartridgeError):
    errno = _errno.EEXIST


class NotEmpty(CartridgeError):
    errno = _errno.ENOTEMPTY


class IsADirectory(CartridgeError):
    errno = _errno.EISDIR


class NotADirectory(CartridgeError):
    errno = _errno.ENOTDIR


class NameTooLong(CartridgeError):
    errno = _errno.ENAMETOOLONG


class InvalidArgument(CartridgeError):
    errno = _errno.EINVAL


class PermissionDenied(CartridgeError):
    errno = _errno.EACCES


class NotPermitted(CartridgeError):
    errno = _errno.EPERM


class NoAttribute(CartridgeError):
    errno = _errno.ENODATA


class TooLarge(CartridgeError):
    """A value or file exceeds a limit of the format."""

    errno = _errno.EFBIG


class Busy(CartridgeError):
    errno = _errno.EBUSY
