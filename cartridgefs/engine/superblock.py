"""The superblock payload: generation roots and counters (layout in docs/engine.md)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import IntegrityError
from .seal import PTR_SIZE, Ptr

TREES = ("fs", "snap", "meta", "rc", "free")
FLAG_NEEDS_CHECK = 1

_FIXED = struct.Struct("<QQQIQQ")  # commit ns, next inode, nonce epoch, flags, raw bytes, stored bytes
_NULL_PTR = bytes(PTR_SIZE)


@dataclass
class SuperPayload:
    commit_ns: int
    next_inode: int
    epoch: int
    flags: int
    data_raw: int
    data_stored: int
    roots: dict[str, Ptr | None] = field(default_factory=dict)

    def encode(self) -> bytes:
        parts = [
            _FIXED.pack(
                self.commit_ns, self.next_inode, self.epoch, self.flags, self.data_raw, self.data_stored
            )
        ]
        for name in TREES:
            root = self.roots.get(name)
            parts.append(b"\x01" + root.encode() if root is not None else b"\x00" + _NULL_PTR)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> SuperPayload:
        try:
            fixed = _FIXED.unpack_from(data, 0)
            pos = _FIXED.size
            roots: dict[str, Ptr | None] = {}
            for name in TREES:
                present = data[pos]
                roots[name] = Ptr.decode(data, pos + 1) if present else None
                pos += 1 + PTR_SIZE
        except (struct.error, IndexError) as exc:
            raise IntegrityError(f"malformed superblock payload: {exc}") from exc
        return cls(*fixed, roots=roots)
