"""Write-back buffer of one open file: non-overlapping dirty byte ranges, merged as they arrive."""

from __future__ import annotations

from bisect import bisect_left, bisect_right


class DirtyRanges:
    """Sorted, non-overlapping, non-adjacent ranges of bytes written but not yet stored."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.chunks: list[bytearray] = []
        self.nbytes = 0

    def __bool__(self) -> bool:
        return bool(self.starts)

    def write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        # Ranges touching [offset, end] (adjacent ones too) merge into one.
        lo = bisect_left(self.starts, offset)
        if lo and self.starts[lo - 1] + len(self.chunks[lo - 1]) >= offset:
            lo -= 1
        hi = bisect_right(self.starts, end)
        if hi == lo + 1 and self.starts[lo] + len(self.chunks[lo]) == offset:
            # Right after one range and touching no other (sequential writes): append in place,
            # rather than copying the whole range again for every write.
            self.chunks[lo] += data
            self.nbytes += len(data)
            return
        if lo == hi:
            self.starts.insert(lo, offset)
            self.chunks.insert(lo, bytearray(data))
            self.nbytes += len(data)
            return
        start = min(offset, self.starts[lo])
        last_end = max(end, self.starts[hi - 1] + len(self.chunks[hi - 1]))
        merged = bytearray(last_end - start)
        for s, chunk in zip(self.starts[lo:hi], self.chunks[lo:hi], strict=True):
            merged[s - start : s - start + len(chunk)] = chunk
            self.nbytes -= len(chunk)
        merged[offset - start : end - start] = data
        self.starts[lo:hi] = [start]
        self.chunks[lo:hi] = [merged]
        self.nbytes += len(merged)

    def overlay(self, buf: bytearray, start: int) -> None:
        """Copy the dirty bytes that fall in [start, start+len(buf)) over `buf`."""
        end = start + len(buf)
        i = max(bisect_right(self.starts, start) - 1, 0)
        while i < len(self.starts) and self.starts[i] < end:
            s, chunk = self.starts[i], self.chunks[i]
            a, b = max(start, s), min(end, s + len(chunk))
            if a < b:
                buf[a - start : b - start] = memoryview(chunk)[a - s : b - s]
            i += 1

    def truncate(self, size: int) -> None:
        """Forget dirty bytes at or beyond `size`."""
        keep = bisect_left(self.starts, size)
        for chunk in self.chunks[keep:]:
            self.nbytes -= len(chunk)
        del self.starts[keep:], self.chunks[keep:]
        if self.starts and self.starts[-1] + len(self.chunks[-1]) > size:
            cut = self.starts[-1] + len(self.chunks[-1]) - size
            del self.chunks[-1][-cut:]
            self.nbytes -= cut

    def ranges(self) -> list[tuple[int, bytearray]]:
        return list(zip(self.starts, self.chunks, strict=True))

    def take(self) -> list[tuple[int, bytearray]]:
        """The ranges, leaving the buffer empty."""
        out = self.ranges()
        self.starts, self.chunks, self.nbytes = [], [], 0
        return out

    @property
    def end(self) -> int:
        return self.starts[-1] + len(self.chunks[-1]) if self.starts else 0
