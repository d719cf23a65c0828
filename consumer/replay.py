"""Replaying a shard: re-applying events of its mirrored topics into a replica DC's rows,
beside a running applier (the protocol, its invariants and why they hold: ``docs/replay.md``).

Commit order, per batch: lock the shard (its ``shard_ownership`` row for share, its
``replication_state`` row for update, as the applier does), check this DC does not own it,
read the claims, classify the events (:func:`consumer.sequencing.check_replay`), upsert the
newest candidate per cluster and per job under the row guard, then commit (or roll back for a
dry run). Nothing here writes ``applied_offsets`` or ``replication_state``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields

import psycopg2.extensions
from confluent_kafka import Message

from consumer.decoding import decode_incoming
from consumer.sequencing import ShardState, check_replay
from consumer.store import Incoming, rows_of, write_rows
from pipeline.errors import CodecError, PipelineError, TopicNameError
from pipeline.ownership import read_claims

__all__ = ["ReplayCounts", "ReplayError", "ShardReplay", "rebuild_refusal"]


class ReplayError(PipelineError):
    """A replay cannot be done, or cannot go on: the message says why."""


@dataclass(slots=True)
class ReplayCounts:
    """What a replay did (or, dry, would do): records ``read``; events ``applied`` (they wrote
    a row), ``unchanged`` (the replica had them or newer), ``fenced`` (beyond a claim's cut,
    never applied), ``ahead`` (of an epoch the applier has not applied yet: left to it);
    records ``refused`` (undecodable: dead-lettered when the applier first read them); rows
    ``removed`` by a rebuild because no event produced them."""

    read: int = 0
    applied: int = 0
    unchanged: int = 0
    fenced: int = 0
    ahead: int = 0
    refused: int = 0
    removed: int = 0

    def add(self, other: ReplayCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def rebuild_refusal(conn: psycopg2.extensions.connection, dc: str, shard: int) -> str | None:
    """Why DC ``dc`` cannot rebuild its replica rows of ``shard`` from the topics (it owns
    the shard, or owned it before and its rows of that time are in no topic it reads), or
    ``None``. The caller also checks that every topic still starts at offset 0."""
    with conn, conn.cursor() as cur:
        _check_not_owner(cur, dc, shard)
        cur.execute(
            "SELECT max(epoch) FROM replica_clusters WHERE shard = %(shard)s"
            " AND source_dc = %(dc)s UNION ALL SELECT max(epoch) FROM replica_checkpoints"
            " WHERE shard = %(shard)s AND source_dc = %(dc)s",
            {"shard": shard, "dc": dc},
        )
        epochs = [int(e) for (e,) in cur.fetchall() if e is not None]
    if epochs:
        return (
            f"{dc} owned shard {shard} itself until epoch {max(epochs)}: its replica rows of"
            " that time were copied from its own rows when it was demoted, and no topic it"
            " reads holds those events"
        )
    return None


class ShardReplay:
    """Replays records of ``shard``'s mirrored topics into DC ``dc``'s replica rows, one
    transaction per :meth:`apply`; ``repair`` also rewrites rows damaged by hand, ``dry_run``
    rolls every transaction back. ``seen`` collects the cluster and job IDs of every candidate
    event (a rebuild deletes the others: :meth:`sweep`)."""

    def __init__(
        self,
        conn: psycopg2.extensions.connection,
        dc: str,
        shard: int,
        *,
        repair: bool = False,
        dry_run: bool = False,
    ) -> None:
        self._conn = conn
        self.dc, self.shard, self.repair, self.dry_run = dc, shard, repair, dry_run
        self.seen_clusters: set[str] = set()
        self.seen_jobs: set[str] = set()

    def apply(self, messages: Sequence[Message]) -> ReplayCounts:
        """Apply one batch in its own transaction; the counts of what it did."""
        with self._transaction() as cur:
            return self._write(cur, self._lock(cur), messages)

    def sweep(
        self,
        read: Callable[[str, int, int], Iterable[Sequence[Message]]],
        stored_at_start: Mapping[str, int],
    ) -> ReplayCounts:
        """A rebuild's last transaction, under the shard's locks: read the applier's stored
        offsets of the topics of ``stored_at_start`` again, apply what it applied since (the
        batches ``read(topic, start, stop)`` gives), and delete the rows of the shard that no
        event seen by this replay produced."""
        with self._transaction() as cur:
            state = self._lock(cur)
            cur.execute(
                "SELECT topic, next_offset FROM applied_offsets WHERE partition = 0"
                " AND topic = ANY(%s)",
                (list(stored_at_start),),
            )
            now = {t: int(o) for t, o in cur.fetchall()}
            counts = ReplayCounts()
            for topic, start in stored_at_start.items():
                for batch in read(topic, start, now.get(topic, start)):
                    counts.add(self._write(cur, state, batch))
            for table, key, seen in (
                ("replica_clusters", "cluster_id", self.seen_clusters),
                ("replica_checkpoints", "job_id", self.seen_jobs),
            ):
                cur.execute(
                    f"DELETE FROM {table} WHERE shard = %s AND NOT ({key} = ANY(%s))",
                    (self.shard, sorted(seen)),
                )
                counts.removed += cur.rowcount
            return counts

    @contextmanager
    def _transaction(self) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor in a transaction that commits (rolls back when dry, or on an error)."""
        try:
            with self._conn.cursor() as cur:
                yield cur
        except BaseException:
            self._conn.rollback()
            raise
        if self.dry_run:
            self._conn.rollback()
        else:
            self._conn.commit()

    def _write(
        self,
        cur: psycopg2.extensions.cursor,
        state: ShardState | None,
        messages: Sequence[Message],
    ) -> ReplayCounts:
        counts = ReplayCounts(read=len(messages))
        events: list[Incoming] = []
        for msg in messages:
            topic, offset = msg.topic() or "", msg.offset() or 0
            try:
                ev = decode_incoming(topic, msg.partition() or 0, offset, msg.key(), msg.value())
            except (CodecError, TopicNameError):
                counts.refused += 1
                continue
            if ev.position.shard != self.shard:
                raise ReplayError(f"{topic} at offset {offset} holds an event of another shard")
            events.append(ev)
        cuts = {(c.shard, c.from_epoch): c.cut for c in read_claims(cur, [self.shard])}
        check = check_replay(state, [ev.position for ev in events], cuts)
        candidates = [events[i] for i in check.candidates]
        counts.fenced, counts.ahead = len(check.fenced), len(check.ahead)
        written = set(write_rows(cur, *rows_of(candidates), repair=self.repair, returning=True))
        counts.applied = sum(
            1 for ev in candidates if (ev.position.epoch, ev.position.seq) in written
        )
        counts.unchanged = len(candidates) - counts.applied
        for ev in candidates:
            self.seen_jobs.add(ev.record["job"]["id"])
            if ev.record_name == "OperationCompleted":
                self.seen_clusters.add(ev.record["cluster"]["id"])
        return counts

    def _lock(self, cur: psycopg2.extensions.cursor) -> ShardState | None:
        """Take the shard's locks (ownership for share: a takeover waits for this batch;
        sequence state for update: the applier's batches of the shard wait) and return its
        sequence state."""
        _check_not_owner(cur, self.dc, self.shard, lock=True)
        cur.execute(
            "SELECT source_dc, epoch, last_seq, open_gaps FROM replication_state"
            " WHERE shard = %s FOR UPDATE",
            (self.shard,),
        )
        row = cur.fetchone()
        if row is None:
            return None
        source, epoch, last, gaps = row
        return ShardState(source, int(epoch), int(last), tuple((a, b) for a, b in gaps))


def _check_not_owner(
    cur: psycopg2.extensions.cursor, dc: str, shard: int, *, lock: bool = False
) -> None:
    cur.execute(
        "SELECT owner_dc, epoch FROM shard_ownership WHERE shard = %s"
        + (" FOR SHARE" if lock else ""),
        (shard,),
    )
    row = cur.fetchone()
    if row is None:
        raise ReplayError(f"{dc}'s database has no shard {shard}")
    if row[0] == dc:
        raise ReplayError(
            f"{dc} owns shard {shard} (epoch {row[1]}): its rows are the owner's, a replay"
            " writes a replica's"
        )
