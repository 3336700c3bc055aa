"""Fixtures: a real botocore S3 client whose requests are captured and answered in-process."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import botocore.session
import pytest
from botocore.auth import _host_from_url
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.config import Config

from s3api import sigv4
from s3api.sigv4 import AuthContext, SignedRequest, authenticate

ACCESS_KEY = "AKIDCARTRIDGETEST"
SECRET_KEY = "s3cr3t/K7MDENG+bPxRfiCYEXAMPLEKEY"


def secret_for(access_key: str) -> str | None:
    """The test credential store."""
    return SECRET_KEY if access_key == ACCESS_KEY else None


class _Raw:
    """The minimal raw-response object AWSResponse reads its body from."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_kwargs):
        yield self._body


Responder = Callable[[AWSPreparedRequest], tuple[int, dict[str, str], bytes]]


class FakeS3:
    """A botocore S3 client; each request is recorded and answered by `respond` (no network)."""

    def __init__(self, endpoint: str) -> None:
        session = botocore.session.get_session()
        self.client = session.create_client(
            "s3", region_name="us-east-1", endpoint_url=endpoint,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            # Without signature_version, botocore presigns with SigV2 (see test_sigv2.py).
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          signature_version="s3v4"),
        )
        self.requests: list[AWSPreparedRequest] = []
        self.respond: Responder = lambda request: (200, {}, b"")
        self.client.meta.events.register("before-send.s3", self._send)

    def _send(self, request: AWSPreparedRequest, **_kwargs) -> AWSResponse:
        self.requests.append(request)
        status, headers, body = self.respond(request)
        return AWSResponse(request.url, status, headers, _Raw(body))

    @property
    def last(self) -> AWSPreparedRequest:
        return self.requests[-1]


def to_signed_request(request: AWSPreparedRequest, now: datetime | None = None) -> SignedRequest:
    """What the HTTP handler would build from the request as it arrives on the wire."""
    url = urlsplit(request.url)
    headers = [(name, value.decode() if isinstance(value, bytes) else value)
               for name, value in request.headers.items()]
    if not any(name.lower() == "host" for name, _ in headers):
        # urllib3 adds Host when sending; botocore signs the same value.
        headers.append(("Host", _host_from_url(request.url)))
    return SignedRequest(request.method, url.path, url.query, headers, now or datetime.now(UTC))


@pytest.fixture
def fake_s3() -> FakeS3:
    return FakeS3("http://cartridge.test:9000")


@pytest.fixture
def fake_s3_tls() -> FakeS3:
    """Over https botocore sends streaming bodies aws-chunked with a trailing checksum."""
    return FakeS3("https://cartridge.test")


@pytest.fixture
def signed() -> Callable[..., SignedRequest]:
    return to_signed_request


@pytest.fixture
def secrets() -> Callable[[str], str | None]:
    return secret_for


AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"


def aws_example_request(signature: str = AWS_SEED) -> SignedRequest:
    """The PUT of "Signature Calculation: Transfer Payload in Multiple Chunks" (AWS docs)."""
    signed_headers = ("content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                      "x-amz-decoded-content-length;x-amz-storage-class")
    headers = {
        "Host": "s3.amazonaws.com", "x-amz-date": "20130524T000000Z",
        "x-amz-storage-class": "REDUCED_REDUNDANCY", "Content-Encoding": "aws-chunked",
        "x-amz-content-sha256": sigv4.STREAMING_SIGNED,
        "x-amz-decoded-content-length": "66560", "Content-Length": "66824",
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/"
                         f"aws4_request,SignedHeaders={signed_headers},Signature={signature}",
    }
    return SignedRequest("PUT", "/examplebucket/chunkObject.txt", "", headers,
                         datetime(2013, 5, 24, 0, 1, tzinfo=UTC))


@pytest.fixture(scope="session")
def aws_example_headers() -> dict[str, str]:
    """The headers of the AWS docs' chunked-upload example."""
    return dict(aws_example_request().headers)


@pytest.fixture(scope="session")
def aws_example() -> AuthContext:
    """The AuthContext of the AWS docs' chunked-upload example (seed signature verified)."""
    return authenticate(aws_example_request(), lambda _: AWS_SECRET)
