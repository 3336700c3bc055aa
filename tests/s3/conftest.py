"""A real `cartridge-s3-server` process on a fresh cartridge, and clients configured for it."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

ACCESS_KEY = "AKIDCARTRIDGES3TEST"
SECRET_KEY = "s3cr3t/K7MDENG+bPxRfiCYEXAMPLEKEY"
BIN = Path(sys.executable).parent
_names = itertools.count()


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, cart: Path) -> None:
        self.proc = proc
        self.port = port
        self.cart = cart
        self.endpoint = f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    tmp = tmp_path_factory.mktemp("s3server")
    cart = tmp / "storage.cart"
    env = dict(os.environ, CARTRIDGE_ACCESS_KEY=ACCESS_KEY, CARTRIDGE_SECRET_KEY=SECRET_KEY)
    proc = subprocess.Popen(
        [str(BIN / "cartridge-s3-server"), "--cartridge-path", str(cart), "--blocks", "262144",
         "-P", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    port = None
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if match:
            port = int(match[1])
            break
    if port is None:
        proc.kill()
        pytest.fail("server did not start:\n" + "".join(lines))
    yield Server(proc, port, cart)
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("server did not stop on SIGTERM")
    assert proc.returncode == 0, proc.stdout.read()


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
        return boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                            aws_access_key_id=access, aws_secret_access_key=secret,
                            config=Config(retries={"max_attempts": 1}, **config))

    return make


@pytest.fixture
def client_env(server, tmp_path) -> dict[str, str]:
    """Environment for the aws cli (credentials, no user config)."""
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-east-1\n")
    return dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
                AWS_DEFAULT_REGION="us-east-1", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
