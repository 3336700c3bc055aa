"""A FUSE mount serving S3 beside it (`mount.cartridge CART MNT -f -o s3=127.0.0.1:PORT`) in one
process, and clients for both sides. Reuses the `Mount` helper of tests/fuse."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

ACCESS_KEY = "AKIDCARTRIDGEXVIS"
SECRET_KEY = "cr0ss/v1s1b1l1tySECRETKEYEXAMPLE"
BIN = Path(sys.executable).parent


def _fuse_helpers():
    spec = importlib.util.spec_from_file_location(
        "fuse_conftest", Path(__file__).parents[1] / "fuse" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Both:
    """The mount, its S3 endpoint and clients for it."""

    def __init__(self, mount, port: int, tmp: Path) -> None:
        self.mount = mount
        self.mnt = mount.mnt
        self.endpoint = f"http://127.0.0.1:{port}"
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                               aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                               config=Config(retries={"max_attempts": 1}))
        config = tmp / "rclone.conf"
        config.write_text(
            "[cart]\ntype = s3\nprovider = Other\n"
            f"endpoint = {self.endpoint}\naccess_key_id = {ACCESS_KEY}\n"
            f"secret_access_key = {SECRET_KEY}\nregion = us-east-1\n")
        self.rclone = [str(BIN / "rclone"), "--config", str(config)]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("both")
    port = free_port()
    previous = {name: os.environ.get(name) for name in ("CARTRIDGE_ACCESS_KEY", "CARTRIDGE_SECRET_KEY")}
    os.environ.update(CARTRIDGE_ACCESS_KEY=ACCESS_KEY, CARTRIDGE_SECRET_KEY=SECRET_KEY)
    try:
        mount = _fuse_helpers().Mount(tmp, options=f"s3=127.0.0.1:{port}")
        mount.start()
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        wait_for_port(port)
        yield Both(mount, port, tmp)
    finally:
        mount.stop()  # unmounts, expects exit status 0 and a clean `cartridge fsck`
