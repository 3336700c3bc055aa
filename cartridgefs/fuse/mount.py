"""Serve a `FileSystem` through FUSE: the pyfuse3 loop, periodic commits, clean shutdown."""

from __future__ import annotations

import logging
import os
import select
import signal
import time
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pyfuse3
import trio

from ..fs.filesystem import CPUS, FileSystem, keep_loop_responsive, tune_gc
from ..signals import shutdown_signals
from .ops import AttrPolicy, Operations

log = logging.getLogger(__name__)

READ_AHEAD_KB = 1024  # the mount's kernel read-ahead (at the default 128 KiB reads are ~3x slower)
FAST_PATH_S = 0.0005  # the FUSE loop passes through the scheduler at least this often (seconds)
# How long the FUSE loop polls for the next request before it sleeps (seconds; see _FuseLoop).
# Not with one CPU: there the polling would only keep the requesting process from running.
SPIN_S = 0.0001 if CPUS > 1 else 0.0


class _FuseLoop:
    """What pyfuse3's request loop gets for `trio.Lock` and `trio.lowlevel.wait_readable`, which
    it uses only around waiting for /dev/fuse: both return without a pass through the scheduler
    when a request is already waiting and no other task is ready to run.

    A request usually is waiting: the kernel wakes the requesting process with our reply, and on
    a busy machine that process runs (and sends its next request) before this loop goes on. A
    request then costs a poll(2) instead of two passes through the scheduler (one for the lock,
    which trio makes a checkpoint even when free, one for the wait), an epoll_ctl and an
    epoll_wait: a cold `stat` (one LOOKUP) took 18 instead of 36 µs of CPU.

    When no request is waiting yet, the wait polls for up to SPIN_S before it sleeps: a program
    that sends one request after the other (stat, tar, rsync) sends its next one within tens of
    µs of our reply, and catching it while polling saves the sleep and wake-up of this thread,
    which cost more than the polling. A cold `stat` then took 28 instead of 80 µs, and the
    extraction of 4000 files 3.8–4.0 instead of 5.2–5.6 s, with less CPU, not more. There is
    no fast path while worker threads run (`threads_busy`).

    Other tasks are not kept waiting: the fast path is not taken when one is ready to run
    (except pyfuse3's own tasks waiting for the lock) nor for longer than FAST_PATH_S, after
    which a real wait lets the scheduler look for I/O, timers and thread results.
    """

    def __init__(self, threads_busy: Callable[[], bool] = lambda: False) -> None:
        self.woken = 0  # tasks woken from the lock's queue that have not run yet
        self._threads_busy = threads_busy
        self._polls: dict[int, select.poll] = {}
        self._until = 0.0  # the fast path may be taken until then

    def lock(self) -> _ReadLock:
        return _ReadLock(self)

    async def wait_readable(self, fd: int) -> None:
        now = time.monotonic()
        if now < self._until:
            poll = self._polls.get(fd)
            if poll is None:
                poll = self._polls[fd] = select.poll()
                poll.register(fd, select.POLLIN)
            spin_until = min(now + SPIN_S, self._until)
            while self._nothing_else_to_do():
                if poll.poll(0):
                    return
                if time.monotonic() >= spin_until:
                    break
        await trio.lowlevel.wait_readable(fd)
        self._until = time.monotonic() + FAST_PATH_S

    def _nothing_else_to_do(self) -> bool:
        """No task ready to run (but pyfuse3's own, woken for the lock), and nothing running in
        or coming back from a worker thread: a thread's result comes through the scheduler, and
        polling would hold the GIL the thread needs. (Polling beside the threads that serve a
        cold sequential read: 650–740 MiB/s against 690–1100 without polling in the same
        minutes; 1100–1200 against 1300 when a waiting request still skipped the scheduler;
        1100–1400 against 1100–1400 as here.)"""
        stats = trio.lowlevel.current_statistics()
        return (stats.tasks_runnable <= self.woken and not stats.run_sync_soon_queue_size
                and not self._threads_busy())

    def trio(self) -> types.ModuleType:
        """A stand-in for the `trio` module as pyfuse3 sees it (its module global `pyfuse3.trio`,
        the hook its asyncio mode uses): trio but for these two."""
        lowlevel = types.ModuleType("trio.lowlevel (cartridge)")
        lowlevel.__getattr__ = lambda name: getattr(trio.lowlevel, name)
        lowlevel.wait_readable = self.wait_readable
        module = types.ModuleType("trio (cartridge)")
        module.__getattr__ = lambda name: getattr(trio, name)
        module.Lock = self.lock
        module.lowlevel = lowlevel
        return module


