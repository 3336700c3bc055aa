"""Adaptive Replacement Cache (Megiddo & Modha, FAST 2003), bounded by bytes.

We looked for a maintained Python ARC library and found none, hence this module.

T1 holds entries seen once recently, T2 entries seen at least twice; B1 and B2 are "ghost" lists
of keys recently evicted from them. A hit in B1 means recency was undervalued and grows the
target size `p` of T1; a hit in B2 shrinks it. A one-pass scan only churns T1, so a hot working
set in T2 survives it. Sizes are in bytes: `p`, the list totals and the bounds
(|T1| + |T2| ≤ c, |T1| + |B1| ≤ c, |T1| + |T2| + |B1| + |B2| ≤ 2c) are all byte counts, and
adaptation steps scale with the entry size, as in ZFS's ARC.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

# Ghost lists also hold at most as many keys as the cache holds entries (at least this many),
# so that many tiny entries cannot make the key directory grow without bound.
_MIN_GHOSTS = 64


class ArcCache:
    """A thread-safe ARC of values with byte sizes; values must not be None."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._t1: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._t2: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        # Ghosts keep the size the entry had (no value), for the byte bounds.
        self._b1: OrderedDict[Hashable, int] = OrderedDict()
        self._b2: OrderedDict[Hashable, int] = OrderedDict()
        self._t1_bytes = self._t2_bytes = self._b1_bytes = self._b2_bytes = 0
        self._p = 0  # target size of T1, in bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._t1) + len(self._t2)

    @property
    def bytes_used(self) -> int:
        """Total size of the cached values."""
        with self._lock:
            return self._t1_bytes + self._t2_bytes

    def get(self, key: Hashable) -> Any | None:
        """The cached value, or None (a miss)."""
        with self._lock:
            entry = self._t1.pop(key, None)
            if entry is not None:
                # Second reference: from "recent" to "frequent".
                self._t1_bytes -= entry[1]
                self._t2[key] = entry
                self._t2_bytes += entry[1]
            else:
                entry = self._t2.get(key)
                if entry is None:
                    self.misses += 1
                    return None
                self._t2.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        """Cache `value` (replacing any older one); a value larger than max_bytes is not kept."""
        if size < 0:
            raise ValueError("size must be >= 0")
        with self._lock:
            cap = self.max_bytes
            if size > cap:
                # Never leave an older value behind to be served in place of this one.
                self._forget(key)
                return
            from_b2 = False
            if self._pop_resident(key):
                frequent = True
            elif key in self._b1:
                step = size * max(1, self._b2_bytes // max(self._b1_bytes, 1))
                self._p = min(cap, self._p + step)
                self._b1_bytes -= self._b1.pop(key)
                frequent = True
            elif key in self._b2:
                step = size * max(1, self._b1_bytes // max(self._b2_bytes, 1))
                self._p = max(0, self._p - step)
                self._b2_bytes -= self._b2.pop(key)
                frequent = from_b2 = True
            else:
                frequent = False
                # Keep |T1| + |B1| <= c: forget the oldest ghosts, else the oldest recent entries.
                while self._t1_bytes + self._b1_bytes + size > cap:
                    if self._b1:
                        self._b1_bytes -= self._b1.popitem(last=False)[1]
                    else:
                        self._t1_bytes -= self._t1.popitem(last=False)[1][1]
            while self._t1_bytes + self._t2_bytes + size > cap:
                self._replace(from_b2)
            if frequent:
                self._t2[key] = (value, size)
                self._t2_bytes += size
            else:
                self._t1[key] = (value, size)
                self._t1_bytes += size
            self._trim_ghosts()

    def discard(self, key: Hashable) -> None:
        """Drop `key` (its value and any ghost of it)."""
        with self._lock:
            self._forget(key)

    def clear(self) -> None:
        """Drop everything (statistics are kept)."""
        with self._lock:
            for lst in (self._t1, self._t2, self._b1, self._b2):
                lst.clear()
            self._t1_bytes = self._t2_bytes = self._b1_bytes = self._b2_bytes = 0
            self._p = 0

    def _pop_resident(self, key: Hashable) -> bool:
        """Remove `key` from T1 or T2; whether it was there."""
        entry = self._t1.pop(key, None)
        if entry is not None:
            self._t1_bytes -= entry[1]
            return True
        entry = self._t2.pop(key, None)
        if entry is not None:
            self._t2_bytes -= entry[1]
            return True
        return False

    def _forget(self, key: Hashable) -> None:
        if not self._pop_resident(key):
            self._b1_bytes -= self._b1.pop(key, 0)
            self._b2_bytes -= self._b2.pop(key, 0)

    def _replace(self, from_b2: bool) -> None:
        """Evict the LRU entry of T1 or T2 (per the target p) into its ghost list."""
        t1 = self._t1_bytes
        if self._t1 and (t1 > self._p or (from_b2 and t1 == self._p) or not self._t2):
            key, (_, size) = self._t1.popitem(last=False)
            self._t1_bytes -= size
            self._b1[key] = size
            self._b1_bytes += size
        else:
            key, (_, size) = self._t2.popitem(last=False)
            self._t2_bytes -= size
            self._b2[key] = size
            self._b2_bytes += size

    def _trim_ghosts(self) -> None:
        """Bound the ghost lists: in keys, and the whole directory to 2c bytes."""
        most = max(len(self._t1) + len(self._t2), _MIN_GHOSTS)
        while len(self._b1) > most:
            self._b1_bytes -= self._b1.popitem(last=False)[1]
        total = self._t1_bytes + self._t2_bytes + self._b1_bytes + self._b2_bytes
        while self._b2 and (len(self._b2) > most or total > 2 * self.max_bytes):
            size = self._b2.popitem(last=False)[1]
            self._b2_bytes -= size
            total -= size
