"""The shard of a cluster: a stable hash of its ID modulo the shard count.

``shard_of(id, n) = CRC-32(UTF-8 bytes of id) mod n``, with CRC-32 the IEEE 802.3 polynomial
as :func:`zlib.crc32` and ``java.util.zip.CRC32`` compute it, taken as an unsigned 32-bit
number. CRC-32 is chosen because Coopr's servers are Java: they compute the same shard with

.. code-block:: java

    CRC32 crc = new CRC32();
    crc.update(clusterId.getBytes(StandardCharsets.UTF_8));
    int shard = (int) (crc.getValue() % shardCount);   // getValue() is unsigned

The value never depends on the process, the platform or ``PYTHONHASHSEED``, and must never
change between releases: every DC and every release must agree on the shard of a cluster.
Changing the shard count moves clusters between shards, so it is a migration, not a setting.
"""

from __future__ import annotations

import zlib

from pipeline.errors import ShardingError

__all__ = ["shard_of"]


def shard_of(cluster_id: str, shard_count: int) -> int:
    """The shard (``0 <= shard < shard_count``) that owns the cluster ``cluster_id``.

    Raises :class:`ShardingError` for an empty cluster ID (or one with lone surrogates, which
    have no UTF-8 form) or a shard count below one.
    """
    if not isinstance(cluster_id, str) or not cluster_id:
        raise ShardingError(f"cluster ID must be a non-empty string, got {cluster_id!r}")
    if isinstance(shard_count, bool) or not isinstance(shard_count, int) or shard_count < 1:
        raise ShardingError(f"shard count must be an integer of at least 1, got {shard_count!r}")
    try:
        data = cluster_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ShardingError(f"cluster ID {cluster_id!r} is not valid Unicode text") from exc
    return zlib.crc32(data) % shard_count
