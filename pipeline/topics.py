"""Topic names: the local topics of a DC and their MirrorMaker 2 copies.

Local names are ``coopr.shard.NN`` (NN zero-padded to two digits, three past 99 shards),
``coopr.heartbeat``, ``coopr.ownership``, ``coopr.probe`` and ``coopr.dlq``. MirrorMaker 2 with
``DefaultReplicationPolicy`` names the copy of topic T from DC ``X`` as ``X.T``. Dead letters
stay in their own DC and are never mirrored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.errors import TopicNameError

__all__ = [
    "DC_NAME_PATTERN",
    "DLQ_TOPIC",
    "HEARTBEAT_TOPIC",
    "MAX_EVENT_BYTES",
    "MIRRORED_TOPICS",
    "OWNERSHIP_TOPIC",
    "PROBE_TOPIC",
    "SHARD_MAX_MESSAGE_BYTES",
    "SHARD_PREFIX",
    "MirroredShard",
    "is_dc_name",
    "mirrored",
    "parse_mirrored_shard",
    "shard_topic",
]

SHARD_PREFIX = "coopr.shard."
HEARTBEAT_TOPIC = "coopr.heartbeat"
OWNERSHIP_TOPIC = "coopr.ownership"
DLQ_TOPIC = "coopr.dlq"
#: Latency probes (``bench mirror``): mirrored like the heartbeat, read by nothing else, so
#: that a measurement never puts records in front of a worker.
PROBE_TOPIC = "coopr.probe"
#: The largest event, encoded with its key, that :func:`producer.outbox.publish` accepts
#: (bytes). Shard topics take records up to :data:`SHARD_MAX_MESSAGE_BYTES` (Kafka's default
#: ``max.message.bytes``), which leaves room for headers and the record batch's own bytes.
MAX_EVENT_BYTES = 1_000_000
SHARD_MAX_MESSAGE_BYTES = 1_048_588
#: Topics that flow between every pair of DCs, whatever the shard layout.
MIRRORED_TOPICS = (HEARTBEAT_TOPIC, OWNERSHIP_TOPIC, PROBE_TOPIC)

#: The one rule for DC names: lower case letters, digits and '-', a letter first, at most 31
#: characters. It lives with the topic names because a DC name is the prefix MirrorMaker 2
#: puts on every copy, and the ``.`` it appends must stay the only separator.
DC_NAME_PATTERN = r"[a-z][a-z0-9-]{0,30}"
_DC_NAME = re.compile(DC_NAME_PATTERN)
_MIRRORED_SHARD_RE = re.compile(rf"({DC_NAME_PATTERN})\.coopr\.shard\.(\d{{2,3}})")


@dataclass(frozen=True, slots=True)
class MirroredShard:
    """A mirrored shard topic: the copy of ``shard_topic(shard)`` from ``source_dc``."""

    source_dc: str
    shard: int


def is_dc_name(name: str) -> bool:
    """Whether ``name`` follows :data:`DC_NAME_PATTERN`."""
    return _DC_NAME.fullmatch(name) is not None


def shard_topic(shard: int) -> str:
    """The local topic of ``shard`` (0-based): ``coopr.shard.07``."""
    if not 0 <= shard <= 999:
        raise TopicNameError(f"shard {shard} is outside 0..999")
    return f"{SHARD_PREFIX}{shard:02d}"


def mirrored(source_dc: str, topic: str) -> str:
    """The name MirrorMaker 2 gives in other DCs to ``topic`` of ``source_dc``."""
    if topic == DLQ_TOPIC:
        raise TopicNameError(f"{DLQ_TOPIC} is local to its DC and is never mirrored")
    if not is_dc_name(source_dc):
        raise TopicNameError(f"{source_dc!r} is not a DC name (lower case, digits, '-')")
    return f"{source_dc}.{topic}"


def parse_mirrored_shard(topic: str) -> MirroredShard:
    """Split ``dc1.coopr.shard.07`` into (``dc1``, 7).

    Raises :class:`TopicNameError` for a local topic or a copy of a copy
    (``dc2.dc1.coopr.shard.07``), which the MirrorMaker 2 flows never produce.
    """
    m = _MIRRORED_SHARD_RE.fullmatch(topic)
    if m is None:
        raise TopicNameError(f"{topic!r} is not a mirrored shard topic (<dc>.coopr.shard.NN)")
    return MirroredShard(source_dc=m.group(1), shard=int(m.group(2)))
