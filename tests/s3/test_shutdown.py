"""SIGTERM while requests are in flight: a bounded grace for them, then a clean exit (status 0,
everything committed), even when a client has stopped reading its response."""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from tests.s3.conftest import Server

BUCKET = "shutdown"
CARTRIDGE = Path(sys.executable).parent / "cartridge"


def open_request(server: Server, method: str, key: str, body: bytes = b"", *, sent: int | None = None,
                 receive_buffer: int | None = None) -> socket.socket:
    """A connection to `server` on which a signed request for `key` with `body` was sent (only
    its first `sent` bytes of body when given) and nothing was read."""
    url = server.url(f"/{BUCKET}/{key}")
    sock = socket.socket()
    if receive_buffer is not None:
        # Set before connecting, as it bounds the TCP window the server may fill.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    head = [f"{method} {urlsplit(url).path} HTTP/1.1", f"Host: {urlsplit(url).netloc}",
            f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in server.sign(method, url, body=body).items()
             if name.lower() != "host"]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body[:sent])
    return sock


def wait_window_full(sock: socket.socket) -> None:
    """Wait until the data waiting on `sock` stops growing: the server, which sends without a
    pause while it can, is then blocked in a send."""
    queued = -1
    for _ in range(300):
        time.sleep(0.1)
        now = int.from_bytes(fcntl.ioctl(sock, termios.FIONREAD, bytes(4)), sys.byteorder)
        if now == queued:
            return
        queued = now
    raise AssertionError("the server kept sending for 30 s into a window of 64 KiB")


def wait_refused(server: Server) -> None:
    """Wait until the server no longer accepts connections: it has begun to shut down."""
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.05)
    raise AssertionError("the server still accepts connections 30 s after SIGTERM")


def read_response(sock: socket.socket) -> bytes:
    """The response on `sock` (sent with Connection: close), read until the server closes it."""
    data = bytearray()
    for _ in range(100_000):  # far more reads than 8 MiB takes; each waits 30 s at most
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(data)
        data += chunk
    raise AssertionError("the response does not end")


def check_kept(start: Callable[[], Server], key: str, data: bytes) -> None:
    """A new server on the same cartridge serves `data` for `key`, and `cartridge fsck` passes."""
    server = start()
    status, _, body = server.request("GET", server.url(f"/{BUCKET}/{key}"))
    server.stop()
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    fsck = subprocess.run([str(CARTRIDGE), "fsck", str(server.cart)], capture_output=True,
                          text=True, timeout=120)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_sigterm_with_a_client_that_stopped_reading(own_server):
    """hypercorn shields its socket sends from cancellation, so a server stopping while this
    client reads nothing waited for it forever, until a second signal ended it unclean (a
    second signal is now ignored)."""
    server = own_server()
    data = os.urandom(64 << 20)
    server.client().create_bucket(Bucket=BUCKET)
    server.client().put_object(Bucket=BUCKET, Key="big", Body=data)

    # With a small receive buffer the server soon fills the window and blocks in its send.
    stuck = open_request(server, "GET", "big", receive_buffer=64 << 10)
    try:
        assert stuck.recv(12, socket.MSG_PEEK) == b"HTTP/1.1 200"  # the body is under way
        wait_window_full(stuck)
        server.proc.terminate()
        time.sleep(1)  # an impatient second signal, within the grace: ignored
        server.proc.terminate()
        server.wait(30)
    finally:
        stuck.close()
    check_kept(own_server, "big", data)


def test_sigterm_lets_a_request_in_flight_finish(own_server):
    """An upload under way when the signal comes finishes within the grace, and is kept."""
    server = own_server()
    data = os.urandom(8 << 20)
    server.client().create_bucket(Bucket=BUCKET)

    upload = open_request(server, "PUT", "late", data, sent=len(data) // 2)
    try:
        server.proc.terminate()
        wait_refused(server)
        upload.sendall(data[len(data) // 2:])
        response = read_response(upload)
    finally:
        upload.close()
    assert response.startswith(b"HTTP/1.1 200"), response[:1000]
    server.wait(30)
    check_kept(own_server, "late", data)
