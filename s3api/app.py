"""The S3 HTTP front end: a quart-trio app over the shared FileSystem.

Every request is authenticated (SigV4 header or presigned query), routed by method, bucket, key
and the sub-resource query parameters we act on (unknown parameters such as `x-id` are ignored),
and answered by a handler in `s3api.handlers`. Errors render as S3 XML with the request id.

Bodies are streamed: handlers iterate the request body (with back-pressure, see `_Body`) and
GET responses stream from an async generator, so memory stays bounded whatever the object size.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qsl, unquote

import trio
from quart import Response, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody, TrioRequest
from werkzeug.exceptions import RequestEntityTooLarge

from cartridgefs.errors import CartridgeError
from cartridgefs.fs.filesystem import Ctx, FileSystem
from s3api import sigv4
from s3api.chunked import BodyVerifier
from s3api.errors import S3Error, error_xml, from_cartridge_error

log = logging.getLogger(__name__)

MAX_OBJECT_SIZE = 5 << 30  # 5 GiB, AWS's single-PUT limit
# aws-chunked framing adds ~90 bytes per chunk (64 KiB chunks at least): 1% is ample.
MAX_BODY = MAX_OBJECT_SIZE + MAX_OBJECT_SIZE // 100 + (1 << 20)
BODY_TIMEOUT = 60.0  # seconds without any body bytes before an upload is abandoned
BUFFERED_BODY = 512 << 10  # stop reading from the socket while this much is waiting
# AWS allows 8 KiB of request head for a PUT; we allow twice that for any request (a head that
# arrives in pieces is also bounded by hypercorn's h11_max_incomplete_size, see server.py).
MAX_HEADER_SECTION = 16 << 10


@dataclass
class Settings:
    credentials: dict[str, str]
    region: str = "us-east-1"
    domain: str | None = None
    body_timeout: float = BODY_TIMEOUT


@dataclass
class S3Request:
    """What handlers see of a request."""

    method: str
    bucket: str | None
    key: str | None
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    auth: sigv4.AuthContext | None
    request_id: str
    fs: FileSystem
    settings: Settings
    ctx: Ctx = field(default_factory=lambda: Ctx(0, 0, origin="s3"))
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    async def chunks(self):
        """The request body as it arrives, each wait for the client bounded by the body timeout."""
        body = request.body
        while True:
            if body.ready:  # no waiting, so no timeout: a cancel scope costs more than a small body
                chunk = await _next_piece(body)
            else:
                with trio.move_on_after(self.settings.body_timeout) as scope:
                    chunk = await _next_piece(body)
                if scope.cancelled_caught:
                    raise S3Error("RequestTimeout", "No body bytes arrived in "
                                  f"{self.settings.body_timeout:g} seconds.")
            if chunk is None:
                return
            yield chunk

    async def read_small(self, limit: int = 8 << 20) -> bytes:
        """A small body (an XML document) read whole, verified against its declared digests
        (x-amz-content-sha256, Content-MD5, x-amz-checksum-*); at most `limit` bytes."""
        verifier = BodyVerifier.from_headers(self.raw_headers, self.auth)
        parts, size = [], 0
        async for chunk in self.chunks():
            payload = verifier.feed(chunk)
            size += len(payload)
            if size > limit:
                raise S3Error("MaxMessageLengthExceeded")
            parts.append(payload)
        verifier.finish()
        return b"".join(parts)


# ------------------------------------------------------------------ body back-pressure


class _Body(TrioBody):
    """Quart's body, keeping the arriving pieces as they are instead of copying them into one
    bytearray (and out again) on the event loop; and it signals when the handler read them, so
    the receiving side can wait instead of buffering a whole upload in memory."""

    def __init__(self, expected_content_length, max_content_length) -> None:
        super().__init__(expected_content_length, max_content_length)
        self._pieces: list[bytes] = []
        self.buffered = 0  # bytes received and not read yet
        self._total = 0
        self.drained = trio.Event()

    def append(self, data: bytes) -> None:
        if not data or self._must_raise is not None:
            return
        self._pieces.append(data)
        self.buffered += len(data)
        self._total += len(data)
        self._has_data.set()
        if self._max_content_length is not None and self._total > self._max_content_length:
            self._must_raise = RequestEntityTooLarge()
            self.set_complete()

    @property
    def ready(self) -> bool:
        """Whether `__anext__` answers without waiting for the client."""
        return self._must_raise is not None or self._complete.is_set() or self._has_data.is_set()

    def _take(self) -> bytes:
        pieces, self._pieces, self.buffered = self._pieces, [], 0
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def __anext__(self) -> bytes:
        if self._must_raise is not None:
            raise self._must_raise
        if not self._complete.is_set():
            await self._has_data.wait()
        if self._must_raise is not None:
            raise self._must_raise
        if self._complete.is_set() and not self._pieces:
            raise StopAsyncIteration
        self._has_data.clear()
        self.drained.set()
        return self._take()

    def __await__(self):
        if self._must_raise is not None:
            raise self._must_raise
        yield from self._complete.wait().__await__()
        if self._must_raise is not None:
            raise self._must_raise
        return self._take()


async def _next_piece(body: _Body) -> bytes | None:
    """The next bytes of the body, None at its end."""
    try:
        return await body.__anext__()
    except StopAsyncIteration:
        return None
    except RequestEntityTooLarge:
        raise S3Error("EntityTooLarge") from None


class _Request(TrioRequest):
    body_class = _Body


class _Connection(TrioASGIHTTPConnection):
    async def handle_messages(self, nursery, request, receive) -> None:  # type: ignore[override]
        body = request.body
        while True:
            while body.buffered >= BUFFERED_BODY and not body._complete.is_set():
                body.drained = trio.Event()
                await body.drained.wait()
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
            elif message["type"] == "http.disconnect":
                break
        nursery.cancel_scope.cancel()


class _App(QuartTrio):
    asgi_http_class = _Connection
    request_class = _Request

    async def dispatch_request(self, request_context=None):  # no URL routing: S3 routes itself
        return await handle(self.extensions["s3"])


# ------------------------------------------------------------------------------ the app


def create_app(fs: FileSystem, settings: Settings) -> QuartTrio:
    app = _App(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["BODY_TIMEOUT"] = None  # enforced per chunk in S3Request.chunks
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.extensions["s3"] = (fs, settings)
    return app


_CHANGING_METHODS = frozenset({"PUT", "POST", "DELETE"})


def _request_id() -> str:
    return secrets.token_hex(8).upper()


def _split_target(raw_path: str, host: str, domain: str | None) -> tuple[str | None, str | None, bool]:
    """(bucket, key, virtual): from the path, or from the Host for virtual-hosted style under
    `domain` (virtual True)."""
    hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    hostname = hostname.lower()
    if domain and hostname.endswith("." + domain.lower()):
        bucket = hostname[: -len(domain) - 1]
        key = raw_path[1:] if raw_path.startswith("/") else raw_path
        return bucket, (unquote(key, errors="surrogateescape") or None), True
    path = raw_path[1:] if raw_path.startswith("/") else raw_path
    if not path:
        return None, None, False
    bucket, slash, key = path.partition("/")
    bucket = unquote(bucket)
    return bucket, (unquote(key, errors="surrogateescape") if slash and key else None), False


def error_response(err: S3Error, request_id: str, method: str, resource: str) -> Response:
    body = b"" if method == "HEAD" or err.status == 304 else error_xml(err, request_id, resource)
    response = Response(body, status=err.status, content_type="application/xml")
    response.headers["x-amz-request-id"] = request_id
    response.headers["x-amz-id-2"] = request_id
    if method == "HEAD" and err.status != 304:
        # HEAD errors have no body: clients read the code from this header (as AWS sends it).
        response.headers["x-amz-error-code"] = err.code
    return response


def _close_if_unread(response: Response) -> Response:
    """An error answered before the whole body arrived: the rest of the body is still on the
    wire, so the connection cannot carry another request. Say so (clients then reconnect)."""
    if not request.body._complete.is_set():
        response.headers["Connection"] = "close"
    return response


async def handle(app_state) -> Response:
    from s3api.handlers import route

    fs, settings = app_state
    request_id = _request_id()
    scope = request.scope
    raw_path = scope.get("raw_path", b"").decode("latin-1") or request.path
    raw_path = raw_path.split("?", 1)[0]
    raw_query = scope.get("query_string", b"").decode("latin-1")
    raw_headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]]
    headers = sigv4.header_map(raw_headers)
    method = request.method
    resource = unquote(raw_path)
    bucket, key, virtual = _split_target(raw_path, headers.get("host", ""), settings.domain)
    try:
        try:
            if sum(len(name) + len(value) + 4 for name, value in raw_headers) > MAX_HEADER_SECTION:
                raise S3Error("RequestHeaderSectionTooLarge",
                              MaxSizeAllowed=str(MAX_HEADER_SECTION))
            auth = sigv4.authenticate(
                sigv4.SignedRequest(method, raw_path, raw_query, raw_headers, datetime.now(UTC),
                                    virtual_bucket=bucket if virtual else None),
                settings.credentials.get,
            )
            if auth is None:
                raise S3Error("AccessDenied", "Anonymous access is not allowed; sign the request.")
            query = dict(parse_qsl(raw_query.replace("+", "%20"), keep_blank_values=True))
            s3req = S3Request(method, bucket, key, query, headers, auth, request_id, fs, settings,
                              raw_headers=raw_headers)
            response = await route(s3req)
            if method in _CHANGING_METHODS and response.status_code < 300:
                # A success is a promise: what it changed is committed and synced first (concurrent
                # requests share one commit).
                await fs.durable()
        except CartridgeError as exc:
            log.info("request %s %s failed: %r", method, resource, exc)
            raise from_cartridge_error(exc, bucket=bucket, key=key) from exc
    except S3Error as err:
        if err.status >= 500:
            log.warning("%s %s: %s", method, resource, err)
        return _close_if_unread(error_response(err, request_id, method, resource))
    except Exception:
        log.exception("%s %s failed", method, resource)
        return _close_if_unread(error_response(S3Error("InternalError"), request_id, method, resource))
    response.headers["x-amz-request-id"] = request_id
    response.headers["x-amz-id-2"] = request_id
    return response
