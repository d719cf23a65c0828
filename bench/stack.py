"""Cold start time and memory of a local stack of N DCs, in its own run dir and ports: a
broker, a database and a MirrorMaker 2 per DC and the links' toxiproxy."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.procfs import status_kb
from pipeline.stack import down, local_topology_toml, up
from pipeline.stack.processes import StackState, process_tree

__all__ = ["StackFootprint", "bench_stack", "measure_up", "resident_memory_mb"]


@dataclass(frozen=True, slots=True)
class StackFootprint:
    """``up_s``: cold ``stack up`` until every part is healthy (s); memory in MiB."""

    dcs: int
    up_s: float
    resident_mb: float
    processes: int


def resident_memory_mb(run_dir: Path) -> tuple[float, int]:
    """Resident memory (MiB) of every process of the stack and its descendants, and their count."""
    state = StackState.load(run_dir)
    members = process_tree({r.pid for r in state.processes.values()} if state else set())
    return sum(status_kb(pid, "VmRSS") for pid in members) / 1024.0, len(members)


def measure_up(run_dir: Path, topology_file: Path, dcs: int) -> StackFootprint:
    """Bring the stack of ``topology_file`` up in ``run_dir`` and measure it: the time until
    every part is healthy, then its memory once the JVMs settled."""
    start = time.monotonic()
    up(run_dir, topology_file)
    elapsed = time.monotonic() - start
    # Let the JVMs settle after start-up before reading memory.
    time.sleep(5.0)
    memory, count = resident_memory_mb(run_dir)
    return StackFootprint(dcs=dcs, up_s=elapsed, resident_mb=memory, processes=count)


def bench_stack(dcs: int = 3, *, base_port: int = 30090) -> StackFootprint:
    """Bring a fresh stack up from nothing, measure it, then take it down and delete it."""
    with tempfile.TemporaryDirectory(prefix="coopr-bench-stack-") as tmp:
        run_dir = Path(tmp)
        topology = run_dir / "topology.toml"
        topology.write_text(local_topology_toml(dcs, base_port=base_port))
        try:
            return measure_up(run_dir, topology, dcs)
        finally:
            down(run_dir, wipe=True)
