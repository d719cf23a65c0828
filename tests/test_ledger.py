"""The controller's ledger against a fresh, migrated database: leases that publish() obeys,
promises that end the owner's lease, claims that demote, and the takeover transaction."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg2.extensions
import pytest

from bench.load import event_for
from controller.ledger import Ledger
from pipeline.db import connect, migrate
from pipeline.errors import NotOwnerError, ShardNotWritableError
from pipeline.events import OwnershipChangeReason
from pipeline.ownership import INITIAL_EPOCH, Claim, read_claims, seed_ownership
from pipeline.topology import parse_topology
from producer.outbox import publish
from tests.outbox_helpers import cluster_ids_of

pytestmark = pytest.mark.stack

TOPOLOGY = parse_topology(
    {
        "shard_count": 6,
        "replicas": 2,
        "dc": [
            {"name": f"dc{i}", "kafka": f"127.0.0.1:{9000 + i}", "database": "postgresql:///x"}
            for i in (1, 2, 3)
        ],
    }
)


@pytest.fixture
def conn(fresh_dsn: str) -> Iterator[psycopg2.extensions.connection]:
    """dc2's database: it owns shards 1 and 4 and replicates the others."""
    migrate(fresh_dsn, "dc2")
    c = connect(fresh_dsn)
    seed_ownership(c, TOPOLOGY, "dc2")
    try:
        yield c
    finally:
        c.close()


def claim(shard: int, epoch: int, to_dc: str, cut: int = 0) -> Claim:
    return Claim(
        shard=shard,
        epoch=epoch,
        from_dc=TOPOLOGY.initial_owner(shard),
        from_epoch=INITIAL_EPOCH,
        to_dc=to_dc,
        cut=cut,
        reason=OwnershipChangeReason.FAILOVER,
        event_id=str(uuid.uuid4()),
        claimed_at=datetime.now(UTC),
    )


def write(conn: psycopg2.extensions.connection, shard: int) -> None:
    try:
        publish(conn, event_for(next(cluster_ids_of(shard, TOPOLOGY.shard_count)), shard))
        conn.commit()
    finally:
        conn.rollback()


def test_a_controller_ends_static_leases_and_writes_need_a_renewed_lease(
    conn: psycopg2.extensions.connection,
) -> None:
    ledger = Ledger(conn, "dc2")
    write(conn, 1)  # static ownership: an endless lease
    assert ledger.end_static_leases() == TOPOLOGY.shard_count
    with pytest.raises(ShardNotWritableError, match="lease has ended"):
        write(conn, 1)
    clock = ledger.read_clock(time.monotonic)
    assert ledger.renew({(1, INITIAL_EPOCH): clock.at(time.monotonic() + 30)}) == 1
    write(conn, 1)
    # A renewal never shortens a lease, and renews only shards this DC owns at that epoch.
    assert ledger.renew({(1, INITIAL_EPOCH): clock.at(time.monotonic() + 1)}) == 0
    assert ledger.renew({(0, INITIAL_EPOCH): clock.at(time.monotonic() + 30)}) == 0
    assert ledger.renew({(4, 65): clock.at(time.monotonic() + 30)}) == 0
    with pytest.raises(ShardNotWritableError):
        write(conn, 4)


def test_the_database_clock_reading_is_never_late(conn: psycopg2.extensions.connection) -> None:
    ledger = Ledger(conn, "dc2")
    before = datetime.now(UTC)
    clock = ledger.read_clock(time.monotonic)
    # Same host: the database's clock is the wall clock; the reading maps "now" to no later.
    assert clock.at(time.monotonic()) <= datetime.now(UTC) + timedelta(milliseconds=5)
    assert clock.db_now >= before - timedelta(milliseconds=5)


def test_promising_a_higher_epoch_ends_the_owners_lease_at_once(
    conn: psycopg2.extensions.connection,
) -> None:
    ledger = Ledger(conn, "dc2")
    write(conn, 1)
    assert ledger.promise(1, 64 + 2, heard_owner=True)
    assert not ledger.promise(1, 64 + 2, heard_owner=True), "the same promise twice"
    assert not ledger.promise(1, 64, heard_owner=True), "a lower promise is refused"
    with pytest.raises(ShardNotWritableError, match="lease has ended"):
        write(conn, 1)
    write(conn, 4)  # another shard keeps its lease


def test_a_claim_by_another_dc_demotes_the_owner_and_redirects_replicas(
    conn: psycopg2.extensions.connection,
) -> None:
    ledger = Ledger(conn, "dc2")
    assert ledger.see_claim(claim(1, 64 * 1 + 2, "dc3", cut=7))
    assert not ledger.see_claim(claim(1, 64 * 1 + 2, "dc3", cut=7)), "seen twice"
    with pytest.raises(NotOwnerError, match="owned by dc3"):
        write(conn, 1)
    # A claim below the shard's epoch here changes nothing.
    ledger.see_claim(claim(1, 64 * 1 + 0, "dc1"))
    assert ledger.ownership()[1].owner_dc == "dc3"
    with conn, conn.cursor() as cur:
        assert [(c.epoch, c.cut) for c in read_claims(cur, [1])] == [(64, 0), (66, 7)]


