"""MirrorMaker 2 in production: the local stack's renderer (``pipeline.mirrormaker``) with
every cluster at its own bootstrap servers and replication factor 3."""

from __future__ import annotations

from deployment.kafka import PRODUCTION_REPLICATION
from pipeline.mirrormaker import render_mm2_properties
from pipeline.topology import Topology

__all__ = ["render_mm2"]


def render_mm2(topology: Topology, target: str) -> str:
    """``mm2-<target>.properties`` for ``connect-mirror-maker.sh`` (or
    ``org.apache.kafka.connect.mirror.MirrorMaker``) run with ``--clusters <target>``, in
    ``target``'s DC."""
    bootstrap = {dc.name: dc.kafka for dc in topology.dcs}
    return render_mm2_properties(
        topology, target, bootstrap, replication_factor=PRODUCTION_REPLICATION
    )
