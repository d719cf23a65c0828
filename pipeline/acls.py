"""Who may do what in each DC's Kafka: the principals and their ACLs, from the topology.

Least privilege per DC principal (docs/security.md): every grant names the topics of one
role in one DC, derived from the same shard layout that decides the MirrorMaker 2 flows
(:func:`pipeline.mirrormaker.flow_topics`), so the ACLs, the flows and the topics cannot
disagree. The local secured stack creates these ACLs in each broker
(:mod:`pipeline.stack.security`) and ``deploy render --target k8s`` writes them as Strimzi
``KafkaUser`` resources: one function for both.

A principal is a SCRAM user of one cluster. MirrorMaker 2 into DC t has the user
``coopr-mm2-t`` in t's cluster (where it writes) and in every cluster it reads from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.mirrormaker import flow_topics
from pipeline.topics import (
    DLQ_TOPIC,
    MIRRORED_TOPICS,
    mirrored,
    shard_topic,
)
from pipeline.topology import Topology

__all__ = [
    "Grant",
    "Principal",
    "cluster_principals",
    "mirrormaker_group",
    "principal_name",
]

#: Operations as Kafka names them in ``kafka-acls.sh`` and Strimzi's ``KafkaUser``.
Operation = Literal[
    "Read", "Write", "Create", "Describe", "Alter", "AlterConfigs", "DescribeConfigs"
]
Role = Literal["relay", "applier", "controller", "mm2", "operator"]


@dataclass(frozen=True, slots=True)
class Grant:
    """Operations allowed on one resource: a topic or group named exactly (``literal``) or
    every one whose name starts with ``name`` (``prefix``); ``*`` literal is every one."""

    resource: Literal["topic", "group"]
    name: str
    operations: tuple[Operation, ...]
    pattern: Literal["literal", "prefix"] = "literal"


@dataclass(frozen=True, slots=True)
class Principal:
    """A SCRAM user of one DC's cluster and everything it may do there (deny by default)."""

    user: str
    grants: tuple[Grant, ...]


def mirrormaker_group(target: str) -> str:
    """The Connect group of MirrorMaker 2 into ``target`` as Strimzi runs it (``deploy
    render --target k8s``); run dedicated (the local stack) it has one group per flow,
    ``<source>-mm2``."""
    return f"coopr-pipeline-mm2-{target}"


def principal_name(role: Role, dc: str | None = None) -> str:
    """``coopr-relay-dc1``; the operator, one for every DC, is ``coopr-operator``."""
    return "coopr-operator" if role == "operator" else f"coopr-{role}-{dc}"


_READ: tuple[Operation, ...] = ("Read", "Describe")


def _topics(names: list[str], operations: tuple[Operation, ...]) -> list[Grant]:
    return [Grant("topic", name, operations) for name in names]


def cluster_principals(topology: Topology, dc: str) -> tuple[Principal, ...]:
    """Every principal of ``dc``'s cluster with its grants there: its own DC's relay, applier
    (data DCs only) and controller, the MirrorMaker 2 writing into it and each one reading
    from it, and the read-only operator."""
    site = topology.dc(dc)
    others = [o.name for o in topology.dcs if o.name != dc]
    principals: list[Principal] = []
    if not site.witness:
        # Every shard of its DC set, not only those it owns now: ownership moves in seconds
        # and the fence (epochs, claims, cuts) stops a stale owner, not the ACLs.
        shards = [shard_topic(s) for s in topology.shards_of(dc)]
        principals.append(
            Principal(principal_name("relay", dc), tuple(_topics(shards, ("Write", "Describe"))))
        )
        copies = [
            mirrored(source, shard_topic(s))
            for source, shared in topology.replicated_by(dc).items()
            for s in shared
        ]
        principals.append(
            Principal(
                principal_name("applier", dc),
                (
                    *_topics(copies, _READ),
                    Grant("topic", DLQ_TOPIC, ("Write", "Describe")),
                    Grant("group", principal_name("applier", dc), ("Read", "Describe")),
                ),
            )
        )
    heard = [mirrored(o, t) for o in others for t in MIRRORED_TOPICS]
    principals.append(
        Principal(
            principal_name("controller", dc),
            (
                *_topics(list(MIRRORED_TOPICS), ("Read", "Write", "Describe")),
                *_topics(heard, _READ),
                Grant("group", principal_name("controller", dc), ("Read", "Describe")),
            ),
        )
    )
    # MirrorMaker 2 into dc: it creates the copies (prefix "<source>."), keeps their configs
    # in step, and runs one Connect worker per flow with its internal topics and group.
    writes: tuple[Operation, ...] = (
        "Create", "Write", "Read", "Describe", "Alter", "AlterConfigs", "DescribeConfigs"
    )  # fmt: skip
    principals.append(
        Principal(
            principal_name("mm2", dc),
            (
                *(Grant("topic", f"{o}.", writes, "prefix") for o in others),
                Grant("topic", "mm2-", writes, "prefix"),
                *(Grant("group", f"{o}-mm2", ("Read", "Describe")) for o in others),
                Grant("group", mirrormaker_group(dc), ("Read", "Describe")),
            ),
        )
    )
    # Each MirrorMaker reading from dc: exactly the topics of its flow, read only.
    for target in others:
        topics = list(flow_topics(topology, dc, target))
        principals.append(
            Principal(
                principal_name("mm2", target),
                tuple(_topics(topics, ("Read", "Describe", "DescribeConfigs"))),
            )
        )
    principals.append(
        Principal(
            principal_name("operator"),
            (
                Grant("topic", "*", ("Read", "Describe", "DescribeConfigs")),
                Grant("group", "coopr-cli-", ("Read", "Describe"), "prefix"),
                Grant("group", "coopr-ownership-show", ("Read", "Describe")),
            ),
        )
    )
    return tuple(principals)
