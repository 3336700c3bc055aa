"""AWS Signature Version 4 verification for S3: Authorization header, presigned URLs, chunks
(and, from the same entry point, SigV2 presigned URLs: `s3api.sigv2`).

The input is a framework-independent `SignedRequest`: the path and query exactly as sent on the
wire, and the headers. The output is an `AuthContext`, which the aws-chunked decoder needs to
verify chunk and trailer signatures chained from the request's (seed) signature.

Canonicalization follows S3's variant of SigV4: the path is not normalized, and each segment is
URI-encoded once (RFC 3986 unreserved characters kept, "/" kept). We decode what the client sent
and re-encode it, so clients that percent-encode more or less than strictly needed still verify.
In the query string a literal "+" means a space, as for the handlers that read the parameters.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import lru_cache
from urllib.parse import quote, unquote_to_bytes

from s3api import sigv2
from s3api.errors import S3Error, expired_request

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW = timedelta(minutes=15)
MAX_PRESIGN_EXPIRES = 604800  # one week, AWS's limit

_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_AMZ_DATE_FIELDS = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_PAYLOAD_MARKERS = frozenset({
    UNSIGNED_PAYLOAD, STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER,
    "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER",
})
_PRESIGN_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                   "X-Amz-SignedHeaders", "X-Amz-Signature")

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def header_map(headers: Headers) -> dict[str, str]:
    """Lower-cased header names; repeated headers joined with "," as SigV4 canonicalizes them."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    merged: dict[str, str] = {}
    for name, value in pairs:
        lname = name.lower()
        merged[lname] = f"{merged[lname]},{value}" if lname in merged else value
    return merged


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What verification needs of an HTTP request; `now` is the server's aware UTC time."""

    method: str
    raw_path: str  # percent-encoded, as on the wire, without the query
    raw_query: str  # as on the wire, without "?"
    headers: Headers  # must include "host" (the handler maps HTTP/2's :authority to it)
    now: datetime
    virtual_bucket: str | None = None  # the bucket a virtual-hosted Host names (SigV2 signs it)


@dataclass(frozen=True, slots=True)
class AuthContext:
    """A verified request's identity, and what chunk/trailer signature checks chain from."""

    access_key: str
    region: str
    signing_key: bytes = field(repr=False)  # a secret: keep it out of logs
    amz_date: str  # 20130524T000000Z
    scope: str  # 20130524/us-east-1/s3/aws4_request
    seed_signature: str
    payload_hash: str  # hex SHA-256, UNSIGNED-PAYLOAD, or a STREAMING-* marker
    presigned: bool


@dataclass(frozen=True, slots=True)
class _Claim:
    """The signature parameters a request carries, from its header or its query."""

    access_key: str
    date: str
    region: str
    signed_headers: list[str]
    signature: str
    amz_date: str
    payload_hash: str


def authenticate(request: SignedRequest, secret_for: Callable[[str], str | None]) -> AuthContext | None:
    """Verify the request's SigV4 signature; None if it carries none (an anonymous request)."""
    headers = header_map(request.headers)
    query = _parse_query(request.raw_query)
    names = {name for name, _ in query}
    authorization = headers.get("authorization")
    if authorization is not None and "X-Amz-Algorithm" in names:
        raise S3Error("InvalidArgument", "Only one auth mechanism allowed; only the X-Amz-Algorithm "
                      "query parameter or the Authorization header should be specified")
    if authorization is not None:
        claim = _header_claim(authorization, headers, request.now)
        excluded = ()
    elif "X-Amz-Algorithm" in names:
        claim = _query_claim(dict(query), headers, request.now)
        excluded = ("X-Amz-Signature",)
    elif sigv2.is_presigned(names):
        # botocore and s3cmd presign with SigV2 unless configured for s3v4.
        return _sigv2_presigned(request, query, headers, secret_for)
    else:
        return None
    secret = secret_for(claim.access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=claim.access_key)
    key = signing_key(secret, claim.date, claim.region)
    scope = f"{claim.date}/{claim.region}/s3/aws4_request"
    canonical = canonical_request(
        request.method, request.raw_path, request.raw_query, headers, claim.signed_headers,
        claim.payload_hash, excluded,
    )
    to_sign = string_to_sign(claim.amz_date, scope, canonical)
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not _same_signature(expected, claim.signature):
        raise S3Error(
            "SignatureDoesNotMatch", AWSAccessKeyId=claim.access_key, StringToSign=to_sign,
            SignatureProvided=claim.signature, CanonicalRequest=canonical,
        )
    return AuthContext(
        access_key=claim.access_key, region=claim.region, signing_key=key, amz_date=claim.amz_date,
        scope=scope, seed_signature=expected, payload_hash=claim.payload_hash,
        presigned=authorization is None,
    )


