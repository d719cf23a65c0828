"""The local multi-DC stack: real Kafka brokers (KRaft), MirrorMaker 2 and PostgreSQL."""

from pipeline.stack.layout import DEFAULT_BASE_PORT, local_topology_toml
from pipeline.stack.orchestrator import ProcessStatus, down, status, up

__all__ = ["DEFAULT_BASE_PORT", "ProcessStatus", "down", "local_topology_toml", "status", "up"]
