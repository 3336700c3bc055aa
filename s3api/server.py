"""Serving a cartridge over S3: hypercorn on the caller's trio loop, and `cartridge-s3-server`."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio import run as _run
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio import tcp_server as _tcp_server

from cartridgefs import control
from cartridgefs.engine.store import Engine
from cartridgefs.errors import CartridgeError, InvalidArgument
from cartridgefs.fs.filesystem import FileSystem, keep_loop_responsive, tune_gc
from cartridgefs.logs import setup_logging
from cartridgefs.signals import shutdown_signals
from s3api.app import BODY_TIMEOUT, Settings, create_app

log = logging.getLogger(__name__)

_ACCESS_SETTING = b"s3.access_key"
_SECRET_SETTING = b"s3.secret_key"


# hypercorn reads the socket 64 KiB at a time; each read costs a trip through h11, hypercorn and
# Quart on the event loop. Larger reads cut that per-byte work (measured per uploaded MiB: 64 KiB
# 6.2-7.5 ms of server CPU, 256 KiB 6.0, 1 MiB 5.2) but each read allocates its full size, and
# 1 MiB reads left the heap fragmented: peak RSS during a 1 GiB PUT and GET rose from ~110 MiB
# to ~180 MiB (256 KiB: ~133 MiB). hypercorn has no setting for it, so its module constant is set.
_tcp_server.MAX_RECV = 1 << 18


class _Config(Config):
    """hypercorn's configuration, plus the streams of the connections open under it."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: set[trio.abc.Stream] = set()


class _TCPServer(_tcp_server.TCPServer):
    """hypercorn's connection handler, with its stream in `config.streams` while it runs.

    hypercorn shields its socket sends from cancellation (`protocol_send`), so a connection
    whose client stops reading outlives the grace of a graceful shutdown and keeps the server
    from ending; only closing its stream makes that send fail. hypercorn offers no hold on its
    connections, hence this subclass, put in place of its own like `MAX_RECV` above.
    """

    async def run(self) -> None:
        streams = self.config.streams
        streams.add(self.stream)
        try:
            await super().run()
        finally:
            streams.discard(self.stream)


_run.TCPServer = _TCPServer


