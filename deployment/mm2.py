"""MirrorMaker 2 in production: the local stack's renderer (``pipeline.mirrormaker``) with
every cluster at its own bootstrap servers and replication factor 3. A cluster the topology
reaches over SASL_SSL is logged into as ``coopr-mm2-<target>`` with the password in
:func:`credentials_path` (``password=...``, readable by MirrorMaker's user only)."""

from __future__ import annotations

from pathlib import Path

from deployment.kafka import PRODUCTION_REPLICATION
from pipeline.mirrormaker import render_mm2_properties
from pipeline.topology import Topology

__all__ = ["credentials_path", "render_mm2"]


def credentials_path(target: str) -> Path:
    """Where MirrorMaker 2 into ``target`` reads its password from, on its host."""
    return Path("/etc/coopr-pipeline") / f"mm2-{target}.properties"


def render_mm2(topology: Topology, target: str) -> str:
    """``mm2-<target>.properties`` for ``connect-mirror-maker.sh`` (or
    ``org.apache.kafka.connect.mirror.MirrorMaker``) run with ``--clusters <target>``, in
    ``target``'s DC."""
    bootstrap = {dc.name: dc.kafka for dc in topology.dcs}
    return render_mm2_properties(
        topology,
        target,
        bootstrap,
        replication_factor=PRODUCTION_REPLICATION,
        credentials=credentials_path(target),
    )
