"""The replica's database side: one batch of mirrored events applied in one transaction.

:func:`apply_batch` does, in a single transaction, in this order:

1. create the ``replication_state`` rows of shards seen for the first time, then lock the
   batch's rows (``FOR UPDATE``: two appliers overlapping during a rebalance serialise here),
   read the claims of the batch's shards (``ownership_claims``) and classify every event with
   :func:`consumer.sequencing.check_sequence` (fenced, waiting, duplicate, gap, apply);
2. keep, per cluster and per job, only the newest event of the batch by ``(epoch, seq)``;
3. COPY those rows into temporary tables and upsert from them, each row only over an older
   ``(epoch, seq)``, so a replay or a duplicate changes nothing;
4. update the shards' replication state and record the gaps;
5. keep the refused records for the dead-letter topic (:mod:`consumer.dlq`) and store the
   next offset of every partition the batch read (never moving one back); commit. A partition
   whose event waits for its claim is stored up to that event only, and its refused records
   after it are left to be read again with it.

So the rows, the dead letters and the offsets past them are committed together or not at
all. When the database refuses the data of some event itself (:func:`permanent`),
:func:`refused_by_database` finds it by halving the batch, so that it alone is dead-lettered.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson
import psycopg2.extensions
from psycopg2.extras import execute_values

from consumer.dlq import RefusedRecord, store_refused
from consumer.sequencing import Gap, Position, SequenceCheck, ShardState, check_sequence
from pipeline.ownership import read_claims

__all__ = [
    "Applied",
    "Incoming",
    "apply_batch",
    "apply_events",
    "copy_buffer",
    "permanent",
    "refused_by_database",
    "rows_of",
    "stored_offsets",
    "write_rows",
]

_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_clusters"
    " (LIKE replica_clusters INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS stage_checkpoints"
    " (LIKE replica_checkpoints INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;"
)
_CLUSTER_COLUMNS = (
    "cluster_id",
    "shard",
    "source_dc",
    "epoch",
    "seq",
    "status",
    "deleted",
    "latest_job_id",
    "body",
    "nodes",
    "occurred_at",
)
_CHECKPOINT_COLUMNS = (
    "job_id",
    "cluster_id",
    "shard",
    "source_dc",
    "epoch",
    "seq",
    "completed",
    "payload",
    "occurred_at",
)


def _upsert(table: str, key: str, columns: Sequence[str], *, repair: bool, returning: bool) -> str:
    """The upsert of ``table`` from its staging table: a row is replaced only by a newer
    ``(epoch, seq)`` (the row guard), or, with ``repair``, also by the same ``(epoch, seq)``
    with another content (a row damaged by hand; ``docs/replay.md``)."""
    cols = ", ".join(columns)
    guard = "(r.epoch, r.seq) < (EXCLUDED.epoch, EXCLUDED.seq)"
    if repair:
        content = [c for c in columns if c not in (key, "epoch", "seq")]
        guard += (
            " OR ((r.epoch, r.seq) = (EXCLUDED.epoch, EXCLUDED.seq)"
            f" AND ({', '.join('r.' + c for c in content)})"
            f" IS DISTINCT FROM ({', '.join('EXCLUDED.' + c for c in content)}))"
        )
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != key)
    return (
        f"INSERT INTO replica_{table} AS r ({cols}) SELECT {cols} FROM stage_{table}"
        f" ON CONFLICT ({key}) DO UPDATE SET {sets}, applied_at = now() WHERE {guard}"
        + (" RETURNING r.epoch, r.seq" if returning else "")
    )


@dataclass(frozen=True, slots=True)
class Incoming:
    """A decoded shard event and where it was read."""

    topic: str
    partition: int
    offset: int
    position: Position
    record_name: str
    record: Mapping[str, Any]
    payload: bytes
    key: bytes | None = None

    @property
    def occurred_at(self) -> datetime:
        value: datetime = self.record["occurred_at"]
        return value


@dataclass(frozen=True, slots=True)
class Applied:
    """What a committed batch did."""

    applied: list[Incoming]
    duplicates: int
    fenced: list[Incoming]
    gaps: list[Gap]
    #: Applied events that arrived after a gap had been recorded for them.
    late: int
    #: Per (topic, partition) that waits for a claim, its first event not applied: nothing of
    #: the partition from there on is applied or stored, it must be read again.
    waiting: dict[tuple[str, int], Incoming] = field(default_factory=dict)
    #: The next offsets stored (:func:`apply_batch`): those given, a waiting partition's cut
    #: back to its waiting event.
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    #: The refused records stored for the dead-letter topic (:func:`apply_batch`).
    refused: list[RefusedRecord] = field(default_factory=list)


def stored_offsets(
    conn: psycopg2.extensions.connection, partitions: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The next offset stored for each (topic, partition) that has one."""
    if not partitions:
        return {}
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT topic, partition, next_offset FROM applied_offsets"
            " WHERE (topic, partition) IN %s",
            (tuple(partitions),),
        )
        return {(t, p): int(o) for t, p, o in cur.fetchall()}


