"""Real FUSE mounts for the tests: `mount.cartridge CART MNT -f` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
MOUNT = str(BIN / "mount.cartridge")
CARTRIDGE = str(BIN / "cartridge")



def run(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=check, capture_output=True, text=True,
                          timeout=kw.pop("timeout", 120), **kw)


class Mount:
    """One cartridge file and its mount point; `start()`/`stop()` may be repeated."""

    def __init__(self, tmp: Path, blocks: int = 200_000, options: str = "s3=off",
                 create_args: tuple[str, ...] = ()) -> None:
        self.cart = tmp / "storage.cart"
        self.mnt = tmp / "mnt"
        self.mnt.mkdir(exist_ok=True)
        self.log = tmp / "mount.log"
        self.options = options
        self.proc: subprocess.Popen | None = None
        if not self.cart.exists():
            run(CARTRIDGE, "create", self.cart, "--blocks", blocks, *create_args)

    def start(self, options: str | None = None) -> Path:
        logf = open(self.log, "ab")  # noqa: SIM115 - kept open for the process
        self.proc = subprocess.Popen(
            [MOUNT, str(self.cart), str(self.mnt), "-f", "-o", options or self.options],
            stdout=logf, stderr=subprocess.STDOUT,
        )
        logf.close()
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None:
                raise AssertionError(f"mount exited {self.proc.returncode}: {self.log.read_text()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"mount did not come up: {self.log.read_text()}")
            time.sleep(0.05)
        return self.mnt

    def stop(self, check: bool = True) -> None:
        """Unmount, wait for the process (exit 0) and check the cartridge."""
        assert self.proc is not None
        for _ in range(50):
            r = run("fusermount3", "-u", self.mnt, check=False)
            if r.returncode == 0 or not os.path.ismount(self.mnt):
                break
            time.sleep(0.1)
        else:
            run("fusermount3", "-u", "-z", self.mnt, check=False)
        code = self.proc.wait(timeout=60)
        self.proc = None
        if check:
            assert code == 0, self.log.read_text()
            self.fsck()

    run = staticmethod(run)
    cartridge_cli = CARTRIDGE

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc = None
        run("fusermount3", "-u", self.mnt, check=False)
        if os.path.ismount(self.mnt):
            run("fusermount3", "-u", "-z", self.mnt, check=False)

    def fsck(self) -> None:
        r = run(CARTRIDGE, "fsck", self.cart, check=False)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def make_mount(tmp_path):
    """Mount factory for tests that need other sizes or options; everything is unmounted after."""
    made: list[Mount] = []

    def make(blocks: int = 200_000, options: str = "s3=off") -> Mount:
        made.append(Mount(tmp_path, blocks=blocks, options=options))
        return made[-1]

    yield make
    for m in made:
        if m.proc is not None:
            m.stop()


@pytest.fixture
def cartridge_mount(make_mount):
    return make_mount()


@pytest.fixture
def mnt(cartridge_mount) -> Path:
    return cartridge_mount.start()