def _sigv2_presigned(request: SignedRequest, query: list[tuple[str, str]], headers: dict[str, str],
                     secret_for: Callable[[str], str | None]) -> AuthContext:
    """A SigV2 presigned URL: the body is unsigned; nothing chains from its signature."""
    resource = request.raw_path or "/"
    if request.virtual_bucket:
        resource = f"/{request.virtual_bucket}{resource}"
    access_key = sigv2.verify_presigned(request.method, resource, query, headers, request.now,
                                        secret_for)
    return AuthContext(access_key=access_key, region="", signing_key=b"", amz_date="", scope="",
                       seed_signature="", payload_hash=UNSIGNED_PAYLOAD, presigned=True)


def _header_claim(authorization: str, headers: dict[str, str], now: datetime) -> _Claim:
    """The claim of an `Authorization: AWS4-HMAC-SHA256 Credential=..., ...` header."""
    algorithm, _, rest = authorization.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise S3Error("InvalidRequest", "The authorization mechanism you have provided is not "
                      f"supported. Please use {ALGORITHM}.")
    fields = {}
    for part in rest.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    if not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
        raise S3Error("AuthorizationHeaderMalformed", "The authorization header is malformed; "
                      "it must have Credential, SignedHeaders and Signature.")
    access_key, date, region = _parse_credential(fields["Credential"], "AuthorizationHeaderMalformed")
    amz_date, request_time = _request_date(headers)
    if amz_date[:8] != date:
        raise S3Error("AuthorizationHeaderMalformed", f"The authorization header is malformed; "
                      f"Invalid credential date. Date is not the same as X-Amz-Date: {amz_date[:8]}.")
    if abs(now - request_time) > MAX_SKEW:
        raise S3Error("RequestTimeTooSkewed", RequestTime=amz_date, ServerTime=_iso(now),
                      MaxAllowedSkewMilliseconds=str(int(MAX_SKEW.total_seconds() * 1000)))
    payload_hash = headers.get("x-amz-content-sha256")
    if payload_hash is None:
        raise S3Error("InvalidRequest", "Missing required header for this request: "
                      "x-amz-content-sha256")
    if payload_hash not in _PAYLOAD_MARKERS and not _HEX_SHA256.fullmatch(payload_hash):
        raise S3Error("InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                      "STREAMING-..., or a valid sha256 value.", ArgumentName="x-amz-content-sha256",
                      ArgumentValue=payload_hash)
    signed = _signed_headers(fields["SignedHeaders"], headers, "AuthorizationHeaderMalformed")
    return _Claim(access_key, date, region, signed, fields["Signature"], amz_date, payload_hash)