class _ReadLock:
    """pyfuse3's lock around waiting for /dev/fuse, taken at once when free."""

    __slots__ = ("_loop", "_held", "_waiting")

    def __init__(self, loop: _FuseLoop) -> None:
        self._loop = loop
        self._held = False
        self._waiting = trio.lowlevel.ParkingLot()

    async def __aenter__(self) -> None:
        while self._held:  # a woken task takes the lock only if no other took it meanwhile
            await self._waiting.park()
            self._loop.woken -= 1
        self._held = True

    async def __aexit__(self, *exc) -> None:
        self._held = False
        if self._waiting:
            self._waiting.unpark()
            self._loop.woken += 1


@dataclass
class MountOptions:
    readonly: bool = False
    allow_other: bool = False
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    passphrase_file: str | None = None
    cache_size: int | None = None
    blocks: int | None = None
    s3: str | None = "127.0.0.1:9000"  # HOST:PORT, or None when off
    fsname: str = "cartridge"
    subtype: str = "cartridge"
    extra_fuse: list[str] = field(default_factory=list)  # passed through (nosuid, noatime, ...)
    debug: bool = False

    def fuse_options(self) -> set[str]:
        opts = {f"fsname={self.fsname}", f"subtype={self.subtype}", "default_permissions"}
        if self.allow_other:
            opts.add("allow_other")
        if self.readonly:
            opts.add("ro")
        opts.update(self.extra_fuse)
        if self.debug:
            opts.add("debug")
        return opts


def _mount_device(mountpoint: str) -> str | None:
    """The "MAJOR:MINOR" of the filesystem mounted at `mountpoint` (from /proc/self/mountinfo).

    Read from the table rather than stat(2): a stat of our own mount point would be a FUSE
    request to this very process.
    """
    escaped = mountpoint.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011") \
        .replace("\n", "\\012")
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4] == escaped:
                found = fields[2]  # the last one listed is the one on top
    return found


def _threads_busy(fs: FileSystem) -> bool:
    """Whether a worker thread runs work of `fs` or any other `trio.to_thread` work."""
    return bool(fs.threads_in_use or trio.to_thread.current_default_thread_limiter().borrowed_tokens)


async def _set_read_ahead(ops: Operations, mountpoint: str, kib: int = READ_AHEAD_KB) -> None:
    """Raise the kernel read-ahead of the mount to `kib` (FUSE reads then come in 1-MiB requests).

    The kernel caps the read-ahead at FUSE_INIT to its 128-KiB default, so this is done through
    /sys/class/bdi/MAJ:MIN/read_ahead_kb once the INIT reply is processed. Needs root; without
    it, or on any error, the default stays (a debug message says why).
    """
    await ops.initialised.wait()
    await trio.sleep(0.05)  # the INIT reply was written when init() returned; be generous
    try:
        dev = _mount_device(mountpoint)
        if dev is None:
            raise OSError(f"{mountpoint} not in /proc/self/mountinfo")
        path = f"/sys/class/bdi/{dev}/read_ahead_kb"
        with open(path) as f:
            if int(f.read()) >= kib:
                return
        with open(path, "w") as f:
            f.write(f"{kib}\n")
    except (OSError, ValueError) as exc:
        log.debug("cannot raise the read-ahead of %s: %s", mountpoint, exc)


async def serve(
    fs: FileSystem,
    mountpoint: str,
    options: MountOptions | None = None,
    extra: list[Callable[[], Awaitable]] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Mount `fs` at `mountpoint` and serve until unmounted or SIGTERM/SIGINT.

    `extra`: further tasks run beside the FUSE loop (the S3 server); they are cancelled at
    shutdown. Always ends with everything flushed, committed and the cartridge closed.
    """
    options = options or MountOptions()
    keep_loop_responsive()
    ops = Operations(fs, AttrPolicy(options.uid, options.gid, options.umask))
    unmount = True  # unless the kernel told us it was unmounted (pyfuse3.main returned)
    signalled = False
    try:
        pyfuse3.init(ops, mountpoint, options.fuse_options())
    except BaseException:
        await fs.close()
        raise
    with shutdown_signals(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        try:
            async with trio.open_nursery() as nursery:
                async def on_signal() -> None:
                    nonlocal signalled
                    async for signum in signals:
                        log.info("signal %d: unmounting", signum)
                        signalled = True
                        pyfuse3.terminate()
                        return

                nursery.start_soon(on_signal)
                nursery.start_soon(fs.commit_periodically)
                nursery.start_soon(_set_read_ahead, ops, os.path.abspath(mountpoint))
                for task in extra or ():
                    nursery.start_soon(task)
                if on_ready is not None:
                    on_ready()
                tune_gc()
                pyfuse3.trio = _FuseLoop(lambda: _threads_busy(fs)).trio()
                try:
                    await pyfuse3.main()
                finally:
                    pyfuse3.trio = trio
                unmount = signalled
                nursery.cancel_scope.cancel()
        finally:
            try:
                with trio.CancelScope(shield=True):
                    await fs.close()
            finally:
                pyfuse3.close(unmount=unmount)

