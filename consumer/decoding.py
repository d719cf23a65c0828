"""How a record read from a mirrored shard topic becomes an event to apply, or is refused.

The applier, a replay and a dead-letter redrive all take records through
:func:`decode_incoming`, so what one of them refuses, the others refuse for the same reason.
"""

from __future__ import annotations

from consumer.sequencing import Position
from consumer.store import Incoming
from pipeline.codec import decode_record
from pipeline.errors import CodecError
from pipeline.topics import parse_mirrored_shard

__all__ = ["decode_incoming"]


def decode_incoming(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
) -> Incoming:
    """The shard event in ``value``, read at ``topic`` [``partition``] ``offset``.

    Raises :class:`~pipeline.errors.CodecError` for bytes that do not decode, a record that is
    not a shard event, or one that names another shard or DC than its topic, and
    :class:`~pipeline.errors.TopicNameError` for a topic that is not a mirrored shard topic.
    """
    source = parse_mirrored_shard(topic)
    if value is None:
        raise CodecError("the record has no value")
    name, record = decode_record(value)
    if name not in ("OperationCompleted", "RestartCheckpoint"):
        raise CodecError(f"a {name} is not a shard event")
    if record["shard"] != source.shard or record["owner_dc"] != source.source_dc:
        raise CodecError(
            f"the event names shard {record['shard']} of {record['owner_dc']},"
            f" but it was read from {topic}"
        )
    position = Position(source.shard, source.source_dc, record["epoch"], record["seq"])
    return Incoming(topic, partition, offset, position, name, record, value, key)
