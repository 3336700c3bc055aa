"""The shutdown signals of a serving process (the mount, the S3 server)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import trio


@contextlib.contextmanager
def shutdown_signals(*signums: int) -> Iterator[trio.abc.ReceiveChannel]:
    """Receive `signums` while serving and shutting down. Signals that arrive after the first
    (an impatient second Ctrl-C or SIGTERM, during the grace for requests or the last commit)
    are dropped: trio would re-raise them at the end of its receiver, under the handlers it found,
    and the default ones end the process before the cartridge is closed. So the receiver is
    opened over ignoring handlers, and the previous handlers come back only after it."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signums}
    try:
        with trio.open_signal_receiver(*signums) as received:
            yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
