"""On a live mount: cached negative entries never hide a name a snapshot restore brings back,
and a write through direct I/O drops setuid as the kernel would have."""

from __future__ import annotations

import os
import stat


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
