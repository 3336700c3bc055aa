"""A real `cartridge-s3-server` process on a fresh cartridge, and clients configured for it."""

from __future__ import annotations

import hashlib
import http.client
import itertools
import os
import re
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

ACCESS_KEY = "AKIDCARTRIDGES3TEST"
SECRET_KEY = "s3cr3t/K7MDENG+bPxRfiCYEXAMPLEKEY"
BIN = Path(sys.executable).parent
_names = itertools.count()
OUTPUT_LINES = 2000  # of a server's output, kept for failure messages


class Server:
    """A `cartridge-s3-server` process on `cart`; `stop()` checks that it shut down cleanly."""

    def __init__(self, cart: Path, *args: str, blocks: int = 262144) -> None:
        self.cart = cart
        env = dict(os.environ, CARTRIDGE_ACCESS_KEY=ACCESS_KEY, CARTRIDGE_SECRET_KEY=SECRET_KEY)
        self.proc = subprocess.Popen(
            [str(BIN / "cartridge-s3-server"), "--cartridge-path", str(cart), "--blocks",
             str(blocks), "-P", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
            errors="replace")  # no decoding error may stop the reader below
        # The server's last lines of output, for failure messages. The pipe is read to its end
        # by a thread: a server whose output nobody reads blocks once the pipe (64 KiB) is full.
        self.output: deque[str] = deque(maxlen=OUTPUT_LINES)
        self.port: int | None = None
        self._listening = threading.Event()  # set once the port is known, or at end of output
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        if not self._listening.wait(30) or self.port is None:
            self.proc.kill()
            self.proc.wait(10)
            self._reader.join(10)
            pytest.fail("server did not start:\n" + self.log())
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def _read_output(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            if self.port is None:
                match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                if match:
                    self.port = int(match[1])
                    self._listening.set()
        self._listening.set()

    def log(self) -> str:
        """The server's last lines of output."""
        return "".join(self.output)

    def stop(self) -> None:
        """SIGTERM; the server must exit with status 0."""
        self.proc.terminate()
        self.wait(20)

    def wait(self, timeout: float) -> None:
        """Wait for the server to exit, with status 0, within `timeout` seconds."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            self._reader.join(10)
            pytest.fail(f"server did not exit within {timeout:g} s:\n" + self.log())
        self._reader.join(10)  # the output's end, for the message below
        assert self.proc.returncode == 0, self.log()

    def client(self, host: str | None = None, **config):
        """boto3 for this server (reached as `host`, by default 127.0.0.1), no retries."""
        return client_for(self.url("", host), **config)

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or '127.0.0.1'}:{self.port}{path}"

    @staticmethod
    def sign(method: str, url: str, headers: dict | None = None, body: bytes = b"",
             payload_hash: str | None = None) -> dict[str, str]:
        """`headers` plus botocore's SigV4 headers for a request to `url`."""
        request = AWSRequest(method, url, data=body, headers={
            **(headers or {}),
            "x-amz-content-sha256": payload_hash or hashlib.sha256(body).hexdigest()})
        S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(request)
        return dict(request.headers.items())

    def request(self, method: str, url: str, body: bytes = b"", headers: dict | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        """One request signed by botocore (SigV4) for `url`, whose host may be any name (e.g.
        a virtual-hosted bucket.domain): it is sent to this server with that Host header.
        Returns (status, lower-cased headers, body)."""
        return self.send(method, url, body, self.sign(method, url, headers, body))

    def send(self, method: str, url: str, body: bytes = b"", headers: dict | None = None
             ) -> tuple[int, dict[str, str], bytes]:
        """`url`'s path and query sent to this server as they are, with Host from the URL."""
        return raw_request(self.port, method, url, body, headers)


def raw_request(port: int, method: str, url: str, body: bytes = b"",
                headers: dict | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send `url`'s path and query to 127.0.0.1:`port` with Host taken from the URL."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", parts.netloc)
        for name, value in (headers or {}).items():
            if name.lower() != "host":
                connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())
    finally:
        connection.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    running = Server(tmp_path_factory.mktemp("s3server") / "storage.cart")
    yield running
    running.stop()


@pytest.fixture
def own_server(tmp_path):
    """Start (and finally stop) servers of its own on one fresh cartridge: `own_server(*args)`."""
    started: list[Server] = []

    def start(*args: str, blocks: int = 262144) -> Server:
        started.append(Server(tmp_path / "own.cart", *args, blocks=blocks))
        return started[-1]

    yield start
    for running in started:
        if running.proc.poll() is None:
            running.stop()


def client_for(endpoint: str, access: str = ACCESS_KEY, secret: str = SECRET_KEY, **config):
    """boto3 for `endpoint` without retries (default configuration otherwise)."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=access, aws_secret_access_key=secret,
                        config=Config(retries={"max_attempts": 1}, **config))


@pytest.fixture(scope="session")
def credentials() -> tuple[str, str]:
    return ACCESS_KEY, SECRET_KEY


@pytest.fixture(scope="session")
def s3(server):
    """boto3 with its default configuration (CRC32 request checksums, response validation)."""
    return boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)


@pytest.fixture
def bucket(s3) -> str:
    name = f"test-{os.getpid()}-{next(_names)}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def make_client(server):
    """A boto3 client with other credentials or configuration."""

    def make(access: str = ACCESS_KEY, secret: str = SECRET_KEY, **config):
        return client_for(server.endpoint, access, secret, **config)

    return make


@pytest.fixture
def client_env(server, tmp_path) -> dict[str, str]:
    """Environment for the aws cli (credentials, no user config)."""
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-east-1\n")
    return dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
                AWS_DEFAULT_REGION="us-east-1", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