def _copy_text(value: object) -> str:
    if value is None:
        return "\\N"
    # COPY's text format reads a backslash as an escape: the only characters to escape in
    # what rows_of renders are backslashes (JSON text, the \x of bytea hex) and, in the
    # strings taken from events, tab, newline and carriage return.
    return (
        str(value)
        .replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def copy_buffer(rows: Sequence[Sequence[object]]) -> io.StringIO:
    """Rows as COPY ... FROM STDIN reads them (text format; None is NULL).

    Text, not CSV: with JSON columns of about a kilobyte, CSV's quoting of every double
    quote costs about four times as much to write."""
    return io.StringIO("".join("\t".join(map(_copy_text, row)) + "\n" for row in rows))


def rows_of(events: Sequence[Incoming]) -> tuple[list[list[object]], list[list[object]]]:
    """Cluster and checkpoint rows of the newest event, by ``(epoch, seq)``, per cluster and job.

    Read order is not age order: an event may arrive late into an open gap, after newer ones
    of its shard in the same batch. So a row is replaced only by an event of a higher
    ``(epoch, seq)``, as the upsert's guard does across batches.
    """
    clusters: dict[str, tuple[tuple[int, int], list[object]]] = {}
    checkpoints: dict[str, tuple[tuple[int, int], list[object]]] = {}
    for ev in events:
        pos, rec = ev.position, ev.record
        age = (pos.epoch, pos.seq)
        when = ev.occurred_at.isoformat()
        job = rec["job"]
        completed = ev.record_name == "OperationCompleted"
        if completed:
            cluster = rec["cluster"]
            held = clusters.get(cluster["id"])
            if held is None or held[0] < age:
                clusters[cluster["id"]] = (
                    age,
                    [
                        cluster["id"],
                        pos.shard,
                        pos.source_dc,
                        pos.epoch,
                        pos.seq,
                        cluster["status"],
                        "t" if rec["cluster_deleted"] else "f",
                        cluster["latest_job_id"],
                        # orjson writes the times as json_ready does (isoformat): the owner's
                        # form (tests/test_store.py), without a copy of the dict.
                        orjson.dumps(cluster).decode(),
                        orjson.dumps(rec["nodes"]).decode(),
                        when,
                    ],
                )
        held = checkpoints.get(job["id"])
        if held is None or held[0] < age:
            checkpoints[job["id"]] = (
                age,
                [
                    job["id"],
                    job["cluster_id"],
                    pos.shard,
                    pos.source_dc,
                    pos.epoch,
                    pos.seq,
                    "t" if completed else "f",
                    None if completed else "\\x" + ev.payload.hex(),
                    when,
                ],
            )
    return [row for _, row in clusters.values()], [row for _, row in checkpoints.values()]


def write_rows(
    cur: psycopg2.extensions.cursor,
    clusters: Sequence[Sequence[object]],
    checkpoints: Sequence[Sequence[object]],
    *,
    repair: bool = False,
    returning: bool = False,
) -> list[tuple[int, int]]:
    """Upsert the rows of :func:`rows_of` under the row guard (``repair``: see
    :func:`_upsert`); with ``returning``, the ``(epoch, seq)`` of every row written. May be
    called more than once in a transaction: the staging tables are emptied first."""
    cur.execute(_STAGING)
    written: list[tuple[int, int]] = []
    for table, key, columns, rows in (
        ("clusters", "cluster_id", _CLUSTER_COLUMNS, clusters),
        ("checkpoints", "job_id", _CHECKPOINT_COLUMNS, checkpoints),
    ):
        if not rows:
            continue
        cur.execute(f"TRUNCATE stage_{table}")
        cur.copy_expert(f"COPY stage_{table} ({', '.join(columns)}) FROM STDIN", copy_buffer(rows))
        cur.execute(_upsert(table, key, columns, repair=repair, returning=returning))
        if returning:
            written += [(int(e), int(q)) for e, q in cur.fetchall()]
    return written


def apply_batch(
    conn: psycopg2.extensions.connection,
    events: Sequence[Incoming],
    next_offsets: Mapping[tuple[str, int], int],
    refused: Sequence[RefusedRecord] = (),
) -> Applied:
    """Apply ``events`` (in read order), keep ``refused`` for the dead-letter topic and store
    ``next_offsets``, in one transaction.

    ``next_offsets`` covers every partition the batch read, including refused records. A
    partition with an event that waits for its claim (``result.waiting``) is stored at that
    event's offset at most, without its refused records from there on: the caller reads them
    again. Raises psycopg2's errors when the database fails; then nothing of the batch is
    stored.
    """
    with conn, conn.cursor() as cur:
        applied = apply_events(cur, events)
        held = {key: ev.offset for key, ev in applied.waiting.items()}
        kept = [r for r in refused if r.offset < held.get((r.topic, r.partition), r.offset + 1)]
        offsets = {key: min(o, held.get(key, o)) for key, o in next_offsets.items()}
        store_refused(cur, kept)
        if offsets:
            execute_values(
                cur,
                "INSERT INTO applied_offsets AS a (topic, partition, next_offset) VALUES %s"
                " ON CONFLICT (topic, partition) DO UPDATE"
                " SET next_offset = EXCLUDED.next_offset, updated_at = now()"
                " WHERE a.next_offset < EXCLUDED.next_offset",
                [(t, p, o) for (t, p), o in offsets.items()],
            )
    return replace(applied, next_offsets=offsets, refused=kept)


def refused_by_database(
    conn: psycopg2.extensions.connection, events: Sequence[Incoming]
) -> list[tuple[Incoming, psycopg2.Error]]:
    """The events the database refuses with a :func:`permanent` error, each with its error,
    found by applying halves of ``events`` in transactions that are always rolled back.

    Empty when only a combination of events fails, never a single one. A transient error
    is raised.
    """
    try:
        with conn.cursor() as cur:
            apply_events(cur, events)
        return []
    except psycopg2.Error as e:
        if not permanent(e):
            raise
        if len(events) == 1:
            return [(events[0], e)]
    finally:
        conn.rollback()
    half = len(events) // 2
    return refused_by_database(conn, events[:half]) + refused_by_database(conn, events[half:])


def permanent(error: psycopg2.Error) -> bool:
    """True when the database refuses the data itself (data exception, integrity constraint
    violation, a program limit such as a too large row): retrying cannot help. Lost
    connections, serialization failures, deadlocks and shutdowns are transient."""
    code = error.pgcode or ""
    return code[:2] in ("22", "23", "54")


def apply_events(cur: psycopg2.extensions.cursor, events: Sequence[Incoming]) -> Applied:
    """Sequence and upsert ``events`` in the cursor's transaction (steps 1 to 4), without
    storing offsets or dead letters: the caller commits, or rolls back."""
    shards = sorted({ev.position.shard for ev in events})
    states: dict[int, ShardState] = {}
    cuts: dict[tuple[int, int], int] = {}
    claimed: set[tuple[int, int]] = set()
    if shards:
        # FOR UPDATE locks only rows that exist: create a shard's first row before locking it,
        # or two appliers overlapping in a rebalance would both start from nothing and the
        # later commit would put an older last_seq back. Epoch 0 is below every real epoch.
        execute_values(
            cur,
            "INSERT INTO replication_state (shard, source_dc, epoch, last_seq) VALUES %s"
            " ON CONFLICT (shard) DO NOTHING",
            sorted({(ev.position.shard, ev.position.source_dc, 0, 0) for ev in events}),
        )
        cur.execute(
            "SELECT shard, source_dc, epoch, last_seq, open_gaps FROM replication_state"
            " WHERE shard = ANY(%s) ORDER BY shard FOR UPDATE",
            (shards,),
        )
        states = {
            shard: ShardState(dc, epoch, last, tuple((a, b) for a, b in gaps))
            for shard, dc, epoch, last, gaps in cur.fetchall()
        }
        # Read after the lock: a claim committed before it counts for the whole batch.
        # Claims come by epoch, so of two claims taking a shard from one epoch (a race the
        # higher won) the higher one's cut is kept.
        for claim in read_claims(cur, shards):
            cuts[claim.shard, claim.from_epoch] = claim.cut
            claimed.add((claim.shard, claim.epoch))
    check = check_sequence(states, [ev.position for ev in events], cuts, claimed)
    applied = [events[i] for i in check.apply]
    write_rows(cur, *rows_of(applied))
    fenced = [events[i] for i in check.fenced]
    touched = {ev.position.shard for ev in applied} | {ev.position.shard for ev in fenced}
    if touched:
        _store_states(cur, check, touched, [events[i] for i in check.late], fenced)
    if check.gaps:
        execute_values(
            cur,
            "INSERT INTO replication_gaps (shard, source_dc, epoch, after_seq, before_seq)"
            " VALUES %s",
            [(g.shard, g.source_dc, g.epoch, g.after_seq, g.before_seq) for g in check.gaps],
        )
    waiting: dict[tuple[str, int], Incoming] = {}
    for i in check.waiting:  # in read order: the first of a partition is its lowest offset
        waiting.setdefault((events[i].topic, events[i].partition), events[i])
    return Applied(applied, len(check.duplicates), fenced, check.gaps, len(check.late), waiting)


def _store_states(
    cur: psycopg2.extensions.cursor,
    check: SequenceCheck,
    touched: set[int],
    late: Sequence[Incoming],
    fenced: Sequence[Incoming],
) -> None:
    def count(shard: int, items: Sequence[Incoming]) -> int:
        return sum(1 for ev in items if ev.position.shard == shard)

    execute_values(
        cur,
        "INSERT INTO replication_state AS r"
        " (shard, source_dc, epoch, last_seq, open_gaps, gaps, late, fenced) VALUES %s"
        " ON CONFLICT (shard) DO UPDATE SET source_dc = EXCLUDED.source_dc,"
        " epoch = EXCLUDED.epoch, last_seq = EXCLUDED.last_seq,"
        " open_gaps = EXCLUDED.open_gaps, gaps = r.gaps + EXCLUDED.gaps,"
        " late = r.late + EXCLUDED.late, fenced = r.fenced + EXCLUDED.fenced,"
        " last_applied_at = now()",
        [
            (
                s,
                st.source_dc,
                st.epoch,
                st.last_seq,
                orjson.dumps(st.open_gaps).decode(),
                sum(1 for g in check.gaps if g.shard == s),
                count(s, late),
                count(s, fenced),
            )
            for s in sorted(touched)
            for st in [check.states[s]]
        ],
    )
