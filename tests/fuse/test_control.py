"""`cartridge snapshot …` and `cartridge info` on a mounted cartridge go through its process."""

from __future__ import annotations


def test_snapshots_of_a_mounted_cartridge(cartridge_mount):
    run, CARTRIDGE = cartridge_mount.run, cartridge_mount.cartridge_cli  # noqa: N806
    mnt = cartridge_mount.start()
    cart = cartridge_mount.cart
    (mnt / "case.txt").write_bytes(b"original statement")
    run(CARTRIDGE, "snapshot", "create", cart, "before-edit")
    (mnt / "case.txt").write_bytes(b"edited statement, longer than before")
    (mnt / "new.txt").write_bytes(b"added later")

    listed = run(CARTRIDGE, "snapshot", "list", cart).stdout
    assert listed.split("\t")[0] == "before-edit"
    assert (mnt / ".snapshots" / "before-edit" / "case.txt").read_bytes() == b"original statement"
    info = run(CARTRIDGE, "info", cart).stdout
    assert "snapshots:    1" in info and "before-edit" in info

    run(CARTRIDGE, "snapshot", "restore", cart, "before-edit")
    assert (mnt / "case.txt").read_bytes() == b"original statement"
    assert not (mnt / "new.txt").exists()

    run(CARTRIDGE, "snapshot", "delete", cart, "before-edit")
    assert run(CARTRIDGE, "snapshot", "list", cart).stdout == ""
    missing = run(CARTRIDGE, "snapshot", "delete", cart, "before-edit", check=False)
    assert missing.returncode == 1 and "no snapshot named" in missing.stderr
    cartridge_mount.stop()  # unmounts, checks exit 0 and fsck
