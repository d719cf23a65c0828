"""The controller's durable state in its DC's database (``docs/ownership.md``, "State per
DC"): leases, promises, claims and the takeover transaction.

Every decision is committed here before the controller announces it (a promise before the
heartbeat that carries it, a claim before its ``OwnershipChange``), so a standby controller
continues from the same state. Each method is one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import psycopg2.extensions
from psycopg2.extras import execute_values

from controller.protocol import Promise
from pipeline.ownership import Claim, ShardOwner, read_claims, read_ownership, record_claim

__all__ = ["CONTROLLER_LOCK", "DbClock", "Ledger", "OwnershipStore", "Request", "Takeover"]

#: Advisory lock key that makes one controller per DC the active one (the relay's is 1).
CONTROLLER_LOCK = 0x636F6F7072_02


#: Jobs of a shard left RUNNING in this DC's live tables when the shard changes hands are
#: another DC's now (its restart request) or ended there: a server here must not resume them
#: from their earlier life here. 'MOVED' is outside Coopr's job statuses on purpose.
_RETIRE_RUNNING_JOBS = (
    "UPDATE coopr_jobs SET status = 'MOVED', updated_at = now()"
    " WHERE shard = %s AND status = 'RUNNING'"
)


#: Promise an epoch for a shard unless an equal or higher one was (no row changed then).
_PROMISE = (
    "INSERT INTO ownership_promises AS p (shard, epoch, heard_owner)"
    " VALUES (%s, %s, %s) ON CONFLICT (shard) DO UPDATE"
    " SET epoch = EXCLUDED.epoch, heard_owner = EXCLUDED.heard_owner,"
    " promised_at = now() WHERE p.epoch < EXCLUDED.epoch"
)


@dataclass(frozen=True, slots=True)
class DbClock:
    """This database's clock as the controller's monotonic clock sees it, conservatively:
    ``at(m)`` is never later, by the database's clock, than the moment ``m`` (seconds of
    the monotonic clock). Taken from a reading of ``clock_timestamp()`` and the monotonic
    time after its round trip ended."""

    db_now: datetime
    mono_after: float

    def at(self, mono: float) -> datetime:
        return self.db_now + timedelta(seconds=mono - self.mono_after)


@dataclass(frozen=True, slots=True)
class Takeover:
    """What a takeover changed: clusters promoted into ``coopr_clusters``, restart requests
    left for in-flight jobs."""

    clusters: int
    restarts: int


@dataclass(frozen=True, slots=True)
class Request:
    """An operator's request in ``ownership_requests``: a ``move`` of ``shard`` to ``to_dc``,
    or a manual ``failover`` away from ``from_dc``. ``started``: the controller acted on it."""

    id: int
    kind: str
    shard: int | None
    from_dc: str
    to_dc: str | None
    started: bool


class OwnershipStore(Protocol):
    """What every controller keeps, a witness's included: ownership as it applies it, its
    promises, the claims it saw, the voters it left out, the operators' requests."""

    def try_lock(self) -> bool: ...
    def ownership(self) -> dict[int, ShardOwner]: ...
    def promises(self) -> dict[int, Promise]: ...
    def claims(self) -> dict[int, Claim]: ...
    def end_static_leases(self) -> int: ...
    def exclusions(self) -> set[str]: ...
    def end_exclusion(self, dc: str) -> None: ...
    def open_requests(self) -> list[Request]: ...
    def promise(self, shard: int, epoch: int, heard_owner: bool) -> bool: ...
    def see_claim(self, claim: Claim) -> bool: ...


