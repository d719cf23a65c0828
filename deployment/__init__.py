"""Production artifacts rendered from the one topology file (``coopr-pipeline deploy render``):
MirrorMaker 2 configs, Kafka broker settings and topics, systemd units. Rendering only reads
the topology, so the flows, topics and workers of a deployment cannot disagree with it."""

from deployment.k8s import STRIMZI_API, render_manifests
from deployment.kafka import BROKER_SETTINGS, render_broker_settings, render_topics
from deployment.mm2 import render_mm2
from deployment.render import TARGETS, Installed, render
from deployment.systemd import WORKER_PORTS, render_units

__all__ = [
    "BROKER_SETTINGS",
    "STRIMZI_API",
    "TARGETS",
    "WORKER_PORTS",
    "Installed",
    "render",
    "render_broker_settings",
    "render_manifests",
    "render_mm2",
    "render_topics",
    "render_units",
]
