"""Relay and applier workers as separate processes, as production runs them, for a benchmark,
and waiting for what they do.

Their logs (warnings and errors only) go to ``coopr-bench-<worker>-<dc>.log`` in the system's
temporary folder, so a benchmark that fails leaves the workers' side of the story behind.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.stack.processes import ProcessRecord, spawn
from pipeline.stack.security import StackSecurity
from pipeline.topology import Topology

__all__ = ["start_worker", "wait_until"]


def start_worker(kind: str, dc: str, topology: Topology, *options: str) -> ProcessRecord:
    """Start ``coopr-pipeline worker <kind> --dc <dc>`` on ``topology``'s file, with ``options``
    (and its credentials on a secured stack).

    Stop it with :func:`pipeline.stack.processes.stop`.
    """
    name = f"bench-{kind}-{dc}"
    argv = [sys.executable, "-m", "cli", "--log-level", "warning", "worker", kind, "--dc", dc]
    argv += ["--topology", topology.source, *options]
    security = StackSecurity.of_topology(topology)
    env = None if security is None else security.worker_environ(kind, dc)
    log = Path(tempfile.gettempdir()) / f"coopr-{name}.log"
    return spawn(name, argv, log=log, ports=(), env=env)


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``check`` every 0.2 s until true; seconds taken. Raises after ``timeout_s`` s."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise PipelineError(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.2)
    return time.monotonic() - start