async def serve(fs: FileSystem, host: str, port: int, *, access_key: str, secret_key: str,
                region: str = "us-east-1", domain: str | None = None,
                body_timeout: float = BODY_TIMEOUT, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve `fs` over S3 until cancelled; `task_status.started(port)` with the bound port
    (port 0 binds an ephemeral one).

    Cancelling it shuts the server down gracefully, which takes up to `graceful_timeout`
    seconds: new connections are refused, requests in flight may finish within that grace,
    and then the connections still open are closed.
    """
    app = create_app(fs, Settings({access_key: secret_key}, region=region, domain=domain,
                                  body_timeout=body_timeout))
    config = _Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 75
    config.graceful_timeout = 5
    config.h11_max_incomplete_size = 64 * 1024  # S3 request heads can be long (metadata)
    # Body messages hypercorn queues for a request before it stops reading the socket: its
    # default of 10 is 2.5 MiB per upload at 256 KiB reads; 2 keeps it at 512 KiB.
    config.max_app_queue_size = 2
    # Both run() and the mount stop the server by cancelling serve(). Cancellation reaching
    # hypercorn would cut requests off at once, so hypercorn runs shielded from it and is
    # stopped through its own graceful shutdown instead, started by `shutdown`.
    shutdown = trio.Event()
    stopped = trio.Event()

    async def run_hypercorn(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
                            ) -> None:
        with trio.CancelScope(shield=True):
            try:
                await hypercorn_serve(app, config, shutdown_trigger=shutdown.wait,
                                      task_status=task_status)
            finally:
                stopped.set()

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(run_hypercorn)
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
        try:
            await trio.sleep_forever()
        finally:
            shutdown.set()
            with trio.CancelScope(shield=True):
                # After graceful_timeout hypercorn cancels the requests still running, but a
                # send blocked on a client that reads nothing ignores that (see _TCPServer):
                # closing the streams fails such sends, and every connection then ends.
                with trio.move_on_after(config.graceful_timeout):
                    await stopped.wait()
                if config.streams:
                    log.warning("closing %d connection(s) still open %g s after shutdown began",
                                len(config.streams), config.graceful_timeout)
                for stream in list(config.streams):
                    await trio.aclose_forcefully(stream)


async def credentials(fs: FileSystem, access_key: str | None, secret_key: str | None) -> tuple[str, str, bool]:
    """The configured pair, or the one stored in the cartridge (generated on first use).
    Returns (access, secret, generated_or_stored)."""
    if access_key and secret_key:
        return access_key, secret_key, False
    if access_key or secret_key:
        raise InvalidArgument("give both an S3 access key and a secret key, or neither")
    stored_access = await fs.get_setting(_ACCESS_SETTING)
    stored_secret = await fs.get_setting(_SECRET_SETTING)
    if stored_access and stored_secret:
        return stored_access.decode(), stored_secret.decode(), True
    access = "CART" + secrets.token_hex(8).upper()
    secret = secrets.token_urlsafe(30)
    await fs.set_setting(_ACCESS_SETTING, access.encode())
    await fs.set_setting(_SECRET_SETTING, secret.encode())
    await trio.to_thread.run_sync(fs.engine.sync)
    return access, secret, True


async def run(engine: Engine, host: str, port: int, *, access_key: str | None = None,
              secret_key: str | None = None, region: str = "us-east-1",
              domain: str | None = None, body_timeout: float = BODY_TIMEOUT) -> None:
    """Serve an open engine until SIGINT/SIGTERM, committing periodically; closes the engine."""
    keep_loop_responsive()
    fs = FileSystem(engine)
    with shutdown_signals(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            access, secret, show = await credentials(fs, access_key, secret_key)
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(partial(
                    serve, fs, host, port, access_key=access, secret_key=secret, region=region,
                    domain=domain, body_timeout=body_timeout))
                shown_host = f"[{host}]" if ":" in host else host
                print(f"cartridge S3 endpoint listening on http://{shown_host}:{bound}", flush=True)
                if show:
                    print(f"access key: {access}\nsecret key: {secret}", flush=True)
                nursery.start_soon(fs.commit_periodically)
                nursery.start_soon(control.serve, fs, engine.dev.path)
                tune_gc()
                async for signum in signals:
                    log.info("signal %d: shutting down", signum)
                    break
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await fs.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cartridge-s3-server", description="Serve a cartridge over S3.")
    p.add_argument("--cartridge-path", required=True, help="the .cart file")
    p.add_argument("--blocks", type=int, help="create the cartridge with this many 4096-byte blocks if missing")
    p.add_argument("-H", "--host", default="127.0.0.1")
    p.add_argument("-P", "--port", type=int, default=9000, help="0 picks a free port")
    p.add_argument("--access-key", default=os.environ.get("CARTRIDGE_ACCESS_KEY"))
    p.add_argument("--secret-key", default=os.environ.get("CARTRIDGE_SECRET_KEY"))
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--domain", help="accept virtual-hosted style requests for <bucket>.<domain>")
    p.add_argument("--body-timeout", type=float, default=BODY_TIMEOUT, metavar="SECONDS",
                   help="answer RequestTimeout when a request body stalls this long "
                   f"(default {BODY_TIMEOUT:g})")
    return p


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = _parser().parse_args(argv)
    try:
        if not os.path.exists(args.cartridge_path):
            if not args.blocks:
                print(f"cartridge-s3-server: {args.cartridge_path} does not exist "
                      "(give --blocks N to create it)", file=sys.stderr)
                return 1
            Engine.create(args.cartridge_path, args.blocks).close()
        engine = Engine.open(args.cartridge_path)
        trio.run(partial(run, engine, args.host, args.port, access_key=args.access_key,
                         secret_key=args.secret_key, region=args.region, domain=args.domain,
                         body_timeout=args.body_timeout))
    except CartridgeError as exc:
        print(f"cartridge-s3-server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
