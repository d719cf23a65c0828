"""Writing every artifact of a target into a folder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from deployment.k8s import render_manifests
from deployment.kafka import render_broker_settings, render_topics
from deployment.mm2 import render_mm2
from deployment.systemd import render_units
from pipeline.topology import Topology

__all__ = ["TARGETS", "Installed", "render"]


@dataclass(frozen=True, slots=True)
class Installed:
    """Where the workers come from: the installed command (systemd, an absolute path) and
    the container image (Kubernetes)."""

    executable: str = "/opt/coopr-pipeline/bin/coopr-pipeline"
    image: str = "coopr-pipeline:0.1.0"


def _mm2(topology: Topology, installed: Installed) -> dict[str, str]:
    return {f"mm2-{dc.name}.properties": render_mm2(topology, dc.name) for dc in topology.dcs}


def _kafka(topology: Topology, installed: Installed) -> dict[str, str]:
    files = {}
    for dc in topology.dcs:
        files[f"broker-{dc.name}.properties"] = render_broker_settings(dc.name)
        files[f"topics-{dc.name}.sh"] = render_topics(topology, dc.name)
    return files


def _systemd(topology: Topology, installed: Installed) -> dict[str, str]:
    return render_units(topology, installed.executable)


def _k8s(topology: Topology, installed: Installed) -> dict[str, str]:
    return {
        f"k8s-{dc.name}.yaml": render_manifests(topology, dc.name, installed.image)
        for dc in topology.dcs
    }


#: Each target's renderer: file name to text.
TARGETS: Mapping[str, Callable[[Topology, Installed], dict[str, str]]] = {
    "mm2": _mm2,
    "kafka": _kafka,
    "systemd": _systemd,
    "k8s": _k8s,
}


def render(topology: Topology, target: str, out: Path, installed: Installed) -> list[Path]:
    """Write ``target``'s files for ``topology`` into ``out`` (created if missing, files of
    the same names replaced); returns them. Shell scripts are made executable."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in TARGETS[target](topology, installed).items():
        path = out / name
        path.write_text(text)
        if name.endswith(".sh"):
            path.chmod(0o755)
        written.append(path)
    return written
