"""Upload bodies: an incremental aws-chunked decoder, and one verifier for every body kind.

`BodyVerifier.from_headers(headers, auth)` is what PutObject and UploadPart use: `feed()` each
network read and store what it returns (the decoded payload), then `finish()` checks the lengths,
digests and signatures and returns the MD5 (the ETag) and the checksums. Everything is hashed in
the one pass that decodes, and memory stays constant: unsigned chunks stream straight through,
signed chunks are held (one at a time, at most MAX_CHUNK_SIZE) until their signature verifies,
so unauthenticated bytes never reach storage.

aws-chunked framing ("\\r\\n" line ends; a bare "\\n" is tolerated):

    <hex size>[;chunk-signature=<sig>]\\r\\n <data>\\r\\n  ... repeated ...
    0[;chunk-signature=<sig>]\\r\\n
    [<trailer name>:<value>\\r\\n ...] [x-amz-trailer-signature:<sig>\\r\\n]
    \\r\\n
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from s3api import checksums
from s3api.errors import S3Error
from s3api.sigv4 import (
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    UNSIGNED_PAYLOAD,
    AuthContext,
    Headers,
    header_map,
    verify_chunk_signature,
    verify_trailer_signature,
)

MAX_CHUNK_SIZE = 16 << 20  # AWS SDKs send 64 KiB to 1 MiB chunks
_MAX_LINE = 4096
_MAX_TRAILER_BYTES = 16 << 10
_SIZE_LINE = re.compile(rb"([0-9a-fA-F]{1,16})((?:;[^;]*)*)")
_SIGNATURE = "chunk-signature"
_TRAILER_SIGNATURE = "x-amz-trailer-signature"

# Decoder states.
_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


def _malformed(detail: str) -> S3Error:
    """The error for a body that breaks the aws-chunked framing."""
    return S3Error("InvalidRequest", f"Malformed aws-chunked body: {detail}.")


class AwsChunkedDecoder:
    """Push-style aws-chunked decoder: `feed()` any slices, get the payload; then `finish()`.

    With `auth`, every chunk signature is verified, chained from the request's seed signature,
    and trailers must carry a valid x-amz-trailer-signature. Without it, signatures are ignored
    (STREAMING-UNSIGNED-PAYLOAD-TRAILER).
    """

    def __init__(self, auth: AuthContext | None = None, max_chunk: int = MAX_CHUNK_SIZE) -> None:
        self._auth = auth
        self._max_chunk = max_chunk
        self._state = _SIZE
        self._line = bytearray()  # a partial line, carried to the next feed
        self._remaining = 0  # data bytes still to come in the current chunk
        self._chunk = bytearray()  # a signed chunk's data, held until verified
        self._chunk_hash = hashlib.sha256()
        self._chunk_signature = ""
        self._previous_signature = auth.seed_signature if auth else ""
        self._trailers: dict[str, str] = {}
        self._canonical_trailers = bytearray()
        self._trailer_signature: str | None = None

    def feed(self, data: bytes) -> bytes:
        """Consume the next bytes of the body; return the payload bytes they complete."""
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._state == _DATA:
                take = min(self._remaining, end - pos)
                piece = data[pos:pos + take]
                pos += take
                self._remaining -= take
                if self._auth is None:
                    out.append(piece)
                else:
                    self._chunk_hash.update(piece)
                    self._chunk += piece
                if self._remaining == 0:
                    out.append(self._end_of_data())
                continue
            if self._state == _DONE:
                raise _malformed("data after the final chunk")
            line, pos = self._read_line(data, pos)
            if line is not None:
                self._on_line(line)
        return b"".join(out)

    def finish(self) -> dict[str, str]:
        """Check the body ended properly; return its trailers (lower-case names, signature excluded)."""
        if self._state == _TRAILER and not self._line:
            # Some clients omit the blank line that ends the trailer section: the end of the
            # body is just as unambiguous.
            self._end_of_trailers()
        if self._state != _DONE:
            raise S3Error("IncompleteBody", "The request body ended before the final aws-chunked chunk.")
        return dict(self._trailers)

    def _read_line(self, data: bytes, pos: int) -> tuple[bytes | None, int]:
        """The next complete line (without its end) and the position after it, or None."""
        newline = data.find(b"\n", pos, pos + _MAX_LINE + 1)
        stop = len(data) if newline < 0 else newline
        self._line += data[pos:stop]
        if len(self._line) > _MAX_LINE:
            raise _malformed("line too long")
        if newline < 0:
            return None, stop
        line = bytes(self._line).removesuffix(b"\r")
        self._line.clear()
        return line, newline + 1

    def _on_line(self, line: bytes) -> None:
        """Act on a complete line for the current state."""
        if self._state == _SIZE:
            self._start_chunk(line)
        elif self._state == _DATA_END:
            if line:
                raise _malformed("chunk data longer than its declared size")
            self._state = _SIZE
        elif line:
            self._add_trailer(line)
        else:
            self._end_of_trailers()

    def _start_chunk(self, line: bytes) -> None:
        """Parse a chunk-size line; a size of zero ends the data."""
        match = _SIZE_LINE.fullmatch(line)
        if not match:
            raise _malformed("bad chunk size line")
        size = int(match[1], 16)
        if size > self._max_chunk:
            raise _malformed(f"chunk of {size} bytes exceeds the {self._max_chunk} byte limit")
        extensions = {}
        for extension in match[2].decode("latin-1").split(";")[1:]:
            name, _, value = extension.partition("=")
            extensions[name.strip().lower()] = value.strip()
        if self._auth is not None:
            if _SIGNATURE not in extensions:
                raise S3Error("SignatureDoesNotMatch", "A chunk has no chunk-signature.")
            self._chunk_signature = extensions[_SIGNATURE]
        self._remaining = size
        self._state = _DATA
        if size == 0:
            self._end_of_data()
            self._state = _TRAILER

    def _end_of_data(self) -> bytes:
        """A chunk's data is complete: verify its signature, release it, expect its CRLF."""
        self._state = _DATA_END
        if self._auth is None:
            return b""
        verify_chunk_signature(self._auth, self._previous_signature,
                               self._chunk_hash.hexdigest(), self._chunk_signature)
        self._previous_signature = self._chunk_signature.lower()
        chunk = bytes(self._chunk)
        self._chunk.clear()
        self._chunk_hash = hashlib.sha256()
        return chunk

    def _add_trailer(self, line: bytes) -> None:
        """Record one "name:value" trailer line."""
        name, colon, value = line.decode("utf-8", "replace").partition(":")
        name, value = name.strip().lower(), value.strip()
        if not colon or not name:
            raise _malformed("bad trailer line")
        if name == _TRAILER_SIGNATURE:
            self._trailer_signature = value
            return
        if name in self._trailers:
            raise _malformed(f"trailer {name} sent twice")
        self._trailers[name] = value
        self._canonical_trailers += f"{name}:{value}\n".encode()
        if len(self._canonical_trailers) > _MAX_TRAILER_BYTES:
            raise _malformed("trailers too large")

    def _end_of_trailers(self) -> None:
        """The body is complete: in signed mode, any trailers must carry a valid signature."""
        if self._auth is not None and self._trailers:
            if self._trailer_signature is None:
                raise S3Error("SignatureDoesNotMatch", "The trailers have no x-amz-trailer-signature.")
            verify_trailer_signature(self._auth, self._previous_signature,
                                     bytes(self._canonical_trailers), self._trailer_signature)
        self._state = _DONE


