"""Graceful stop for long-running workers.

The first SIGTERM or SIGINT sets an event that the worker checks between batches, so the
batch in flight finishes, its offsets or marks are committed, and the process exits 0. A
second signal is not caught: the default action stops the process at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["stop_on_signals"]


def stop_on_signals() -> threading.Event:
    """An event set by the first SIGTERM or SIGINT (main thread only)."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()
        signal.signal(signum, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop
