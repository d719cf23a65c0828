"""Relay and applier workers as separate processes, as production runs them, for a benchmark.

Their logs (warnings and errors only) go to ``coopr-bench-<worker>-<dc>.log`` in the system's
temporary folder, so a benchmark that fails leaves the workers' side of the story behind.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from pipeline.stack.processes import ProcessRecord, spawn
from pipeline.topology import Topology

__all__ = ["start_worker"]


def start_worker(kind: str, dc: str, topology: Topology, *options: str) -> ProcessRecord:
    """Start ``coopr-pipeline worker <kind> --dc <dc>`` on ``topology``'s file, with ``options``.

    Stop it with :func:`pipeline.stack.processes.stop`.
    """
    name = f"bench-{kind}-{dc}"
    argv = [sys.executable, "-m", "cli", "--log-level", "warning", "worker", kind, "--dc", dc]
    argv += ["--topology", topology.source, *options]
    return spawn(name, argv, log=Path(tempfile.gettempdir()) / f"coopr-{name}.log", ports=())
