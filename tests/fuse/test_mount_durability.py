"""Remounts, ENOSPC, a killed mount process, snapshots, the daemonizing helper."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_remount_keeps_everything(cartridge_mount, tmp_path):
    mnt = cartridge_mount.start()
    blobs = {f"d{i}/f{j}": os.urandom(100_000 * (j + 1)) for i in range(3) for j in range(3)}
    for name, data in blobs.items():
        (mnt / name).parent.mkdir(exist_ok=True)
        (mnt / name).write_bytes(data)
    os.symlink("d0/f0", mnt / "link")
    os.setxattr(mnt / "d1", "user.k", b"v")
    os.chmod(mnt / "d2" / "f2", 0o700)
    cartridge_mount.stop()
    mnt = cartridge_mount.start()
    for name, data in blobs.items():
        assert (mnt / name).read_bytes() == data
    assert os.readlink(mnt / "link") == "d0/f0"
    assert os.getxattr(mnt / "d1", "user.k") == b"v"
    assert os.stat(mnt / "d2" / "f2").st_mode & 0o777 == 0o700
    cartridge_mount.stop()


@pytest.mark.slow
def test_enospc_then_recover(make_mount):
    m = make_mount(blocks=2048)  # 8 MiB
    mnt = m.start()
    r = subprocess.run(["dd", "if=/dev/urandom", f"of={mnt / 'big'}", "bs=1M", "count=32"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "No space left on device" in r.stderr
    os.unlink(mnt / "big")
    time.sleep(0.5)
    data = os.urandom(1024 * 1024)
    (mnt / "after").write_bytes(data)
    assert (mnt / "after").read_bytes() == data
    m.stop()
    mnt = m.start()
    assert (mnt / "after").read_bytes() == data
    m.stop()


@pytest.mark.slow
def test_sigkill_after_fsync(cartridge_mount):
    mnt = cartridge_mount.start()
    data = os.urandom(5 * 1024 * 1024)
    fd = os.open(mnt / "durable", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    os.mkdir(mnt / "dir")
    dfd = os.open(mnt / "dir", os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)
    (mnt / "not-synced").write_bytes(b"maybe")
    cartridge_mount.kill()
    cartridge_mount.fsck()
    mnt = cartridge_mount.start()
    assert digest(mnt / "durable") == hashlib.sha256(data).hexdigest()
    assert (mnt / "dir").is_dir()
    cartridge_mount.stop()


def test_snapshot_view(cartridge_mount):
    mnt = cartridge_mount.start()
    (mnt / "docs").mkdir()
    (mnt / "docs" / "a.txt").write_text("version 1")
    os.symlink("a.txt", mnt / "docs" / "ln")
    os.setxattr(mnt / "docs" / "a.txt", "user.tag", b"t1")
    cartridge_mount.stop()
    cartridge_mount.run(BIN / "cartridge", "snapshot", "create", cartridge_mount.cart, "snap1")
    mnt = cartridge_mount.start()
    (mnt / "docs" / "a.txt").write_text("version 2")
    (mnt / "docs" / "b.txt").write_text("new")
    snap = mnt / ".snapshots" / "snap1"
    assert ".snapshots" not in os.listdir(mnt)
    assert os.listdir(mnt / ".snapshots") == ["snap1"]
    assert sorted(os.listdir(snap / "docs")) == ["a.txt", "ln"]
    assert (snap / "docs" / "a.txt").read_text() == "version 1"
    assert os.readlink(snap / "docs" / "ln") == "a.txt"
    assert os.getxattr(snap / "docs" / "a.txt", "user.tag") == b"t1"
    assert (mnt / "docs" / "a.txt").read_text() == "version 2"
    assert os.stat(snap / "docs" / "a.txt").st_ino != os.stat(mnt / "docs" / "a.txt").st_ino
    for attempt in (
        lambda: os.open(snap / "docs" / "a.txt", os.O_WRONLY),
        lambda: os.open(snap / "docs" / "new.txt", os.O_WRONLY | os.O_CREAT),
        lambda: os.mkdir(snap / "x"),
        lambda: os.unlink(snap / "docs" / "a.txt"),
        lambda: os.rename(snap / "docs" / "a.txt", snap / "docs" / "c.txt"),
        lambda: os.setxattr(snap / "docs" / "a.txt", "user.x", b"1"),
        lambda: os.chmod(snap / "docs" / "a.txt", 0o777),
        lambda: os.mkdir(mnt / ".snapshots" / "new"),
    ):
        with pytest.raises(OSError) as exc:
            attempt()
        assert exc.value.errno in (errno.EROFS, errno.EACCES), exc.value
    with pytest.raises(OSError) as exc:
        os.open(snap / "docs" / "a.txt", os.O_RDWR)
    assert exc.value.errno == errno.EROFS
    cartridge_mount.stop()


def test_daemon_mode_and_missing_file(tmp_path):
    cart, mnt = tmp_path / "new.cart", tmp_path / "m"
    mnt.mkdir()
    r = subprocess.run([BIN / "mount.cartridge", cart, mnt, "-o", "s3=off"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "cartridge create" in r.stderr
    r = subprocess.run([BIN / "mount.cartridge", cart, mnt, "-o",
                        "rw,defaults,noauto,_netdev,x-systemd.automount,blocks=4096,s3=off,umask=027"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    try:
        assert os.path.ismount(mnt)
        (mnt / "f").write_text("daemon")
        assert os.stat(mnt / "f").st_mode & 0o777 == 0o640
    finally:
        subprocess.run(["fusermount3", "-u", mnt], check=True, timeout=60)
    # the background process commits and closes: wait for the fsck to see the file
    deadline = time.monotonic() + 30
    while True:
        r = subprocess.run([BIN / "cartridge", "fsck", cart], capture_output=True, text=True, timeout=60)
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_sigterm_unmounts_cleanly(cartridge_mount):
    import signal

    mnt = cartridge_mount.start()
    data = os.urandom(300_000)
    held = open(mnt / "open-at-exit", "wb")  # noqa: SIM115 - still open when the signal comes
    held.write(data)
    held.flush()
    cartridge_mount.proc.send_signal(signal.SIGTERM)
    assert cartridge_mount.proc.wait(timeout=60) == 0
    cartridge_mount.proc = None
    with pytest.raises(OSError):
        held.close()  # the mount is gone: the kernel cannot send the release any more
    assert not os.path.ismount(mnt)
    cartridge_mount.fsck()
    mnt = cartridge_mount.start()
    assert (mnt / "open-at-exit").read_bytes() == data  # flushed and committed at shutdown
    cartridge_mount.stop()
