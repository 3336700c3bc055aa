"""Control channel of a running mount: `cartridge snapshot …`/`info` on a mounted cartridge.

The serving process listens on a Unix socket only its user can reach (a 0700 directory); the
CLI, finding the cartridge locked by that process, sends one JSON request line and reads one JSON
reply line. Snapshot operations run in a worker thread like any other engine work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable

import trio

from .engine.store import Engine
from .errors import CartridgeError, NotFound
from .fs.filesystem import Change, FileSystem
from .fs.multipart import UploadRecords

log = logging.getLogger("cartridge.control")
MAX_REQUEST = 64 * 1024


def socket_path(cartridge: str) -> str:
    """Where the process serving `cartridge` listens (derived from the file's real path)."""
    digest = hashlib.sha256(os.path.realpath(cartridge).encode()).hexdigest()[:20]
    base = "/run/cartridge" if os.access("/run", os.W_OK) else os.path.join(tempfile.gettempdir(), f"cartridge-{os.getuid()}")
    return os.path.join(base, f"{digest}.sock")


def _commands(fs: FileSystem) -> dict[str, Callable[..., object]]:
    engine = fs.engine

    return {
        "snapshot_create": engine.snapshot_create,
        "snapshot_delete": engine.snapshot_delete,
        "snapshot_restore": engine.snapshot_restore,
        "snapshot_list": lambda: jsonable(engine.info())["snapshots"],
        "info": lambda: full_info(engine),
    }


def full_info(engine: Engine) -> dict:
    """What `cartridge info` shows, in JSON types: the engine's figures and the open uploads."""
    return {**jsonable(engine.info()), "uploads": UploadRecords(engine).usage_sync()}


def jsonable(info: dict) -> dict:
    """`Engine.info()` in plain JSON types (the same form locally and over the socket)."""
    out = dict(info)
    out["fuses"] = {k: int(v) for k, v in dataclasses.asdict(info["fuses"]).items()}
    out["snapshots"] = [{"name": s.name, "created_ns": s.created_ns, "gen": s.gen} for s in info["snapshots"]]
    return out


async def serve(fs: FileSystem, cartridge: str) -> None:
    """Answer control requests until cancelled."""
    path = socket_path(cartridge)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(8)
    commands = _commands(fs)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            raw = b""
            while not raw.endswith(b"\n") and len(raw) < MAX_REQUEST:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                raw += chunk
            answer = await _answer(commands, raw)
            if answer["ok"] and answer.pop("changed_all", False):
                # After a restore anything may differ: the mount drops what the kernel cached.
                await fs.emit(Change("control"))
            await stream.send_all(json.dumps(answer).encode() + b"\n")

    try:
        await trio.serve_listeners(handle, [trio.SocketListener(sock)])
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


async def _answer(commands: dict[str, Callable[..., object]], raw: bytes) -> dict:
    try:
        request = json.loads(raw)
        command = commands[request["command"]]
        result = await trio.to_thread.run_sync(lambda: command(*request.get("args", [])))
        return {"ok": True, "result": result, "changed_all": request["command"] == "snapshot_restore"}
    except CartridgeError as exc:
        return {"ok": False, "error": str(exc), "errno": exc.errno}
    except (ValueError, KeyError, TypeError) as exc:
        return {"ok": False, "error": f"bad control request: {exc!r}", "errno": 22}


def request(cartridge: str, command: str, *args: object, timeout: float = 600.0) -> object:
    """Run `command` in the process serving `cartridge`; raises NotFound when none listens."""
    path = socket_path(cartridge)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise NotFound(f"{cartridge} is in use, but its process answers no control requests") from exc
        sock.sendall(json.dumps({"command": command, "args": list(args)}).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    answer = json.loads(reply)
    if not answer["ok"]:
        error = CartridgeError(answer["error"])
        error.errno = answer.get("errno", error.errno)
        raise error
    return answer["result"]
