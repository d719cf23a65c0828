"""What ``coopr-pipeline ownership show`` and ``ownership orphans`` report: ownership as one
DC sees it, read from that DC's own database and Kafka cluster, never from another DC's.

Heartbeat ages are by the sender's wall clock (``occurred_at``) against this host's: for
people, not for decisions (the controller decides by arrival time on its own clock).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg2.extensions
from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipeline.codec import decode
from pipeline.errors import CodecError
from pipeline.events import Heartbeat, OperationCompleted, RestartCheckpoint
from pipeline.kafka_config import KafkaSettings
from pipeline.topics import HEARTBEAT_TOPIC, mirrored
from pipeline.topology import Topology

__all__ = [
    "DcLiveness",
    "Orphan",
    "ShardOwnership",
    "latest_heartbeats",
    "liveness_rows",
    "orphans",
    "shard_states",
]


@dataclass(frozen=True, slots=True)
class ShardOwnership:
    """A shard as one DC's database has it. ``lease_s``: seconds the owner's lease still
    runs (None: static ownership, an endless lease; meaningful in the owner's database
    only). ``cut``/``cut_epoch``: the cut of the claim that made the current epoch."""

    shard: int
    owner_dc: str
    epoch: int
    writable: bool
    lease_s: float | None
    last_seq: int
    promised: int | None
    claim_reason: str | None
    cut_epoch: int | None
    cut: int | None


@dataclass(frozen=True, slots=True)
class DcLiveness:
    """A DC's latest heartbeat as this DC's Kafka cluster holds it."""

    dc: str
    age_s: float | None
    fenced: bool | None
    #: The DCs whose latest heartbeat does not list this DC among those they hear.
    suspected_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Orphan:
    """An outbox row of a superseded epoch beyond the cut: committed here, never applied by
    the new owner, never to be applied anywhere."""

    shard: int
    epoch: int
    seq: int
    cut: int
    event_type: str
    cluster_id: str
    job_id: str | None
    #: What it would have changed, in words (``cluster ACTIVE after CLUSTER_CREATE``).
    change: str
    published: bool
    created_at: datetime


def shard_states(conn: psycopg2.extensions.connection) -> list[ShardOwnership]:
    """Every shard as this database has it, with the cut of the claim behind its epoch."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT o.shard, o.owner_dc, o.epoch, o.writable,"
            " CASE WHEN o.lease_until = 'infinity' THEN NULL"
            " ELSE GREATEST(0, EXTRACT(EPOCH FROM o.lease_until - clock_timestamp())) END,"
            " o.last_seq, p.epoch, c.reason, c.from_epoch, c.cut"
            " FROM shard_ownership o"
            " LEFT JOIN ownership_promises p ON p.shard = o.shard"
            " LEFT JOIN ownership_claims c ON c.shard = o.shard AND c.epoch = o.epoch"
            " ORDER BY o.shard"
        )
        return [
            ShardOwnership(
                shard=s,
                owner_dc=owner,
                epoch=int(epoch),
                writable=bool(writable),
                lease_s=None if lease is None else round(float(lease), 3),
                last_seq=int(last_seq),
                promised=None if promised is None else int(promised),
                claim_reason=reason,
                cut_epoch=None if cut_epoch is None else int(cut_epoch),
                cut=None if cut is None else int(cut),
            )
            for s, owner, epoch, writable, lease, last_seq, promised, reason, cut_epoch, cut in (
                cur.fetchall()
            )
        ]


def latest_heartbeats(
    settings: KafkaSettings, topology: Topology, dc: str, timeout_s: float = 5.0
) -> dict[str, Heartbeat]:
    """The latest heartbeat of every DC in ``dc``'s Kafka cluster (its own, and the mirrored
    copies of the others'); a DC with none there is left out."""
    topics = {
        other.name: HEARTBEAT_TOPIC if other.name == dc else mirrored(other.name, HEARTBEAT_TOPIC)
        for other in topology.dcs
    }
    consumer = Consumer(settings.consumer("coopr-ownership-show"))
    found: dict[str, Heartbeat] = {}
    try:
        for name, topic in topics.items():
            try:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, 0), timeout=timeout_s
                )
            except KafkaException:
                continue
            if high <= 0:
                continue
            consumer.assign([TopicPartition(topic, 0, high - 1)])
            msg = consumer.poll(timeout_s)
            if msg is None or msg.error() is not None:
                continue
            try:
                event = decode(msg.value() or b"")
            except CodecError:
                continue
            if isinstance(event, Heartbeat):
                found[name] = event
    finally:
        consumer.close()
    return found


def liveness_rows(
    topology: Topology, heartbeats: dict[str, Heartbeat], now: datetime | None = None
) -> list[DcLiveness]:
    """Per DC: its latest heartbeat's age and fenced flag, and the DCs not hearing it."""
    now = now or datetime.now(UTC)
    rows = []
    for dc in topology.dcs:
        hb = heartbeats.get(dc.name)
        suspecting = tuple(
            other
            for other, theirs in sorted(heartbeats.items())
            if other != dc.name and dc.name not in theirs.alive_dcs
        )
        rows.append(
            DcLiveness(
                dc=dc.name,
                age_s=None if hb is None else round((now - hb.occurred_at).total_seconds(), 3),
                fenced=None if hb is None else hb.fenced,
                suspected_by=suspecting,
            )
        )
    return rows


def orphans(conn: psycopg2.extensions.connection) -> list[Orphan]:
    """This DC's outbox rows of a shard at an epoch the shard no longer has here, with a seq
    beyond the cut of the highest claim that superseded that epoch (0 when no claim records
    one), oldest first."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT b.shard, b.epoch, b.seq, COALESCE(c.cut, 0), b.payload,"
            " b.published_at IS NOT NULL, b.created_at"
            " FROM outbox b JOIN shard_ownership o ON o.shard = b.shard AND o.epoch > b.epoch"
            " LEFT JOIN LATERAL (SELECT cut FROM ownership_claims k"
            "   WHERE k.shard = b.shard AND k.from_epoch = b.epoch"
            "   ORDER BY k.epoch DESC LIMIT 1) c ON true"
            " WHERE b.seq > COALESCE(c.cut, 0)"
            " ORDER BY b.shard, b.epoch, b.seq"
        )
        rows = cur.fetchall()
    found = []
    for shard, epoch, seq, cut, payload, published, created in rows:
        try:
            event = decode(bytes(payload))
        except CodecError as e:
            found.append(
                Orphan(shard, epoch, seq, cut, "undecodable", "?", None, str(e), published, created)
            )
            continue
        if isinstance(event, OperationCompleted):
            cluster, job = event.cluster, event.job
            change = (
                f"cluster {cluster.status.value}"
                f"{' (deleted)' if event.cluster_deleted else ''}"
                f" after {job.action.value} {job.status.value}"
            )
        elif isinstance(event, RestartCheckpoint):
            job = event.job
            change = f"checkpoint of {job.action.value} at stage {job.current_stage}"
        else:
            change = type(event).__name__
            job = None
        found.append(
            Orphan(
                shard=shard,
                epoch=int(epoch),
                seq=int(seq),
                cut=int(cut),
                event_type=type(event).__name__,
                cluster_id=job.cluster_id if job is not None else "?",
                job_id=job.id if job is not None else None,
                change=change,
                published=bool(published),
                created_at=created,
            )
        )
    return found
