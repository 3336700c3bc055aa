"""A FUSE mount serving S3 beside it (`mount.cartridge CART MNT -f -o s3=127.0.0.1:PORT`) in one
process, and clients for both sides. Reuses the `Mount` helper of tests/fuse."""

from __future__ import annotations

import contextlib
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
        self.port = port
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

    def free_blocks(self) -> int:
        """The cartridge's free blocks (statfs) once everything so far is committed (an
        fsync of the mount's root commits)."""
        fd = os.open(self.mnt, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return os.statvfs(self.mnt).f_bfree

    def assert_space_back(self, baseline: int, slack: int = 16) -> None:
        """The free blocks are back to `baseline` (less `slack` blocks of tree pages) within
        20 s: blocks freed by a commit are free for good once a later commit is durable."""
        deadline = time.monotonic() + 20
        while (free := self.free_blocks()) < baseline - slack and time.monotonic() < deadline:
            time.sleep(0.2)
        assert free >= baseline - slack, f"{baseline - free} blocks did not come back"

    def restart(self) -> None:
        """Start the mount again after a stop or a kill, its S3 endpoint on the same port."""
        with s3_credentials():
            self.mount.start()
        wait_for_port(self.port)


@contextlib.contextmanager
def s3_credentials():
    """The test credentials in the environment, for mounts started meanwhile."""
    previous = {name: os.environ.get(name) for name in ("CARTRIDGE_ACCESS_KEY", "CARTRIDGE_SECRET_KEY")}
    os.environ.update(CARTRIDGE_ACCESS_KEY=ACCESS_KEY, CARTRIDGE_SECRET_KEY=SECRET_KEY)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_both(tmp: Path, blocks: int = 200_000, create_args: tuple[str, ...] = ()) -> Both:
    """A new cartridge of `blocks` in `tmp` (`cartridge create` gets `create_args` too),
    mounted with its S3 endpoint on a free port."""
    port = free_port()
    with s3_credentials():
        mount = _fuse_helpers().Mount(tmp, blocks=blocks, options=f"s3=127.0.0.1:{port}",
                                      create_args=create_args)
        mount.start()
    try:
        wait_for_port(port)
    except BaseException:
        mount.stop(check=False)
        raise
    return Both(mount, port, tmp)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    started = start_both(tmp_path_factory.mktemp("both"))
    try:
        yield started
    finally:
        started.mount.stop()  # unmounts, expects exit status 0 and a clean `cartridge fsck`


@pytest.fixture
def make_both(tmp_path):
    """`make_both(blocks=..., create_args=...)`: a mount and S3 endpoint of the test's own (it
    may kill and restart them); stopped (and fsck'ed) after the test."""
    made: list[Both] = []

    def make(blocks: int = 200_000, create_args: tuple[str, ...] = ()) -> Both:
        made.append(start_both(tmp_path, blocks, create_args))
        return made[-1]

    yield make
    for started in made:
        if started.mount.proc is not None:
            started.mount.stop()
