"""The stand-ins pyfuse3's request loop gets for `trio.Lock` and `trio.lowlevel.wait_readable`
(cartridgefs.fuse.mount._FuseLoop): no pass through the scheduler while requests are waiting
and nothing else is ready to run, but never keeping other tasks waiting; and on a live mount,
other tasks of the process are served while the mount is busy."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pyfuse3
import pytest
import trio
import trio.testing

from cartridgefs.fuse import mount as mount_module
from cartridgefs.fuse.mount import _FuseLoop


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def test_pyfuse3_looks_trio_up_through_its_module_global():
    # The hook the stand-ins rely on (pyfuse3's asyncio mode uses it too).
    assert pyfuse3.trio is trio
    fake = _FuseLoop().trio()
    assert fake.lowlevel.current_task is trio.lowlevel.current_task  # the rest is trio's
    assert fake.ClosedResourceError is trio.ClosedResourceError
    assert fake.open_nursery is trio.open_nursery


async def test_a_waiting_request_is_taken_without_a_checkpoint(pipe):
    r, w = pipe
    loop = _FuseLoop()
    os.write(w, b"x")
    with trio.testing.assert_checkpoints():  # the first wait is a real one
        await loop.wait_readable(r)
    with trio.testing.assert_no_checkpoints():
        await loop.wait_readable(r)
        async with loop.lock():
            pass


async def test_a_request_arriving_while_polling_is_taken_without_a_checkpoint(pipe, monkeypatch):
    r, w = pipe
    monkeypatch.setattr(mount_module, "FAST_PATH_S", 30.0)
    monkeypatch.setattr(mount_module, "SPIN_S", 20.0)  # bounds the test if the write never comes
    loop = _FuseLoop()
    os.write(w, b"x")
    await loop.wait_readable(r)
    os.read(r, 1)
    writer = threading.Timer(0.05, os.write, (w, b"y"))
    writer.start()
    try:
        t0 = time.monotonic()
        with trio.testing.assert_no_checkpoints():
            await loop.wait_readable(r)  # polls until the other thread has written
        assert 0.04 < time.monotonic() - t0 < 10
    finally:
        writer.join()


async def test_polling_ends_after_spin_s(pipe, monkeypatch):
    r, w = pipe
    monkeypatch.setattr(mount_module, "FAST_PATH_S", 30.0)
    monkeypatch.setattr(mount_module, "SPIN_S", 0.05)
    loop = _FuseLoop()
    os.write(w, b"x")
    await loop.wait_readable(r)
    os.read(r, 1)
    t0 = time.monotonic()
    with trio.move_on_after(1) as waited, trio.testing.assert_checkpoints():
        await loop.wait_readable(r)  # nothing comes: polls for SPIN_S, then really waits
    assert waited.cancelled_caught
    assert time.monotonic() - t0 < 5  # it polled for SPIN_S, not until FAST_PATH_S ran out


async def test_no_fast_path_while_worker_threads_run(pipe, monkeypatch):
    r, w = pipe
    monkeypatch.setattr(mount_module, "FAST_PATH_S", 30.0)
    monkeypatch.setattr(mount_module, "SPIN_S", 20.0)
    busy = [False]
    loop = _FuseLoop(lambda: busy[0])
    os.write(w, b"x")
    await loop.wait_readable(r)
    busy[0] = True
    with trio.testing.assert_checkpoints():  # even a waiting request: the scheduler may have
        await loop.wait_readable(r)  # a thread's result to deliver
    os.read(r, 1)
    t0 = time.monotonic()
    with trio.move_on_after(0.2) as waited:
        await loop.wait_readable(r)  # nothing comes: a real wait at once, not SPIN_S of polling
    assert waited.cancelled_caught
    assert time.monotonic() - t0 < 5


async def test_other_ready_tasks_are_not_kept_waiting(pipe):
    r, w = pipe
    loop = _FuseLoop()
    os.write(w, b"x")
    await loop.wait_readable(r)
    ran = []

    async def other() -> None:
        ran.append(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)  # ready to run
        with trio.testing.assert_checkpoints():  # the scheduler may run it
            await loop.wait_readable(r)
    assert ran == [1]


async def test_the_scheduler_is_passed_through_at_least_every_fast_path_s(pipe, monkeypatch):
    r, w = pipe
    loop = _FuseLoop()
    os.write(w, b"x")
    await loop.wait_readable(r)
    now = time.monotonic()
    monkeypatch.setattr(mount_module.time, "monotonic", lambda: now + mount_module.FAST_PATH_S)
    with trio.testing.assert_checkpoints():
        await loop.wait_readable(r)


async def test_nothing_to_read_waits_for_it(pipe):
    r, w = pipe
    loop = _FuseLoop()
    os.write(w, b"x")
    await loop.wait_readable(r)
    os.read(r, 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop.wait_readable, r)
        await trio.testing.wait_all_tasks_blocked()
        assert nursery.child_tasks  # still waiting
        os.write(w, b"y")
    # (the nursery ended: the wait returned once there was something to read)


async def test_the_read_lock_excludes_and_hands_on():
    loop = _FuseLoop()
    lock = loop.lock()
    order = []

    async def holder(name: str) -> None:
        async with lock:
            order.append(f"{name} in")
            await trio.sleep(0.01)
            order.append(f"{name} out")

    async with trio.open_nursery() as nursery:
        for name in "abc":
            nursery.start_soon(holder, name)
    assert len(order) == 6
    for i in range(0, 6, 2):  # one at a time
        assert order[i].endswith(" in") and order[i + 1] == order[i][0] + " out"
    assert loop.woken == 0  # every woken task ran


async def test_a_cancelled_waiter_leaves_the_lock_usable():
    loop = _FuseLoop()
    lock = loop.lock()
    async with lock:
        with trio.move_on_after(0.01):
            async with lock:
                raise AssertionError("taken while held")
    with trio.testing.assert_no_checkpoints():
        async with lock:
            pass
    assert loop.woken == 0


def test_other_tasks_are_served_while_the_mount_is_busy(mnt):
    """A snapshot is created through the control socket, served by the mount's event loop,
    while another process keeps the mount busy with requests."""
    (mnt / "d").mkdir()
    for i in range(50):
        (mnt / "d" / f"f{i}").write_bytes(b"x")
    busy = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "end = time.monotonic() + 30\n"
        "while time.monotonic() < end:\n"
        "    os.listdir(sys.argv[1])\n"  # a READDIR (never cached) and more, each time
    ), str(mnt / "d")])
    try:
        time.sleep(0.5)
        cart = mnt.parent / "storage.cart"
        t0 = time.monotonic()
        r = subprocess.run([str(os.path.join(os.path.dirname(sys.executable), "cartridge")),
                            "snapshot", "create", str(cart), "busy"],
                           capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - t0
        assert r.returncode == 0, r.stdout + r.stderr
        assert busy.poll() is None  # the mount was busy throughout
        assert elapsed < 10
    finally:
        busy.kill()
        busy.wait(timeout=30)
    assert sorted(os.listdir(mnt / ".snapshots" / "busy" / "d")) == sorted(f"f{i}" for i in range(50))


def test_concurrent_clients(mnt):
    """Several processes creating, reading, listing and removing files at once (several of
    pyfuse3's tasks, its read lock handed from one to the next)."""
    script = (
        "import os, sys\n"
        "d = os.path.join(sys.argv[1], sys.argv[2])\n"
        "os.mkdir(d)\n"
        "for i in range(200):\n"
        "    p = os.path.join(d, f'f{i}')\n"
        "    with open(p, 'wb') as f: f.write(p.encode())\n"
        "    if i % 50 == 0:\n"
        "        fd = os.open(p, os.O_RDONLY); os.fsync(fd); os.close(fd)\n"
        "assert sorted(os.listdir(d)) == sorted(f'f{i}' for i in range(200))\n"
        "for i in range(200):\n"
        "    p = os.path.join(d, f'f{i}')\n"
        "    assert open(p, 'rb').read() == p.encode()\n"
        "    os.unlink(p)\n"
        "os.rmdir(d)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(mnt), f"c{n}"]) for n in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert os.listdir(mnt) == []
