"""`mount.cartridge SOURCE MOUNTPOINT [-o opts] [-f]`: the mount helper (mount -t cartridge, fstab).

Without `-f` it returns once the filesystem is mounted and keeps serving in a background process
(exit status 0), or prints why mounting failed (exit status 1). See docs/mount.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import os
import sys
import time
from functools import partial

from .cli import _parse_size
from .engine.store import DEFAULT_CACHE, Engine
from .errors import CartridgeError, InvalidArgument
from .fuse.mount import MountOptions
from .logs import setup_logging

log = logging.getLogger("cartridgefs.mount")

IGNORED = {"rw", "defaults", "_netdev", "noauto", "auto", "user", "users", "nouser", "nofail",
           "owner", "group", "comment", "loop"}
PASSTHROUGH = {"nosuid", "nodev", "noexec", "suid", "dev", "exec", "noatime", "atime",
               "relatime", "norelatime", "strictatime", "nodiratime", "diratime", "dirsync",
               "sync", "async", "lazytime", "nolazytime"}
READY_TIMEOUT = 60.0


def parse_options(text_list: list[str]) -> MountOptions:
    """Parse `-o` comma lists (several `-o` accumulate) into MountOptions."""
    opts = MountOptions()
    for text in text_list:
        for item in filter(None, (s.strip() for s in text.split(","))):
            key, eq, value = item.partition("=")
            if key in IGNORED or key.startswith(("x-systemd.", "x-", "comment=")):
                continue
            try:
                if key == "ro" and not eq:
                    opts.readonly = True
                elif key == "allow_other" and not eq:
                    opts.allow_other = True
                elif key == "default_permissions":
                    pass  # always on
                elif key == "uid" and eq:
                    opts.uid = int(value)
                elif key == "gid" and eq:
                    opts.gid = int(value)
                elif key == "umask" and eq:
                    opts.umask = int(value, 8) & 0o777
                elif key == "passphrase_file" and eq:
                    opts.passphrase_file = value
                elif key == "cache_size" and eq:
                    opts.cache_size = _parse_size(value)
                elif key == "blocks" and eq:
                    opts.blocks = int(value)
                elif key == "s3" and eq:
                    opts.s3 = _parse_s3(value)
                elif key in ("fsname", "subtype") and eq:
                    setattr(opts, key, value)
                elif key == "debug" and not eq:
                    opts.debug = True
                elif key in PASSTHROUGH and not eq:
                    opts.extra_fuse.append(key)
                else:
                    raise InvalidArgument(f"unknown mount option {item!r}")
            except ValueError:
                raise InvalidArgument(f"invalid value in mount option {item!r}") from None
    return opts


def _parse_s3(value: str) -> str | None:
    if value.lower() in ("off", "no", "none", "false", "0"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"s3= wants HOST:PORT or off, not {value!r}")
    return value


def build_parser(prog: str = "mount.cartridge") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Mount a cartridge file through FUSE.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="the .cart file")
    p.add_argument("mountpoint", help="an existing directory")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTS",
                   help="comma-separated mount options (see docs/mount.md)")
    p.add_argument("-f", dest="foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-n", dest="nomtab", action="store_true", help="(ignored: no mtab to write)")
    p.add_argument("-s", dest="sloppy", action="store_true", help="(ignored) tolerate options")
    p.add_argument("-v", dest="verbose", action="store_true", help="log more")
    p.add_argument("-t", dest="fstype", help="(ignored) filesystem type")


def _read_passphrase(opts: MountOptions) -> bytes:
    from .engine import keys

    return keys.read_passphrase(opts.passphrase_file, prompt=sys.stdin.isatty(), confirm=False)


def open_or_create(source: str, opts: MountOptions) -> Engine:
    cache = opts.cache_size or DEFAULT_CACHE
    if not os.path.exists(source):
        if opts.blocks is None:
            raise CartridgeError(
                f"{source}: no such cartridge (create one with: cartridge create {source} --blocks N,"
                f" or mount with -o blocks=N to create it)")
        passphrase = _read_passphrase(opts) if opts.passphrase_file else None
        engine = Engine.create(source, opts.blocks, passphrase=passphrase, cache_bytes=cache)
        if opts.readonly:
            engine.close()
            return Engine.open(source, readonly=True, cache_bytes=cache, passphrase=passphrase)
        return engine
    try:
        return Engine.open(source, readonly=opts.readonly, cache_bytes=cache)
    except CartridgeError as exc:
        if "passphrase" not in str(exc):
            raise
    return Engine.open(source, readonly=opts.readonly, cache_bytes=cache, passphrase=_read_passphrase(opts))


def _s3_tasks(fs, opts: MountOptions) -> list:
    """The S3 endpoint, served beside the mount in the same trio loop (option s3=HOST:PORT)."""
    if opts.s3 is None:
        return []
    from s3api.server import credentials
    from s3api.server import serve as serve_s3

    host, _, port = opts.s3.rpartition(":")

    async def run_s3() -> None:
        # A failure of the S3 side (port taken...) is logged; the FUSE mount stays up.
        try:
            access, secret, show = await credentials(
                fs, os.environ.get("CARTRIDGE_ACCESS_KEY"), os.environ.get("CARTRIDGE_SECRET_KEY")
            )
            if show:
                log.warning("S3 endpoint on http://%s: access key %s, secret key %s", opts.s3, access, secret)
            await serve_s3(fs, host, int(port), access_key=access, secret_key=secret)
        except Exception as exc:
            log.error("S3 server on %s not running: %s (the FUSE mount continues)", opts.s3, exc)

    return [run_s3]


def _serve(engine: Engine, mountpoint: str, opts: MountOptions, on_ready=None) -> None:
    import trio

    from . import control
    from .fs.filesystem import FileSystem
    from .fuse.mount import serve

    async def run() -> None:
        fs = FileSystem(engine)
        tasks = [*_s3_tasks(fs, opts), partial(control.serve, fs, engine.dev.path)]
        await serve(fs, mountpoint, opts, extra=tasks, on_ready=on_ready)

    trio.run(run)


def run_mount(args) -> int:
    opts = parse_options(args.options)
    if args.verbose:
        logging.getLogger().setLevel(logging.INFO)
    mountpoint = os.path.abspath(args.mountpoint)
    if not os.path.isdir(mountpoint):
        raise CartridgeError(f"{mountpoint}: mount point is not a directory")
    if os.path.ismount(mountpoint):
        raise CartridgeError(f"{mountpoint}: something is already mounted there")
    engine = open_or_create(args.source, opts)
    if args.foreground:
        _serve(engine, mountpoint, opts)
        return 0
    return _daemonize(engine, mountpoint, opts)


def _daemonize(engine: Engine, mountpoint: str, opts: MountOptions) -> int:
    """Fork: the child serves; the parent returns 0 once the mount is live."""
    rfd, wfd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        os.setsid()
        code = 0
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            _log_to_syslog()

            def ready() -> None:
                os.write(wfd, b"ok\n")

            _serve(engine, mountpoint, opts, on_ready=ready)
        except BaseException as exc:  # report to the waiting parent
            with contextlib.suppress(OSError):
                os.write(wfd, f"error: {exc}\n".encode())
            log.exception("mount failed")
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    deadline = time.monotonic() + READY_TIMEOUT
    message = b""
    with os.fdopen(rfd, "rb") as pipe:
        message = pipe.readline()
    if message.startswith(b"ok"):
        while time.monotonic() < deadline:
            if os.path.ismount(mountpoint):
                return 0
            time.sleep(0.05)
        print(f"mount.cartridge: {mountpoint} did not become a mount point", file=sys.stderr)
        return 1
    _, status = os.waitpid(pid, 0)
    text = message.decode(errors="replace").strip() or f"mount process exited ({status})"
    print(f"mount.cartridge: {text}", file=sys.stderr)
    return 1


def _log_to_syslog() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (sys.stdout, sys.stderr):
            root.removeHandler(handler)
    if os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter("mount.cartridge[%(process)d]: %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 2)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return run_mount(args)
    except CartridgeError as exc:
        print(f"mount.cartridge: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
