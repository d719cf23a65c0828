"""MirrorMaker 2 configuration rendered from the topology (dedicated mode).

One MirrorMaker 2 process per target DC B (``--clusters B``), as MirrorMaker 2's documentation
recommends for production: it reads every remote cluster and writes only into B, so B's
death takes its MirrorMaker with it and no flow into another DC depends on it. Its config
names each cluster at the address B reaches it by (remote ones through their links in the
local stack) and enables only the flows ``A->B``. The flow ``A->B`` carries:

- ``coopr.heartbeat``, ``coopr.ownership`` and ``coopr.probe`` between every pair of DCs,
  witnesses included;
- ``coopr.shard.NN`` for each shard whose DC set holds both A and B.

Each flow's ``topics`` list names local topics exactly (MirrorMaker 2 matches the whole
name), so a mirrored copy such as ``dc1.coopr.shard.07`` is never mirrored again and
``coopr.dlq`` never leaves its DC. The flows do not depend on who owns a shard now, so they
stay right after any failover.

Latency (measured by ``coopr-pipeline bench mirror``): MirrorMaker 2's defaults are built for
throughput. The consumer's ``fetch.max.wait.ms`` bounds how long a fetch waits when there is
nothing to return, and the producer's ``linger.ms`` holds a record back to fill a batch; both
are lowered in :data:`LATENCY_TUNING`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.topics import MIRRORED_TOPICS, shard_topic
from pipeline.topology import Topology

__all__ = ["LATENCY_TUNING", "flow_topics", "render_mm2_properties"]

#: Per-cluster client settings applied to every DC (``<dc>.consumer.*``, ``<dc>.producer.*``).
LATENCY_TUNING: Mapping[str, str] = {
    "producer.linger.ms": "0",
    "producer.acks": "all",
    "producer.enable.idempotence": "true",
}

_GLOBAL = {
    "replication.policy.class": "org.apache.kafka.connect.mirror.DefaultReplicationPolicy",
    # The shards replicate records; consumer groups, their offsets and MM2's own heartbeats
    # are not part of the contract (the applier keeps its offsets in Postgres).
    "emit.heartbeats.enabled": "false",
    "heartbeats.replication.enabled": "false",
    "emit.checkpoints.enabled": "false",
    "sync.group.offsets.enabled": "false",
    "refresh.groups.enabled": "false",
    "sync.topic.acls.enabled": "false",
    # 600 s by default: a topic created after start would wait ten minutes to flow.
    "refresh.topics.interval.seconds": "5",
    "consumer.poll.timeout.ms": "100",
    "tasks.max": "1",
    # MirrorMaker's own bookkeeping topics (Connect's offsets and status, 25 and 5 partitions
    # by default) need one partition each for one MirrorMaker process.
    "offset.storage.partitions": "1",
    "status.storage.partitions": "1",
    # Offset syncs go to the target like everything else MirrorMaker writes (by default they
    # go to the source): a MirrorMaker only reads remote clusters, so a cut link only stops
    # its reads.
    "offset-syncs.topic.location": "target",
    # Every plugin ships a ServiceLoader manifest; scanning the classpath instead costs about
    # five seconds per flow at start.
    "plugin.discovery": "service_load",
}


def flow_topics(topology: Topology, source: str, target: str) -> tuple[str, ...]:
    """Local topics of ``source`` that the flow ``source->target`` mirrors."""
    shards = tuple(shard_topic(s) for s in topology.flow_shards(source, target))
    return (*MIRRORED_TOPICS, *shards)


def render_mm2_properties(
    topology: Topology,
    target: str,
    bootstrap: Mapping[str, str],
    *,
    replication_factor: int = 1,
    credentials: Path | None = None,
) -> str:
    """``mm2-<target>.properties`` for ``org.apache.kafka.connect.mirror.MirrorMaker``
    started with ``--clusters <target>``: every flow into ``target``.

    ``bootstrap`` gives, for every DC, the bootstrap servers ``target``'s MirrorMaker uses to
    reach it (its own cluster directly, the others through their links). ``replication_factor``
    applies to mirrored topics and MirrorMaker 2's internal topics: 1 on the local
    single-broker stack, 3 in production.

    A cluster whose topology entry says ``SASL_SSL`` is reached as ``coopr-mm2-<target>``
    (docs/security.md) trusting its ``kafka_ca``; the password is read at start from
    ``credentials`` (a properties file holding ``password=...``, readable by MirrorMaker's
    user only) by Kafka's ``FileConfigProvider``, so it is never in this file.
    """
    names = [dc.name for dc in topology.dcs]
    topology.dc(target)
    missing = [name for name in names if name not in bootstrap]
    if missing:
        raise ConfigError(f"no bootstrap servers for {', '.join(missing)}", source=topology.source)
    lines = [
        f"# MirrorMaker 2 (dedicated mode) into {target} for the topology in {topology.source}.",
        "# Written by coopr-pipeline; edit the topology, not this file.",
        f"clusters = {', '.join(names)}",
    ]
    for name in names:
        lines.append(f"{name}.bootstrap.servers = {bootstrap[name]}")
        lines += [f"{name}.{key} = {value}" for key, value in LATENCY_TUNING.items()]
    secured = [dc for dc in topology.dcs if dc.kafka_security == "SASL_SSL"]
    if secured:
        if credentials is None:
            raise ConfigError(
                f"{secured[0].name}'s Kafka wants SASL_SSL: MirrorMaker needs a credentials file",
                source=topology.source,
            )
        lines += [
            "config.providers = file",
            "config.providers.file.class = "
            "org.apache.kafka.common.config.provider.FileConfigProvider",
        ]
        # pipeline.acls.principal_name("mm2", target); acls derives its grants from this
        # module's flows, so it cannot be imported here.
        login = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="coopr-mm2-{target}" password="${{file:{credentials}:password}}";'
        )
        for dc in secured:
            lines += [
                f"{dc.name}.security.protocol = SASL_SSL",
                f"{dc.name}.sasl.mechanism = SCRAM-SHA-512",
                f"{dc.name}.sasl.jaas.config = {login}",
            ]
            if dc.kafka_ca is not None:
                lines += [
                    f"{dc.name}.ssl.truststore.type = PEM",
                    f"{dc.name}.ssl.truststore.location = {dc.kafka_ca}",
                ]
    lines += [f"{key} = {value}" for key, value in _GLOBAL.items()]
    rf = str(replication_factor)
    for key in (
        "replication.factor",
        "checkpoints.topic.replication.factor",
        "heartbeats.topic.replication.factor",
        "offset-syncs.topic.replication.factor",
        "config.storage.replication.factor",
        "offset.storage.replication.factor",
        "status.storage.replication.factor",
    ):
        lines.append(f"{key} = {rf}")
    for source in names:
        if source == target:
            continue
        # Properties files treat a backslash as an escape, so the regex dot is doubled.
        pattern = ", ".join(t.replace(".", "\\\\.") for t in flow_topics(topology, source, target))
        lines.append(f"{source}->{target}.enabled = true")
        lines.append(f"{source}->{target}.topics = {pattern}")
    return "\n".join(lines) + "\n"
