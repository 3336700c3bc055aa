"""On a live mount: what the kernel caches (negative entries) never hides a change made by the
other side, and files written through direct I/O stay coherent and visible over S3 at once."""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

import pytest


def _integration():
    spec = importlib.util.spec_from_file_location(
        "integration_conftest", Path(__file__).parents[1] / "integration" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def both(make_mount, monkeypatch, tmp_path):
    """A mount serving S3 beside it, and an S3 client (as in tests/integration)."""
    helpers = _integration()
    port = helpers.free_port()
    monkeypatch.setenv("CARTRIDGE_ACCESS_KEY", helpers.ACCESS_KEY)
    monkeypatch.setenv("CARTRIDGE_SECRET_KEY", helpers.SECRET_KEY)
    mount = make_mount(options=f"s3=127.0.0.1:{port}")
    mount.start()
    helpers.wait_for_port(port)
    return helpers.Both(mount, port, tmp_path)


def test_a_missing_name_shows_once_s3_creates_it(both):
    both.s3.create_bucket(Bucket="neg")
    path = both.mnt / "neg" / "later.txt"
    nested = both.mnt / "neg" / "dir" / "sub" / "key"
    for _ in range(2):  # the second time the kernel answers from its negative entries
        assert not path.exists() and not nested.exists()
    both.s3.put_object(Bucket="neg", Key="later.txt", Body=b"created over S3")
    both.s3.put_object(Bucket="neg", Key="dir/sub/key", Body=b"nested")
    assert path.read_bytes() == b"created over S3"
    assert nested.read_bytes() == b"nested"
    assert sorted(os.listdir(both.mnt / "neg")) == ["dir", "later.txt"]
    both.s3.delete_object(Bucket="neg", Key="later.txt")
    assert not path.exists()
    both.s3.put_object(Bucket="neg", Key="later.txt", Body=b"again")
    assert path.read_bytes() == b"again"


def test_a_missing_name_shows_once_a_restore_brings_it_back(cartridge_mount):
    run, cli = cartridge_mount.run, cartridge_mount.cartridge_cli
    mnt = cartridge_mount.start()
    (mnt / "kept.txt").write_bytes(b"in the snapshot")
    run(cli, "snapshot", "create", cartridge_mount.cart, "s1")
    (mnt / "kept.txt").unlink()
    for _ in range(2):
        assert not (mnt / "kept.txt").exists()
    run(cli, "snapshot", "restore", cartridge_mount.cart, "s1")
    assert (mnt / "kept.txt").read_bytes() == b"in the snapshot"
    cartridge_mount.stop()


def test_a_new_write_only_file_is_coherent_and_visible_over_s3(both):
    both.s3.create_bucket(Bucket="dio")
    path = both.mnt / "dio" / "growing.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # direct I/O
    try:
        os.write(fd, b"a" * 10_000)
        reader = os.open(path, os.O_RDONLY)  # through the page cache
        try:
            assert os.pread(reader, 20_000, 0) == b"a" * 10_000
            os.pwrite(fd, b"b" * 4096, 0)
            os.write(fd, b"tail")
            assert os.pread(reader, 20_000, 0) == b"b" * 4096 + b"a" * 5904 + b"tail"
        finally:
            os.close(reader)
        body = both.s3.get_object(Bucket="dio", Key="growing.bin")["Body"].read()
        assert body == b"b" * 4096 + b"a" * 5904 + b"tail"  # not closed yet: seen at once
        assert os.fstat(fd).st_size == 10_004
    finally:
        os.close(fd)
    assert path.stat().st_size == 10_004


def test_a_write_drops_setuid_given_while_the_file_was_open(mnt):
    path = mnt / "tool"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
    try:
        os.write(fd, b"#!/bin/sh\n")
        os.fchmod(fd, 0o4755)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o4755
        os.write(fd, b"exit 0\n")  # through direct I/O: dropped even for root (see ops.write)
    finally:
        os.close(fd)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    os.chmod(path, 0o4755)  # once closed, setuid stays
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o4755
    assert path.read_bytes() == b"#!/bin/sh\nexit 0\n"