def test_a_takeover_promotes_replica_rows_and_requests_restarts_of_jobs_in_flight(
    conn: psycopg2.extensions.connection,
) -> None:
    ledger = Ledger(conn, "dc2")
    shard = 0  # dc1's; dc2 is its first replica
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO replica_clusters (cluster_id, shard, source_dc, epoch, seq, status,"
            " deleted, latest_job_id, body, nodes, occurred_at) VALUES"
            " ('c1', 0, 'dc1', 1, 5, 'ACTIVE', false, 'j1', '{}', '[]', now()),"
            " ('c2', 0, 'dc1', 1, 6, 'ACTIVE', false, 'j3', '{}', '[]', now()),"
            " ('c9', 3, 'dc1', 1, 2, 'ACTIVE', false, 'j9', '{}', '[]', now())"
        )
        cur.execute(
            "INSERT INTO replica_checkpoints (job_id, cluster_id, shard, source_dc, epoch, seq,"
            " completed, payload, occurred_at) VALUES"
            " ('j1', 'c1', 0, 'dc1', 1, 5, true, NULL, now()),"
            " ('j3', 'c2', 0, 'dc1', 1, 7, false, '\\x0102', now()),"
            " ('j9', 'c9', 3, 'dc1', 1, 3, false, '\\x0304', now())"
        )
        # Left RUNNING here by an earlier ownership of the shard.
        cur.execute(
            "INSERT INTO coopr_clusters (id, shard, status, latest_job_id, body, nodes)"
            " VALUES ('old', 0, 'PENDING', 'jold', '{}', '[]');"
            "INSERT INTO coopr_jobs (id, cluster_id, shard, action, status, step, body, tasks,"
            " plan) VALUES ('jold', 'old', 0, 'CLUSTER_CREATE', 'RUNNING', 1, '{}', '[]', '{}')"
        )
        # Requests of an earlier ownership here: one refused, one resumed, one of another shard.
        cur.execute(
            "INSERT INTO restart_requests (job_id, cluster_id, shard, epoch, checkpoint,"
            " resumed_at, refused) VALUES"
            " ('jstale', 'c1', 0, 2, '\\x05', NULL, 'cannot plan'),"
            " ('jdone', 'c2', 0, 2, '\\x06', now(), NULL),"
            " ('jother', 'c9', 3, 2, '\\x07', NULL, NULL)"
        )
    with pytest.raises(NotOwnerError):
        write(conn, shard)
    taken = claim(shard, 64 + 1, "dc2", cut=7)
    ledger.claim([(taken, False)])
    until = ledger.read_clock(time.monotonic).at(time.monotonic() + 30)
    done = ledger.take_over(taken, until)
    assert (done.clusters, done.restarts) == (2, 1)
    write(conn, shard)
    owner = ledger.ownership()[shard]
    assert (owner.owner_dc, owner.epoch, owner.writable, owner.leased) == ("dc2", 65, True, True)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT epoch, seq FROM outbox WHERE shard = %s", (shard,))
        assert cur.fetchall() == [(65, 1)], "the new epoch's seqs start at 1"
        cur.execute("SELECT id FROM coopr_clusters WHERE shard = %s ORDER BY id", (shard,))
        assert [r[0] for r in cur.fetchall()] == ["c1", "c2", "old"]
        cur.execute("SELECT status FROM coopr_jobs WHERE id = 'jold'")
        assert cur.fetchall() == [("MOVED",)]
        # The stale pending request is gone: it would keep c1 busy for ever.
        cur.execute(
            "SELECT job_id, epoch, checkpoint, resumed_at IS NOT NULL FROM restart_requests"
            " ORDER BY job_id"
        )
        assert [(j, e, bytes(c), r) for j, e, c, r in cur.fetchall()] == [
            ("j3", 65, b"\x01\x02", False),
            ("jdone", 2, b"\x06", True),
            ("jother", 2, b"\x07", False),
        ]
    assert ledger.take_over(taken, until).restarts == 0, "a takeover happens once"


def test_a_demoted_owner_seeds_its_replica_rows_but_not_from_orphans_or_running_jobs(
    conn: psycopg2.extensions.connection,
) -> None:
    ledger = Ledger(conn, "dc2")
    shard = 1  # dc2's own
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO coopr_clusters (id, shard, status, latest_job_id, body, nodes) VALUES"
            " ('kept', 1, 'ACTIVE', 'j1', '{\"v\": 1}', '[]'),"
            " ('busy', 1, 'PENDING', 'j2', '{}', '[]'),"
            " ('orphaned', 1, 'ACTIVE', 'j3', '{\"v\": 9}', '[]')"
        )
        cur.execute(
            "INSERT INTO coopr_jobs (id, cluster_id, shard, action, status, step, body, tasks,"
            " plan) VALUES ('j1', 'kept', 1, 'CLUSTER_CREATE', 'COMPLETE', 3, '{}', '[]', '{}'),"
            " ('j2', 'busy', 1, 'CLUSTER_CREATE', 'RUNNING', 1, '{}', '[]', '{}')"
        )
        cur.execute(
            "INSERT INTO outbox (shard, epoch, seq, event_type, event_key, payload) VALUES"
            " (1, 1, 7, 'OperationCompleted', 'kept', '\\x00'),"
            " (1, 1, 8, 'OperationCompleted', 'orphaned', '\\x00')"
        )
    ledger.see_claim(claim(shard, 64 + 2, "dc3", cut=7))
    with conn, conn.cursor() as cur:
        cur.execute("SELECT cluster_id, source_dc, epoch, seq, body FROM replica_clusters")
        assert cur.fetchall() == [("kept", "dc2", INITIAL_EPOCH, 0, {"v": 1})]
        cur.execute("SELECT job_id, completed FROM replica_checkpoints")
        assert cur.fetchall() == [("j1", True)]
        # Its new owner restarts the running job: never resumed here from its earlier life.
        cur.execute("SELECT id, status FROM coopr_jobs ORDER BY id")
        assert cur.fetchall() == [("j1", "COMPLETE"), ("j2", "MOVED")]
    owner = ledger.ownership()[shard]
    assert (owner.owner_dc, owner.epoch, owner.writable) == ("dc3", 66, False)