def _query_claim(params: dict[str, str], headers: dict[str, str], now: datetime) -> _Claim:
    """The claim of a presigned URL's X-Amz-* query parameters; checks its validity window."""
    error = "AuthorizationQueryParametersError"
    if not all(params.get(name) for name in _PRESIGN_PARAMS):
        raise S3Error(error, "Query-string authentication version 4 requires the "
                      + ", ".join(_PRESIGN_PARAMS) + " parameters.")
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise S3Error(error, f"X-Amz-Algorithm only supports \"{ALGORITHM}\".")
    access_key, date, region = _parse_credential(params["X-Amz-Credential"], error)
    amz_date = params["X-Amz-Date"]
    try:
        start = _parse_amz_date(amz_date)
        expires = int(params["X-Amz-Expires"])
    except ValueError:
        raise S3Error(error, "X-Amz-Date must be in the ISO8601 Long Format "
                      "\"yyyyMMdd'T'HHmmss'Z'\" and X-Amz-Expires an integer.") from None
    if not 0 <= expires <= MAX_PRESIGN_EXPIRES:
        raise S3Error(error, f"X-Amz-Expires must be between 0 and {MAX_PRESIGN_EXPIRES} seconds.")
    if amz_date[:8] != date:
        raise S3Error(error, "Invalid credential date. Date is not the same as X-Amz-Date.")
    if start - now > MAX_SKEW:
        raise S3Error("AccessDenied", "Request is not valid yet")
    if now > start + timedelta(seconds=expires):
        raise expired_request(_iso(start + timedelta(seconds=expires)), _iso(now))
    signed = _signed_headers(params["X-Amz-SignedHeaders"], headers, error)
    # A presigned URL's payload is unsigned unless the presigner signed x-amz-content-sha256.
    payload_hash = headers["x-amz-content-sha256"] if "x-amz-content-sha256" in signed else UNSIGNED_PAYLOAD
    return _Claim(access_key, date, region, signed, params["X-Amz-Signature"], amz_date, payload_hash)


def _parse_credential(credential: str, error: str) -> tuple[str, str, str]:
    """(access key, date, region) of "AK/20130524/us-east-1/s3/aws4_request"."""
    parts = credential.rsplit("/", 4)
    if len(parts) != 5 or not all(parts) or parts[3:] != ["s3", "aws4_request"]:
        raise S3Error(error, f"Error parsing the Credential parameter: {credential!r}; expected "
                      "<access key>/<yyyymmdd>/<region>/s3/aws4_request.")
    return parts[0], parts[1], parts[2]


def _signed_headers(value: str, headers: dict[str, str], error: str) -> list[str]:
    """The SignedHeaders list: must cover host and every x-amz-* header present."""
    signed = value.lower().split(";")
    if "host" not in signed:
        raise S3Error(error, "SignedHeaders must include host.")
    missing = [name for name in signed if name not in headers]
    if missing:
        raise S3Error(error, f"Signed headers are missing from the request: {';'.join(missing)}")
    # Unsigned x-amz-* headers could be injected in transit to alter the operation.
    unsigned = sorted(name for name in headers if name.startswith("x-amz-") and name not in signed)
    if unsigned:
        raise S3Error("AccessDenied", "There were headers present in the request which were "
                      "not signed", HeadersNotSigned=", ".join(unsigned))
    return signed


def _parse_amz_date(value: str) -> datetime:
    """An ISO 8601 basic timestamp (20261124T143000Z) as a UTC datetime; ValueError if it is not
    one. (A regular expression: `datetime.strptime` took 4.5 µs here, against 1.6.)"""
    fields = _AMZ_DATE_FIELDS.fullmatch(value)
    if fields is None:
        raise ValueError(f"not an ISO 8601 basic timestamp: {value!r}")
    return datetime(*map(int, fields.groups()), tzinfo=UTC)


def _request_date(headers: dict[str, str]) -> tuple[str, datetime]:
    """The request's ISO 8601 basic timestamp and its time, from X-Amz-Date or else the Date
    header."""
    try:
        if "x-amz-date" in headers:
            value = headers["x-amz-date"].strip()
            return value, _parse_amz_date(value)
        if "date" in headers:
            when = parsedate_to_datetime(headers["date"]).astimezone(UTC).replace(microsecond=0)
            return when.strftime(_AMZ_DATE), when
    except (ValueError, TypeError):
        pass
    raise S3Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")


