"""The `cartridge` console script, run as a user would (subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from cartridgefs.engine.alloc import get_bit
from cartridgefs.engine.seal import KIND_EXTENT
from cartridgefs.engine.store import Engine
from cartridgefs.fs.filesystem import Ctx, FileSystem
from cartridgefs.fs.items import ROOT_INO

CLI = Path(sys.executable).parent / "cartridge"
PASSPHRASE = "cli passphrase\n"


def cartridge(*args: str, check: int | None = 0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CARTRIDGE_PASSPHRASE"}
    proc = subprocess.run(
        [str(CLI), *args], capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL
    )
    if check is not None:
        assert proc.returncode == check, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def put_file(path: str, name: bytes, data: bytes, passphrase: bytes | None = None) -> None:
    """Store a file the way the mount and S3 do: through the filesystem API."""

    async def write() -> None:
        fs = FileSystem(Engine.open(path, passphrase=passphrase))
        inode = await fs.create(Ctx(), ROOT_INO, name)
        await fs.write(Ctx(), inode.ino, 0, data)
        await fs.close()

    trio.run(write)


@pytest.fixture
def cart(tmp_path) -> str:
    path = str(tmp_path / "test.cart")
    out = cartridge("create", path, "--blocks", "2000").stdout
    assert "created" in out and "2000 blocks" in out
    return path


def test_create_info_fsck(cart) -> None:
    put_file(cart, b"text", b"compressible text " * 10_000)
    info = cartridge("info", cart).stdout
    for field in ("size:", "used:", "free:", "ratio", "fuses:", "snapshots:    0", "encryption:   off"):
        assert field in info, (field, info)
    assert "7.8 MiB (2000 blocks" in info
    ratio = float(info.split("ratio ")[1].split(")")[0])
    assert ratio > 5  # 180 kB of repetitive text
    out = cartridge("fsck", cart).stdout
    checks = out.splitlines()
    assert len(checks) >= 7 and all(line.startswith("ok") for line in checks), out
    cartridge("create", cart, "--blocks", "100", check=1)  # exists


def test_snapshots(cart) -> None:
    cartridge("snapshot", "create", cart, "empty")  # a new cartridge is an empty filesystem
    put_file(cart, b"f", b"data" * 1000)
    cartridge("snapshot", "delete", cart, "empty")
    cartridge("snapshot", "create", cart, "s1")
    cartridge("snapshot", "create", cart, "s2")
    listing = cartridge("snapshot", "list", cart).stdout
    assert [line.split("\t")[0] for line in listing.splitlines()] == ["s1", "s2"]
    assert "snapshots:    2" in cartridge("info", cart).stdout
    cartridge("snapshot", "delete", cart, "s1")
    assert cartridge("snapshot", "list", cart).stdout.split("\t")[0] == "s2"
    cartridge("snapshot", "delete", cart, "nope", check=1)
    cartridge("snapshot", "create", cart, check=2)  # name missing
    cartridge("fsck", cart)


def test_encrypted(tmp_path) -> None:
    path, pwfile = str(tmp_path / "enc.cart"), tmp_path / "pw"
    pwfile.write_text(PASSPHRASE)
    pwfile.chmod(0o600)
    out = cartridge("create", path, "--blocks", "500", "--encrypt", "--passphrase-file", str(pwfile)).stdout
    assert "encrypted" in out
    info = cartridge("info", path, "--passphrase-file", str(pwfile)).stdout
    assert "encryption:   on (AES-256-GCM)" in info
    assert "passphrase" in cartridge("info", path, check=1).stderr
    pwfile.write_text("wrong\n")
    assert cartridge("info", path, "--passphrase-file", str(pwfile), check=1).returncode == 1


def test_fsck_fails_on_a_corrupted_block(cart, store) -> None:
    put_file(cart, b"f", os.urandom(50_000))
    engine = Engine.open(cart, readonly=True)
    ptr = store.objects_of_kind(engine, KIND_EXTENT)[0]
    engine.close()
    with open(cart, "r+b") as f:
        f.seek(ptr.block * 4096 + 100)
        byte = f.read(1)
        f.seek(ptr.block * 4096 + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = cartridge("fsck", cart, check=1)
    assert "FAIL  trees" in proc.stdout and f"block {ptr.block}" in proc.stdout
    cartridge("fsck", cart, "--quick")  # does not read file data


def test_fsck_repair_fixes_a_leaked_free_map(cart) -> None:
    put_file(cart, b"f", b"x" * 10_000)
    engine = Engine.open(cart)
    free = [b for b in range(100, 1000) if not get_bit(engine.alloc.inuse, b)][:10]
    assert len(free) == 10
    for b in free:  # mark 10 unreferenced blocks used in the stored free map
        engine.alloc._mark(b, 1, True)
    engine.sync(force=True)
    engine.close()
    proc = cartridge("fsck", cart, check=1)
    assert "leaked" in proc.stdout
    assert "repaired: all checks pass" in cartridge("fsck", cart, "--repair").stdout
    cartridge("fsck", cart)