class Ledger:
    """The ownership tables of one data DC, through one connection (not thread-safe); an
    :class:`OwnershipStore`, with the data DC's own operations besides."""

    def __init__(self, conn: psycopg2.extensions.connection, dc: str):
        self._conn = conn
        self.dc = dc

    def try_lock(self) -> bool:
        """Take the DC's controller lock for this session; False while another holds it."""
        with self._conn, self._conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (CONTROLLER_LOCK,))
            row = cur.fetchone()
        return bool(row and row[0])

    def read_clock(self, mono: Callable[[], float]) -> DbClock:
        """Read the database's clock; ``mono`` is the monotonic clock (``time.monotonic``)."""
        with self._conn, self._conn.cursor() as cur:
            cur.execute("SELECT clock_timestamp()")
            row = cur.fetchone()
            after = mono()
        if row is None:
            raise RuntimeError("clock_timestamp() returned no row")
        return DbClock(row[0], after)

    def ownership(self) -> dict[int, ShardOwner]:
        with self._conn:
            return read_ownership(self._conn)

    def last_seqs(self) -> dict[int, int]:
        """The last seq this DC assigned in each shard's current epoch."""
        with self._conn, self._conn.cursor() as cur:
            cur.execute("SELECT shard, last_seq FROM shard_ownership")
            return {s: int(q) for s, q in cur.fetchall()}

    def promises(self) -> dict[int, Promise]:
        with self._conn, self._conn.cursor() as cur:
            cur.execute("SELECT shard, epoch, heard_owner FROM ownership_promises")
            return {s: Promise(int(e), bool(h)) for s, e, h in cur.fetchall()}

    def claims(self) -> dict[int, Claim]:
        """The highest claim seen per shard."""
        with self._conn, self._conn.cursor() as cur:
            return {c.shard: c for c in read_claims(cur)}

    def end_static_leases(self) -> int:
        """Turn endless leases (static ownership) into ended ones: from now on writes need the
        lease this controller renews. Returns how many shards changed."""
        with self._conn, self._conn.cursor() as cur:
            cur.execute(
                "UPDATE shard_ownership SET lease_until = clock_timestamp()"
                " WHERE lease_until = 'infinity'"
            )
            return int(cur.rowcount)

    def renew(self, leases: Mapping[tuple[int, int], datetime]) -> int:
        """Extend the leases of (shard, epoch) this DC owns to the given end (never shorten
        one); returns how many rows moved."""
        if not leases:
            return 0
        with self._conn, self._conn.cursor() as cur:
            execute_values(
                cur,
                "UPDATE shard_ownership o SET lease_until = v.until"
                " FROM (VALUES %s) AS v (shard, epoch, until)"
                " WHERE o.shard = v.shard AND o.epoch = v.epoch"
                " AND o.owner_dc = (SELECT name FROM local_dc) AND o.lease_until < v.until",
                [(s, e, until) for (s, e), until in sorted(leases.items())],
                template="(%s, %s::bigint, %s::timestamptz)",
            )
            return int(cur.rowcount)

    def promise(self, shard: int, epoch: int, heard_owner: bool) -> bool:
        """Promise ``epoch`` for ``shard`` unless an equal or higher one was; a promise above
        this DC's own epoch of a shard it owns ends its lease in the same transaction (the
        owner stops writing when it promises). False when nothing changed."""
        with self._conn, self._conn.cursor() as cur:
            cur.execute(_PROMISE, (shard, epoch, heard_owner))
            if not cur.rowcount:
                return False
            cur.execute(
                "UPDATE shard_ownership SET lease_until = LEAST(lease_until, clock_timestamp())"
                " WHERE shard = %s AND owner_dc = %s AND epoch < %s",
                (shard, self.dc, epoch),
            )
            return True

    def see_claim(self, claim: Claim) -> bool:
        """Record a claim of another DC (or this DC's own, seen back): in ``ownership_claims``,
        and, when it is above the shard's epoch here and another DC claims, as the shard's
        owner (read-only here, so routers send writes there). A DC that owned the shard is
        demoted by it. False when the claim was known."""
        with self._conn, self._conn.cursor() as cur:
            added = record_claim(cur, claim)
            if claim.to_dc != self.dc:
                self._redirect(cur, claim)
            return added

    def _redirect(self, cur: psycopg2.extensions.cursor, claim: Claim) -> None:
        """Take another DC's claim for the shard's owner here; when this DC was the owner,
        seed its replica rows of the shard from its own live rows (:meth:`_seed_replica`)."""
        cur.execute(
            "WITH old AS (SELECT owner_dc, epoch FROM shard_ownership WHERE shard = %s"
            " FOR UPDATE)"
            " UPDATE shard_ownership o SET owner_dc = %s, epoch = %s, last_seq = 0,"
            " writable = false, lease_until = LEAST(lease_until, clock_timestamp()),"
            " updated_at = now() FROM old WHERE o.shard = %s AND o.epoch < %s"
            " RETURNING old.owner_dc, old.epoch",
            (claim.shard, claim.to_dc, claim.epoch, claim.shard, claim.epoch),
        )
        row = cur.fetchone()
        if row is not None and row[0] == self.dc:
            self._seed_replica(cur, claim.shard, int(row[1]), claim)

    def _seed_replica(
        self, cur: psycopg2.extensions.cursor, shard: int, epoch: int, claim: Claim
    ) -> None:
        """Make this DC's replica view of ``shard`` complete when it stops owning it: its live
        rows become replica rows at (``epoch``, 0), below every event of a later epoch.

        Left out: clusters with a job in flight (the new owner restarts it and its completion
        arrives as an event), and clusters an orphan touched (an event beyond the claim's cut
        of ``epoch``): nothing of an orphan is ever applied, so their replica rows stay as
        they were until the new owner writes them; ``ownership orphans`` lists them."""
        if claim.from_epoch != epoch:
            return  # the claim supersedes a later epoch than this DC's: not its own tail
        args = {"shard": shard, "epoch": epoch, "cut": claim.cut, "dc": self.dc}
        cur.execute(
            "INSERT INTO replica_clusters AS r (cluster_id, shard, source_dc, epoch, seq,"
            " status, deleted, latest_job_id, body, nodes, occurred_at)"
            " SELECT c.id, c.shard, %(dc)s, %(epoch)s, 0, c.status, c.status = 'TERMINATED',"
            " c.latest_job_id, c.body, c.nodes, c.updated_at FROM coopr_clusters c"
            " WHERE c.shard = %(shard)s AND c.status <> 'PENDING' AND NOT EXISTS ("
            "   SELECT 1 FROM outbox b WHERE b.shard = c.shard AND b.epoch = %(epoch)s"
            "   AND b.seq > %(cut)s AND b.event_key = c.id)"
            " ON CONFLICT (cluster_id) DO UPDATE SET shard = EXCLUDED.shard,"
            " source_dc = EXCLUDED.source_dc, epoch = EXCLUDED.epoch, seq = EXCLUDED.seq,"
            " status = EXCLUDED.status, deleted = EXCLUDED.deleted,"
            " latest_job_id = EXCLUDED.latest_job_id, body = EXCLUDED.body,"
            " nodes = EXCLUDED.nodes, occurred_at = EXCLUDED.occurred_at, applied_at = now()"
            " WHERE (r.epoch, r.seq) < (EXCLUDED.epoch, EXCLUDED.seq)",
            args,
        )
        # Jobs that ended here are completed in the replica view too: a later takeover must
        # not restart them from a checkpoint older than their end.
        cur.execute(
            "INSERT INTO replica_checkpoints AS r (job_id, cluster_id, shard, source_dc, epoch,"
            " seq, completed, payload, occurred_at)"
            " SELECT j.id, j.cluster_id, j.shard, %(dc)s, %(epoch)s, 0, true, NULL, j.updated_at"
            " FROM coopr_jobs j WHERE j.shard = %(shard)s AND j.status <> 'RUNNING'"
            " ON CONFLICT (job_id) DO UPDATE SET completed = true, payload = NULL,"
            " source_dc = EXCLUDED.source_dc, epoch = EXCLUDED.epoch, seq = EXCLUDED.seq,"
            " occurred_at = EXCLUDED.occurred_at, applied_at = now()"
            " WHERE (r.epoch, r.seq) < (EXCLUDED.epoch, EXCLUDED.seq)",
            args,
        )
        cur.execute(_RETIRE_RUNNING_JOBS, (shard,))

    def applied_position(self, shard: int) -> tuple[int, int] | None:
        """The (epoch, last seq) this DC's applier reached in ``shard``, if any."""
        with self._conn, self._conn.cursor() as cur:
            cur.execute("SELECT epoch, last_seq FROM replication_state WHERE shard = %s", (shard,))
            row = cur.fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def applied_offset(self, topic: str) -> int | None:
        """The next offset this DC's applier will read of ``topic`` (partition 0)."""
        with self._conn, self._conn.cursor() as cur:
            cur.execute(
                "SELECT next_offset FROM applied_offsets WHERE topic = %s AND partition = 0",
                (topic,),
            )
            row = cur.fetchone()
        return None if row is None else int(row[0])

    def claim(self, claims: Sequence[tuple[Claim, bool]]) -> None:
        """Commit claims this DC publishes, each with whether it had heard the old owner: its
        promise of each claim's epoch and the claim itself, before the claims are published.
        A claim made on another DC's behalf (a planned move away from this DC) also hands the
        shard over here, as :meth:`see_claim` would, ending this DC's lease on it."""
        with self._conn, self._conn.cursor() as cur:
            for claim, heard_owner in claims:
                cur.execute(_PROMISE, (claim.shard, claim.epoch, heard_owner))
                record_claim(cur, claim)
                if claim.to_dc != self.dc:
                    self._redirect(cur, claim)

    def take_over(self, claim: Claim, lease_until: datetime | None) -> Takeover:
        """The takeover of ``claim.shard`` by this DC, in one transaction (``docs/ownership.md``,
        "Takeover"): the shard owned here at the claim's epoch, seq reset, writable, leased
        until ``lease_until`` (ended when None); this DC's replica rows of the shard promoted
        into ``coopr_clusters``; a restart request for every in-flight checkpoint, and the
        pending requests of earlier ownerships here that it did not renew deleted. The
        ownership trigger notifies routers at commit."""
        with self._conn, self._conn.cursor() as cur:
            record_claim(cur, claim)
            cur.execute(
                "UPDATE shard_ownership SET owner_dc = %s, epoch = %s, last_seq = 0,"
                " writable = true, lease_until = COALESCE(%s, clock_timestamp()),"
                " updated_at = now() WHERE shard = %s AND epoch < %s",
                (self.dc, claim.epoch, lease_until, claim.shard, claim.epoch),
            )
            if cur.rowcount != 1:
                self._conn.rollback()
                return Takeover(0, 0)
            cur.execute(
                "INSERT INTO coopr_clusters (id, shard, status, latest_job_id, body, nodes)"
                " SELECT cluster_id, shard, status, latest_job_id, body, nodes"
                " FROM replica_clusters WHERE shard = %s"
                " ON CONFLICT (id) DO UPDATE SET shard = EXCLUDED.shard,"
                " status = EXCLUDED.status, latest_job_id = EXCLUDED.latest_job_id,"
                " body = EXCLUDED.body, nodes = EXCLUDED.nodes, updated_at = now()",
                (claim.shard,),
            )
            clusters = int(cur.rowcount)
            cur.execute(_RETIRE_RUNNING_JOBS, (claim.shard,))
            cur.execute(
                "INSERT INTO restart_requests (job_id, cluster_id, shard, epoch, checkpoint)"
                " SELECT job_id, cluster_id, shard, %s, payload FROM replica_checkpoints"
                " WHERE shard = %s AND NOT completed AND payload IS NOT NULL"
                " ON CONFLICT (job_id) DO UPDATE SET epoch = EXCLUDED.epoch,"
                " checkpoint = EXCLUDED.checkpoint, requested_at = now(), resumed_at = NULL,"
                " refused = NULL",
                (claim.epoch, claim.shard),
            )
            restarts = int(cur.rowcount)
            # A request of an earlier ownership here that this one did not renew is stale:
            # its job ended or moved since. Left pending, it would keep its cluster busy, or
            # restart a job that completed elsewhere.
            cur.execute(
                "DELETE FROM restart_requests WHERE shard = %s AND epoch < %s"
                " AND resumed_at IS NULL",
                (claim.shard, claim.epoch),
            )
            return Takeover(clusters, restarts)

    def open_requests(self) -> list[Request]:
        """Requests not done yet, oldest first."""
        with self._conn, self._conn.cursor() as cur:
            cur.execute(
                "SELECT id, kind, shard, from_dc, to_dc, started_at IS NOT NULL"
                " FROM ownership_requests WHERE done_at IS NULL ORDER BY id"
            )
            return [Request(*row) for row in cur.fetchall()]

    def start_request(self, request: Request) -> None:
        with self._conn, self._conn.cursor() as cur:
            cur.execute(
                "UPDATE ownership_requests SET started_at = now() WHERE id = %s", (request.id,)
            )

    def finish_request(self, request: Request, outcome: str) -> None:
        with self._conn, self._conn.cursor() as cur:
            cur.execute(
                "UPDATE ownership_requests SET done_at = now(), outcome = %s WHERE id = %s",
                (outcome, request.id),
            )

    def set_writable(self, shard: int, writable: bool) -> bool:
        """Make a shard this DC owns read-only, or writable again; False if it owns it not."""
        with self._conn, self._conn.cursor() as cur:
            cur.execute(
                "UPDATE shard_ownership SET writable = %s, updated_at = now()"
                " WHERE shard = %s AND owner_dc = %s",
                (writable, shard, self.dc),
            )
            return bool(cur.rowcount)

    def unpublished(self, shard: int, epoch: int) -> int:
        """Outbox rows of ``shard`` at ``epoch`` the relay has not published yet."""
        with self._conn, self._conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM outbox"
                " WHERE shard = %s AND epoch = %s AND published_at IS NULL",
                (shard, epoch),
            )
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def exclusions(self) -> set[str]:
        """DCs a manual failover took out of the majority, not heard again since."""
        with self._conn, self._conn.cursor() as cur:
            cur.execute(
                "SELECT DISTINCT from_dc FROM ownership_requests WHERE kind = 'failover'"
                " AND outcome LIKE 'done%%' AND exclusion_ended_at IS NULL"
            )
            return {row[0] for row in cur.fetchall()}

    def end_exclusion(self, dc: str) -> None:
        with self._conn, self._conn.cursor() as cur:
            cur.execute(
                "UPDATE ownership_requests SET exclusion_ended_at = now()"
                " WHERE kind = 'failover' AND from_dc = %s AND exclusion_ended_at IS NULL",
                (dc,),
            )