def _iso(moment: datetime) -> str:
    """ISO 8601 with "Z", as AWS reports times in its errors."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Decoded (name, value) pairs of a raw query string; "+" decodes to a space."""
    pairs = []
    for piece in raw_query.split("&"):
        if piece:
            name, _, value = piece.replace("+", " ").partition("=")
            pairs.append((unquote_to_bytes(name).decode("utf-8", "surrogateescape"),
                          unquote_to_bytes(value).decode("utf-8", "surrogateescape")))
    return pairs


def canonical_uri(raw_path: str) -> str:
    """S3's canonical URI: the path decoded, then each byte re-encoded once ("/" kept)."""
    # quote() keeps exactly RFC 3986's unreserved characters (plus `safe`) and emits %XX.
    return quote(unquote_to_bytes(raw_path or "/"), safe="/")


def canonical_query(raw_query: str, exclude: Iterable[str] = ()) -> str:
    """Canonical query string: every parameter URI-encoded, sorted by name then value."""
    encoded = sorted(
        (quote(name.encode("utf-8", "surrogateescape"), safe=""),
         quote(value.encode("utf-8", "surrogateescape"), safe=""))
        for name, value in _parse_query(raw_query)
        if name not in exclude
    )
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_request(
    method: str, raw_path: str, raw_query: str, headers: dict[str, str], signed_headers: list[str],
    payload_hash: str, exclude_params: Iterable[str] = (),
) -> str:
    """The SigV4 canonical request; `headers` as returned by `header_map`."""
    canonical_headers = "".join(
        f"{name}:{' '.join(headers[name].split())}\n" for name in sorted(signed_headers)
    )
    return "\n".join([
        method.upper(), canonical_uri(raw_path), canonical_query(raw_query, exclude_params),
        canonical_headers, ";".join(sorted(signed_headers)), payload_hash,
    ])


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    """The SigV4 string to sign for a canonical request."""
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


@lru_cache(maxsize=256)
def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    """The derived SigV4 key; cached because it only changes daily per secret and region."""
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign_chunk(ctx: AuthContext, previous_signature: str, chunk_sha256: str) -> str:
    """Signature of one aws-chunked chunk, given the hex SHA-256 of its data."""
    to_sign = (f"{ALGORITHM}-PAYLOAD\n{ctx.amz_date}\n{ctx.scope}\n{previous_signature}\n"
               f"{EMPTY_SHA256}\n{chunk_sha256}")
    return hmac.new(ctx.signing_key, to_sign.encode(), hashlib.sha256).hexdigest()


def sign_trailer(ctx: AuthContext, previous_signature: str, canonical_trailers: bytes) -> str:
    """Signature of the trailer section ("name:value\\n" per trailer), chained from the last chunk."""
    trailer_hash = hashlib.sha256(canonical_trailers).hexdigest()
    to_sign = f"{ALGORITHM}-TRAILER\n{ctx.amz_date}\n{ctx.scope}\n{previous_signature}\n{trailer_hash}"
    return hmac.new(ctx.signing_key, to_sign.encode(), hashlib.sha256).hexdigest()


def verify_chunk_signature(
    ctx: AuthContext, previous_signature: str, chunk_sha256: str, signature: str
) -> None:
    """Raise SignatureDoesNotMatch unless `signature` signs the chunk (constant-time compare)."""
    if not _same_signature(sign_chunk(ctx, previous_signature, chunk_sha256), signature):
        raise S3Error("SignatureDoesNotMatch")


def verify_trailer_signature(
    ctx: AuthContext, previous_signature: str, canonical_trailers: bytes, signature: str
) -> None:
    """Raise SignatureDoesNotMatch unless `signature` signs the trailers (constant-time compare)."""
    if not _same_signature(sign_trailer(ctx, previous_signature, canonical_trailers), signature):
        raise S3Error("SignatureDoesNotMatch")


def _same_signature(expected: str, provided: str) -> bool:
    """Constant-time comparison of hex signatures (bytes: compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(expected.encode(), provided.strip().lower().encode("utf-8", "replace"))
