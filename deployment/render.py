"""Writing every artifact of a target into a folder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from deployment.kafka import render_broker_settings, render_topics
from deployment.mm2 import render_mm2
from deployment.systemd import render_units
from pipeline.topology import Topology

__all__ = ["TARGETS", "render"]


def _mm2(topology: Topology, executable: str) -> dict[str, str]:
    return {f"mm2-{dc.name}.properties": render_mm2(topology, dc.name) for dc in topology.dcs}


def _kafka(topology: Topology, executable: str) -> dict[str, str]:
    files = {}
    for dc in topology.dcs:
        files[f"broker-{dc.name}.properties"] = render_broker_settings(dc.name)
        files[f"topics-{dc.name}.sh"] = render_topics(topology, dc.name)
    return files


#: Each target's renderer: file name to text.
TARGETS: Mapping[str, Callable[[Topology, str], dict[str, str]]] = {
    "mm2": _mm2,
    "kafka": _kafka,
    "systemd": render_units,
}


def render(topology: Topology, target: str, out: Path, executable: str) -> list[Path]:
    """Write ``target``'s files for ``topology`` into ``out`` (created if missing, files of
    the same names replaced); returns them. Shell scripts are made executable."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in TARGETS[target](topology, executable).items():
        path = out / name
        path.write_text(text)
        if name.endswith(".sh"):
            path.chmod(0o755)
        written.append(path)
    return written