@dataclass(frozen=True, slots=True)
class VerifiedBody:
    """A fully received, verified payload: its size, MD5 (the ETag) and checksums (base64)."""

    size: int
    md5_hex: str
    checksums: dict[str, str]  # AWS algorithm name ("CRC32") -> base64 value


class BodyVerifier:
    """Decodes (if aws-chunked) and verifies an upload body in one streaming pass."""

    def __init__(
        self, *, decoder: AwsChunkedDecoder | None = None, expected_size: int | None = None,
        content_sha256: str | None = None, content_md5: bytes | None = None,
        expected: dict[str, bytes] | None = None, trailer_algorithms: Iterable[str] = (),
        algorithms: Iterable[str] = (),
    ) -> None:
        self._decoder = decoder
        self._expected_size = expected_size
        self._content_sha256 = content_sha256
        self._content_md5 = content_md5
        self._expected = expected or {}
        self._trailer_algorithms = frozenset(trailer_algorithms)
        # Every checksum to report; the declared ones are always among them.
        self._reported = {*algorithms, *self._expected, *self._trailer_algorithms}
        self._hashers = {name: checksums.make_hasher(name) for name in {*self._reported, "MD5"}}
        self._sha256 = hashlib.sha256() if content_sha256 is not None else None
        self._size = 0

    @classmethod
    def from_headers(
        cls, headers: Headers, auth: AuthContext | None, *, extra_algorithms: Iterable[str] = ()
    ) -> BodyVerifier:
        """A verifier for what the request headers declare; `extra_algorithms` are computed too
        (e.g. CRC64NVME, which AWS stores for every object that comes without a checksum)."""
        h = header_map(headers)
        payload_hash = auth.payload_hash if auth is not None else h.get("x-amz-content-sha256")
        declared = _checksum_headers(h)
        trailer = [checksums.algorithm_name(name) for name in h.get("x-amz-trailer", "").split(",")
                   if name.strip()]
        algorithms = [*extra_algorithms]
        if "x-amz-sdk-checksum-algorithm" in h:
            algorithms.append(checksums.algorithm_name(h["x-amz-sdk-checksum-algorithm"]))
        common = dict(content_md5=_content_md5(h), expected=declared, algorithms=algorithms)
        if payload_hash in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER):
            signed = payload_hash != STREAMING_UNSIGNED_TRAILER
            if signed and (auth is None or auth.presigned):
                raise S3Error("InvalidRequest", f"{payload_hash} requires Authorization header auth.")
            if trailer and not payload_hash.endswith("-TRAILER"):
                raise S3Error("InvalidRequest", f"x-amz-trailer requires a -TRAILER content hash, "
                              f"not {payload_hash}.")
            return cls(decoder=AwsChunkedDecoder(auth if signed else None),
                       expected_size=_length(h, "x-amz-decoded-content-length"),
                       trailer_algorithms=trailer, **common)
        if payload_hash is not None and payload_hash.startswith("STREAMING-"):
            raise S3Error("NotImplemented", f"{payload_hash} is not supported.")
        if trailer:
            raise S3Error("InvalidRequest", "x-amz-trailer requires an aws-chunked body.")
        sha256 = None if payload_hash in (None, UNSIGNED_PAYLOAD) else payload_hash.lower()
        return cls(expected_size=_length(h, "content-length"), content_sha256=sha256, **common)

    @property
    def declared_size(self) -> int | None:
        """The payload size the headers announce (None if they do not)."""
        return self._expected_size

    def feed(self, data: bytes) -> bytes:
        """Consume the next bytes of the request body; return the payload bytes to store."""
        payload = self._decoder.feed(data) if self._decoder is not None else data
        self._size += len(payload)
        if self._expected_size is not None and self._size > self._expected_size:
            raise S3Error("InvalidRequest", f"The body is longer than the declared "
                          f"{self._expected_size} bytes.")
        for hasher in self._hashers.values():
            hasher.update(payload)
        if self._sha256 is not None:
            self._sha256.update(payload)
        return payload

    def finish(self) -> VerifiedBody:
        """Check that the body is complete and matches every declared digest."""
        trailers = self._decoder.finish() if self._decoder is not None else {}
        if self._expected_size is not None and self._size != self._expected_size:
            raise S3Error("IncompleteBody")
        if self._sha256 is not None and self._sha256.hexdigest() != self._content_sha256:
            raise S3Error("XAmzContentSHA256Mismatch", ClientComputedContentSHA256=self._content_sha256,
                          S3ComputedContentSHA256=self._sha256.hexdigest())
        md5 = self._hashers["MD5"].digest()
        if self._content_md5 is not None and not hmac.compare_digest(md5, self._content_md5):
            raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.",
                          ExpectedDigest=base64.b64encode(self._content_md5).decode(),
                          CalculatedDigest=base64.b64encode(md5).decode())
        expected = dict(self._expected)
        for name, value in trailers.items():
            algorithm = checksums.algorithm_name(name)
            if algorithm not in self._trailer_algorithms:
                raise S3Error("InvalidRequest", f"Trailer {name} was not declared in x-amz-trailer.")
            expected[algorithm] = checksums.decode_checksum(algorithm, value)
        missing = self._trailer_algorithms - expected.keys()
        if missing:
            raise S3Error("InvalidRequest", f"Declared trailer {checksums.header_name(min(missing))} "
                          "was not sent.")
        for algorithm, digest in expected.items():
            if not hmac.compare_digest(self._hashers[algorithm].digest(), digest):
                raise S3Error("BadDigest", f"The {checksums.header_name(algorithm)} you specified "
                              "did not match the calculated checksum.")
        return VerifiedBody(
            size=self._size, md5_hex=md5.hex(),
            checksums={name: self._hashers[name].b64() for name in sorted(self._reported)},
        )


def _checksum_headers(headers: dict[str, str]) -> dict[str, bytes]:
    """The single x-amz-checksum-<algorithm> header, decoded; InvalidRequest if several."""
    found = {}
    for name, value in headers.items():
        suffix = name.removeprefix(checksums.HEADER_PREFIX).upper()
        if name.startswith(checksums.HEADER_PREFIX) and suffix in checksums.ALGORITHMS:
            found[suffix] = checksums.decode_checksum(suffix, value)
    if len(found) > 1:
        raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- header. Multiple "
                      "checksum Types are not allowed.")
    return found


def _content_md5(headers: dict[str, str]) -> bytes | None:
    """The decoded Content-MD5 header; InvalidDigest if it is not base64 of 16 bytes."""
    value = headers.get("content-md5")
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except binascii.Error:
        digest = b""
    if len(digest) != 16:
        raise S3Error("InvalidDigest")
    return digest


def _length(headers: dict[str, str], name: str) -> int | None:
    """A non-negative integer length header, or None if absent."""
    value = headers.get(name)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise S3Error("InvalidArgument", f"{name} must be a non-negative integer.",
                      ArgumentName=name, ArgumentValue=value)
    return int(value)
