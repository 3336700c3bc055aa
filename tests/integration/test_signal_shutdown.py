"""SIGTERM of the mount while an S3 client has stopped reading, and a second SIGTERM during
the shutdown: the process still ends with status 0, unmounted, with everything committed."""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import socket
import sys
import termios
import time
from urllib.parse import urlsplit

BUCKET = "stop"


def stuck_get(url: str) -> socket.socket:
    """A GET of presigned `url` whose response is never read: with a small receive buffer the
    server soon blocks in its send. Returned once the response has started and stopped coming."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # before connecting
    sock.settimeout(30)
    sock.connect((parts.hostname, parts.port))
    sock.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                 "Connection: close\r\n\r\n".encode())
    assert sock.recv(12, socket.MSG_PEEK) == b"HTTP/1.1 200"
    queued = -1
    for _ in range(300):
        time.sleep(0.1)
        now = int.from_bytes(fcntl.ioctl(sock, termios.FIONREAD, bytes(4)), sys.byteorder)
        if now == queued:
            return sock
        queued = now
    sock.close()
    raise AssertionError("the server kept sending for 30 s into a window of 64 KiB")


def test_sigterm_twice_with_a_stuck_s3_client_ends_clean(make_both):
    both = make_both()
    both.s3.create_bucket(Bucket=BUCKET)
    data = os.urandom(64 << 20)
    both.s3.put_object(Bucket=BUCKET, Key="big", Body=data)
    note = b"written through the mount, never synced"
    (both.mnt / BUCKET / "note").write_bytes(note)
    url = both.s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "big"})

    sock = stuck_get(url)
    try:
        proc = both.mount.proc
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)  # within the S3 endpoint's 5 s grace for requests in flight
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        sock.close()
    both.mount.proc = None
    log = both.mount.log.read_text()
    assert code == 0, log
    assert not os.path.ismount(both.mnt)
    both.mount.fsck()

    both.restart()
    assert (both.mnt / BUCKET / "note").read_bytes() == note
    body = both.s3.get_object(Bucket=BUCKET, Key="big")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
