"""The local multi-DC stack: real Kafka brokers (KRaft), MirrorMaker 2, PostgreSQL, and
links between the DCs that can fail (toxiproxy)."""

from pipeline.stack.layout import DEFAULT_BASE_PORT, local_topology_toml
from pipeline.stack.orchestrator import ProcessStatus, down, kill_dc, start_dc, status, up

__all__ = [
    "DEFAULT_BASE_PORT",
    "ProcessStatus",
    "down",
    "kill_dc",
    "local_topology_toml",
    "start_dc",
    "status",
    "up",
]
