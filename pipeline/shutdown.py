"""Graceful stop for long-running workers.

The first SIGTERM or SIGINT sets an event that the worker checks between batches, so the
batch in flight finishes, its offsets or marks are committed, and the process exits 0. A
second signal is not caught: the default action stops the process at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Protocol, Self

__all__ = ["Closeable", "Worker", "run_in_thread", "stop_on_signals"]


def stop_on_signals() -> threading.Event:
    """An event set by the first SIGTERM or SIGINT (main thread only)."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()
        signal.signal(signum, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


class Worker(Protocol):
    """A long-running worker: :meth:`run` until its stop event is set, then :meth:`close`."""

    def run(self) -> None: ...

    def close(self) -> None: ...


def run_in_thread(worker: Worker) -> threading.Thread:
    """Run ``worker`` in a daemon thread of this process (benchmarks, tests), closing it when
    :meth:`Worker.run` returns; set the worker's stop event and join the thread to end it."""

    def target() -> None:
        try:
            worker.run()
        finally:
            worker.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


class Closeable:
    """A context manager whose exit calls :meth:`close` (workers, producers, servers)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
