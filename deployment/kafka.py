"""What a production Kafka cluster of a DC needs for the pipeline: the broker settings it
relies on, and its topics (the local stack's, at replication factor 3).

The topics are the local stack's own list (:func:`pipeline.stack.orchestrator.dc_topics`):
the stack creates exactly these, so what is rendered is what the tests run with, apart from
the replication settings a single broker cannot have.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.stack.orchestrator import dc_topics
from pipeline.topology import Topology

__all__ = ["BROKER_SETTINGS", "PRODUCTION_REPLICATION", "render_broker_settings", "render_topics"]

#: Replicas of every partition in production: one broker may be lost, and a second be down
#: for maintenance, without losing a record.
PRODUCTION_REPLICATION = 3

#: Broker settings the pipeline relies on, each with the reason (written as a comment).
BROKER_SETTINGS: Mapping[str, tuple[str, str]] = {
    "default.replication.factor": (
        str(PRODUCTION_REPLICATION),
        "a topic created by a tool without a factor still survives a broker's loss",
    ),
    "min.insync.replicas": (
        "2",
        "with acks=all (relay and MirrorMaker 2) a record is acknowledged only once two"
        " brokers hold it: an acknowledged event survives the loss of any one broker",
    ),
    "unclean.leader.election.enable": (
        "false",
        "an out-of-sync replica never becomes leader: that would drop acknowledged events"
        " and rewrite offsets the appliers stored in Postgres",
    ),
    "auto.create.topics.enable": (
        "false",
        "a topic with a wrong name or settings is an error, never a silent new topic",
    ),
    "offsets.topic.replication.factor": (
        str(PRODUCTION_REPLICATION),
        "MirrorMaker 2's Connect workers keep their consumer offsets there",
    ),
    "transaction.state.log.replication.factor": (
        str(PRODUCTION_REPLICATION),
        "idempotent producers (the relay's) keep producer state that must survive a broker",
    ),
    "transaction.state.log.min.isr": ("2", "as min.insync.replicas"),
}


def render_broker_settings(dc: str) -> str:
    """``broker-<dc>.properties``: lines to add to each broker's ``server.properties``."""
    lines = [
        f"# Settings every broker of {dc}'s Kafka needs for coopr-pipeline; add them to its",
        "# server.properties. Written by coopr-pipeline deploy render.",
    ]
    for key, (value, why) in BROKER_SETTINGS.items():
        lines += ["", f"# {why}", f"{key}={value}"]
    return "\n".join(lines) + "\n"


def render_topics(topology: Topology, dc: str) -> str:
    """``topics-<dc>.sh``: creates ``dc``'s local topics (idempotent: ``--if-not-exists``)
    with ``kafka-topics.sh``; ``$BOOTSTRAP`` and ``$COMMAND_CONFIG`` (client security
    settings) come from the environment."""
    lines = [
        "#!/bin/sh",
        f"# {dc}'s local topics for coopr-pipeline (topology {topology.source}).",
        "# Written by coopr-pipeline deploy render; edit the topology, not this file.",
        "# Mirrored copies are created by MirrorMaker 2; the applier never creates a topic.",
        "set -eu",
        ': "${BOOTSTRAP:?the bootstrap servers of this DC\'s Kafka}"',
    ]
    for spec in dc_topics(topology, topology.dc(dc)):
        config = {"min.insync.replicas": "2", **spec.config}
        args = [
            f"--topic {spec.name}",
            f"--partitions {spec.partitions}",
            f"--replication-factor {PRODUCTION_REPLICATION}",
            *(f"--config {k}={v}" for k, v in sorted(config.items())),
        ]
        lines.append(
            'kafka-topics.sh --bootstrap-server "$BOOTSTRAP"'
            ' ${COMMAND_CONFIG:+--command-config "$COMMAND_CONFIG"}'
            " --create --if-not-exists " + " ".join(args)
        )
    return "\n".join(lines) + "\n"
