"""``simulate``: a stand-in Coopr server that runs realistic jobs and writes through the outbox.

The simulator of DC A plays A's Coopr server: users ask it to create clusters (from A's ID
space, :func:`simulator.ids.id_space`) and to configure, add services to, restart, stop,
start and delete the clusters it created. Every job runs as stages of node tasks
(:mod:`simulator.planning`). At each stage boundary it commits ONE transaction that updates
``coopr_jobs`` / ``coopr_clusters`` (the cluster is PENDING while its job runs) and adds a
RestartCheckpoint to the outbox with :func:`producer.outbox.publish`; when the job ends, one
transaction writes the final state and an OperationCompleted.

Routing. A Coopr server forwards a request for a cluster in a non-local shard over HTTP to a
server in the shard's owner DC, which writes its own database. The stand-in does not run an
HTTP server per DC: it keeps one database connection per DC of the topology and runs the
owner's transaction on the owner's database itself. What lands in each database is exactly
what the owner's server would write; only the hop is shortened. The owner comes from
:class:`producer.router.ShardRouter` as DC A sees ownership; when the owner refuses
(:class:`NotOwnerError`, :class:`ShardNotWritableError`: ownership is moving) the router is
reloaded and the transaction retried with a bounded exponential backoff.

Guarantees:

- A stage boundary is written exactly once: its transaction commits or rolls back as a whole,
  and ``coopr_jobs.step`` records the last boundary applied, so a retry after an ambiguous
  commit (a dropped connection) sees it applied and writes nothing.
- Jobs that are RUNNING when the simulator stops keep their last checkpoint; the next
  simulator of the same DC resumes them at their next boundary (from ``coopr_jobs.plan``).
- Restarts after a takeover (``docs/ownership.md``): the simulator of DC A resumes every
  pending row of ``restart_requests`` in A's database whose shard A owns now at the request's
  epoch, whatever DC created the cluster (:func:`simulator.planning.plan_restart`). It looks
  at start, then at most every :data:`_RESTART_POLL_S` and whenever ``coopr_ownership`` is
  notified, at the loop's pace. A pending restart takes the next free slot of the jobs in
  flight before any new job does. Its first write sets the request's ``resumed_at`` in the
  same transaction, so a request is resumed exactly once, even across simulator restarts;
  from then on the job is A's (A's next simulator resumes it if it is still RUNNING), and a
  write of the same job by anyone else (a simulator still running the job's earlier life) is
  refused.
- ``rate`` is publish transactions (boundaries plus completions) per second across all jobs,
  paced (no burst longer than one second of catch-up). ``rate x 0.5 s`` jobs run at once, so
  each job passes a boundary every half second on average.
- The sequence of operations (kinds, sizes, services, outcomes, which clusters, the order in
  which jobs advance) depends only on ``seed``, the DC, ``rate`` (through the number of jobs
  in flight) and the starting database state, never on timing; ``duration_s`` only decides
  where the sequence is cut. Retries do not draw from the seeded generator. Restart requests
  that appear while it runs change the sequence from the moment they are picked up.
- After ``duration_s`` every job in flight passes one more boundary (it finishes its current
  stage), for at most :data:`_DRAIN_LIMIT_S` seconds, then the simulator returns. When
  ``stop`` is set it returns after the transaction in progress, within one backoff step.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from pipeline.codec import decode
from pipeline.db import connect
from pipeline.errors import (
    ClusterBusyError,
    CodecError,
    ConfigError,
    NotOwnerError,
    ShardNotWritableError,
    UnreachableError,
)
from pipeline.events import (
    Cluster,
    ClusterAction,
    JobStatus,
    Node,
    OperationCompleted,
    RestartCheckpoint,
)
from pipeline.logging import get_logger
from pipeline.ownership import OWNERSHIP_CHANNEL
from pipeline.shards import shard_of
from pipeline.topology import Topology
from producer.outbox import ShardEvent, publish
from producer.router import ShardRouter
from simulator.ids import IdSpace, format_cluster_id, id_space, next_job_number
from simulator.json_forms import (
    cluster_from_json,
    cluster_to_json,
    node_from_json,
    node_to_json,
    plan_from_json,
    plan_to_json,
)
from simulator.planning import JobPlan, choose_action, new_cluster, plan_job, plan_restart
from simulator.views import checkpoint_view, completion_view

__all__ = ["SimulationStats", "SimulatorConfig", "run_simulation"]

_log = get_logger(__name__)

_STAGE_INTERVAL_S = 0.5  # mean time between one job's boundaries: jobs in flight = rate x this
_MAX_IN_FLIGHT = 1000
_MAX_CATCH_UP_S = 1.0  # after a stall, pacing forgets lateness beyond this instead of bursting
_DRAIN_LIMIT_S = 30.0
_TX_ATTEMPTS = 8  # with the backoff below: about 7 s of retrying before a job is abandoned
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 2.0
_PROGRESS_EVERY_S = 5.0
_POOL_LIMIT = 10_000  # live clusters loaded at start, newest first
_MIN_POOL = 5  # with fewer idle clusters every new job is a create
_CREATE_P = 0.3
_RESTART_POLL_S = 1.0  # at most this long between two looks for restart requests
# Event IDs are UUIDv5 of "<jobId>/<step>" in this namespace, "<jobId>@<epoch>/<step>" for a
# job restarted after a takeover at that epoch (its steps count from 0 again): a retried or
# resumed boundary keeps its event ID, and job IDs and takeover epochs never repeat, so event
# IDs never do either.
_EVENT_NAMESPACE = uuid.UUID("5f0c2d1e-8a7b-4c3d-9e2f-6b1a0c9d8e7f")
_REPLACE_JOB = (
    " ON CONFLICT (id) DO UPDATE SET cluster_id = EXCLUDED.cluster_id, shard = EXCLUDED.shard,"
    " action = EXCLUDED.action, status = EXCLUDED.status, step = EXCLUDED.step,"
    " body = EXCLUDED.body, tasks = EXCLUDED.tasks, plan = EXCLUDED.plan, updated_at = now()"
)
_RETRYABLE_DB = (psycopg2.OperationalError, psycopg2.InterfaceError, UnreachableError)


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """What to simulate: the DC whose Coopr server it plays, events per second, for how long.

    ``rate`` is publish transactions per second (> 0), ``duration_s`` seconds (>= 0) before
    the drain, ``seed`` fixes the sequence of operations.
    """

    dc: str
    rate: float
    duration_s: float
    seed: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ConfigError(
                f"must be a positive number of events/s, not {self.rate}", field="rate"
            )
        if not (math.isfinite(self.duration_s) and self.duration_s >= 0):
            raise ConfigError(
                f"must be a number of seconds >= 0, not {self.duration_s}", field="duration"
            )


@dataclass(frozen=True, slots=True)
class SimulationStats:
    """What a run did.

    ``jobs_started`` counts new jobs, ``jobs_resumed`` RUNNING jobs taken up at start,
    ``restarts_resumed`` restart requests resumed (their first write here committed);
    ``jobs_completed`` and ``jobs_failed`` count jobs that ended (COMPLETE, FAILED);
    ``jobs_rejected`` jobs refused because another job ran on the cluster; ``jobs_abandoned``
    jobs left at their last checkpoint after :data:`_TX_ATTEMPTS` failed attempts;
    ``jobs_taken_over`` jobs given up because another DC's restart of them runs;
    ``writes_by_dc`` committed transactions per DC database (the routed writes);
    ``retries`` transactions retried; ``elapsed_s`` the run's wall-clock seconds.
    """

    jobs_started: int
    jobs_resumed: int
    restarts_resumed: int
    jobs_completed: int
    jobs_failed: int
    jobs_rejected: int
    jobs_abandoned: int
    jobs_taken_over: int
    events_published: int
    retries: int
    writes_by_dc: Mapping[str, int]
    elapsed_s: float


def run_simulation(
    topology: Topology, config: SimulatorConfig, stop: threading.Event
) -> SimulationStats:
    """Run DC ``config.dc``'s stand-in Coopr server until ``config.duration_s`` or ``stop``.

    Raises :class:`ConfigError` for a witness or unknown DC or a database without the
    ``coopr_*`` tables, :class:`UnreachableError` when the DC's own database is down.
    """
    with _Simulator(topology, config, stop) as sim:
        return sim.run()


@dataclass(slots=True)
class _Flight:
    """A job in flight: its plan, shard, and the index of its next step (len(steps): done)."""

    plan: JobPlan
    shard: int
    plan_json: str
    next_step: int = 0


class _Outcome(Enum):
    ADVANCED = "advanced"
    ENDED = "ended"
    REJECTED = "rejected"
    ABANDONED = "abandoned"
    INTERRUPTED = "interrupted"
    TAKEN_OVER = "taken over"


class _TakenOverError(Exception):
    """The job's restart request in the writing DC belongs to another life of the job than
    the flight's (a takeover restarted it there, or the flight's restart was superseded)."""


@dataclass(slots=True)
class _Counts:
    started: int = 0
    resumed: int = 0
    restarts: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    abandoned: int = 0
    taken_over: int = 0
    events: int = 0
    retries: int = 0
    writes: dict[str, int] = field(default_factory=dict)


class _Databases:
    """One connection per DC, opened on first use and reopened after it broke."""

    def __init__(self, topology: Topology) -> None:
        self._topology = topology
        self._conns: dict[str, psycopg2.extensions.connection] = {}

    def get(self, dc: str) -> psycopg2.extensions.connection:
        conn = self._conns.get(dc)
        if conn is None or conn.closed:
            conn = connect(self._topology.dc(dc).database)
            self._conns[dc] = conn
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


class _Simulator:
    def __init__(self, topology: Topology, config: SimulatorConfig, stop: threading.Event):
        self._topology = topology
        self._config = config
        self._stop = stop
        self._space: IdSpace = id_space(topology, config.dc)
        # A string seed is hashed with SHA-512, stably across processes and platforms; mixing
        # in the DC gives each DC its own sequence for one seed.
        self._rng = random.Random(f"{config.seed}/{config.dc}")
        self._server_id = f"coopr-simulator-{config.dc}"
        self._log = _log.bind(dc=config.dc)
        self._dbs = _Databases(topology)
        self._router: ShardRouter | None = None
        self._idle: dict[str, tuple[Cluster, tuple[Node, ...]]] = {}
        self._flights: list[_Flight] = []
        # Restart requests planned and waiting for a slot, and the jobs of every request known
        # to this run (waiting, in flight, or not resumable), which the next look skips.
        self._restarts: deque[_Flight] = deque()
        self._restart_jobs: set[str] = set()
        self._listener: psycopg2.extensions.connection | None = None
        self._next_restart_look = 0.0
        self._counts = _Counts(writes={dc.name: 0 for dc in topology.data_dcs})

    def close(self) -> None:
        if self._router is not None:
            self._router.close()
        if self._listener is not None:
            self._listener.close()
        self._dbs.close()

    def __enter__(self) -> _Simulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- start-up ---------------------------------------------------------------------

    def _load(self) -> None:
        """Load this DC's live clusters and RUNNING jobs from every DC that owns them now."""
        space = (self._space.start, self._space.start, self._space.increment)
        # CASE, because AND does not guarantee that the regex is checked before the cast.
        in_space = (
            "CASE WHEN {col} ~ '^[0-9]{{1,18}}$'"
            " THEN {col}::bigint >= %s AND ({col}::bigint - %s) %% %s = 0 ELSE false END"
        )
        owned = (
            " JOIN shard_ownership o ON o.shard = {t}.shard JOIN local_dc l ON o.owner_dc = l.name"
        )
        pool: dict[str, tuple[Cluster, tuple[Node, ...]]] = {}
        running: dict[str, tuple[JobPlan, int, int]] = {}
        for dc in self._topology.data_dcs:
            try:
                conn = self._dbs.get(dc.name)
                with conn, conn.cursor() as cur:
                    cur.execute(
                        "SELECT c.body, c.nodes FROM coopr_clusters c"
                        + owned.format(t="c")
                        + " WHERE c.status IN ('ACTIVE', 'INCONSISTENT', 'INCOMPLETE') AND "
                        + in_space.format(col="c.id")
                        + " ORDER BY c.id DESC LIMIT %s",
                        (*space, _POOL_LIMIT),
                    )
                    for body, nodes in cur.fetchall():
                        cluster = cluster_from_json(body)
                        pool[cluster.id] = (cluster, tuple(node_from_json(n) for n in nodes))
                    # A job with a restart request is the job of the DC whose database holds
                    # the request, once resumed there; pending, it waits for that DC's look.
                    cur.execute(
                        "SELECT j.plan, j.shard, j.step FROM coopr_jobs j"
                        + owned.format(t="j")
                        + " LEFT JOIN restart_requests r ON r.job_id = j.id"
                        + " WHERE j.status = 'RUNNING' AND CASE WHEN r.job_id IS NULL THEN "
                        + in_space.format(col="j.cluster_id")
                        + " ELSE r.resumed_at IS NOT NULL AND %s END"
                        + " ORDER BY j.id LIMIT %s",
                        (*space, dc.name == self._config.dc, _MAX_IN_FLIGHT),
                    )
                    for plan, shard, step in cur.fetchall():
                        running[plan["job_id"]] = (plan_from_json(plan), shard, step)
            except psycopg2.errors.UndefinedTable:
                raise ConfigError(
                    f"the database of {dc.name} lacks the coopr_* tables: "
                    f"run `coopr-pipeline db migrate --dc {dc.name}`",
                    field="database",
                ) from None
            except _RETRYABLE_DB as exc:
                if dc.name == self._config.dc:
                    raise UnreachableError(
                        f"the database of {dc.name}, this simulator's own DC, failed: "
                        + (str(exc).strip() or type(exc).__name__)
                    ) from None
                # Its clusters are left out of this run rather than stopping every DC's work.
                self._log.warning(
                    "database unreachable at start", unreachable_dc=dc.name, error=str(exc).strip()
                )
        newest = sorted(pool)[-_POOL_LIMIT:]
        self._idle = {cid: pool[cid] for cid in newest}
        for job in sorted(running)[:_MAX_IN_FLIGHT]:
            plan, shard, step = running[job]
            self._flights.append(_Flight(plan, shard, json.dumps(plan_to_json(plan)), step + 1))
            self._idle.pop(plan.cluster.id, None)
        self._counts.resumed = len(self._flights)

    # --- jobs ---------------------------------------------------------------------------

    def _allocate_cluster_id(self) -> str:
        """The next number of this DC's ID space, committed before the cluster is created."""
        conn = self._dbs.get(self._config.dc)
        start, increment = self._space.start, self._space.increment
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO coopr_id_counters (id_type, start_num, increment_by, last_num)"
                " VALUES ('cluster', %s, %s, %s) ON CONFLICT (id_type) DO NOTHING",
                (start, increment, start - increment),
            )
            cur.execute(
                "UPDATE coopr_id_counters SET last_num = last_num + increment_by,"
                " updated_at = now() WHERE id_type = 'cluster'"
                " RETURNING last_num, start_num, increment_by"
            )
            row = cur.fetchone()
            assert row is not None  # the row was inserted above if it was missing
            last, stored_start, stored_increment = row
            if (stored_start, stored_increment) != (start, increment):
                # Another ID space would hand out IDs another DC already used.
                raise ConfigError(
                    f"{self._config.dc} allocated cluster IDs from start {stored_start} step "
                    f"{stored_increment}, but the topology now gives start {start} step "
                    f"{increment}: renumbering would reuse IDs",
                    field="dc",
                )
        return format_cluster_id(int(last))

    def _new_flight(self) -> _Flight:
        """Choose and plan the next job (drawing from the seeded generator only)."""
        idle = sorted(self._idle)
        if len(idle) < _MIN_POOL or self._rng.random() < _CREATE_P:
            cluster_id = self._allocate_cluster_id()
            cluster, nodes = new_cluster(self._rng, cluster_id, datetime.now(UTC))
            plan = plan_job(self._rng, ClusterAction.CLUSTER_CREATE, cluster, nodes, 1)
        else:
            cluster, nodes = self._idle.pop(self._rng.choice(idle))
            action = choose_action(self._rng, cluster)
            plan = plan_job(self._rng, action, cluster, nodes, next_job_number(cluster))
        shard = shard_of(plan.cluster.id, self._topology.shard_count)
        return _Flight(plan, shard, json.dumps(plan_to_json(plan)))

    def _event(self, flight: _Flight, step: int) -> tuple[ShardEvent, Cluster, tuple[Node, ...]]:
        """The event of ``step`` and the cluster row it goes with (cluster, its nodes)."""
        plan = flight.plan
        life = plan.job_id if plan.resumption is None else f"{plan.job_id}@{plan.resumption.epoch}"
        common: dict[str, Any] = {
            "event_id": str(uuid.uuid5(_EVENT_NAMESPACE, f"{life}/{step}")),
            "shard": flight.shard,
            # publish() stamps the owner DC, epoch and seq.
            "owner_dc": "",
            "epoch": 0,
            "seq": 0,
            "occurred_at": datetime.now(UTC),
        }
        if step == len(plan.steps):
            cluster, job, nodes, deleted = completion_view(plan)
            completed = OperationCompleted(
                **common,
                cluster=cluster,
                job=job,
                nodes=nodes,
                cluster_deleted=deleted,
                server_id=self._server_id,
            )
            return completed, cluster, nodes
        job, tasks, nodes = checkpoint_view(plan, step)
        return RestartCheckpoint(**common, job=job, tasks=tasks, nodes=nodes), plan.cluster, nodes

    def _write_step(self, conn: psycopg2.extensions.connection, flight: _Flight) -> bool:
        """Commit ``flight``'s next step in ``conn``'s DC; False if it was already there.

        A restarted job's first step here also sets its request's ``resumed_at``, and replaces
        whatever row an earlier life of the job left in ``coopr_jobs``. Raises
        :class:`ClusterBusyError` when another job runs on the cluster,
        :class:`_TakenOverError` when the DC's restart request for the job (or its absence)
        is not the flight's, and whatever :func:`publish` raises; the transaction is rolled
        back on any error.
        """
        plan, step = flight.plan, flight.next_step
        event, cluster, nodes = self._event(flight, step)
        job = event.job
        tasks = event.tasks if isinstance(event, RestartCheckpoint) else ()
        with conn, conn.cursor() as cur:
            # Locks the job's row and its restart request, so that two writers of one
            # boundary queue, then see it.
            cur.execute(
                "SELECT j.step, r.epoch, r.resumed_at IS NOT NULL FROM (SELECT %s AS id) k"
                " LEFT JOIN LATERAL (SELECT step FROM coopr_jobs"
                " WHERE id = k.id FOR UPDATE) j ON true"
                " LEFT JOIN LATERAL (SELECT epoch, resumed_at FROM restart_requests"
                " WHERE job_id = k.id FOR UPDATE) r ON true",
                (plan.job_id,),
            )
            row = cur.fetchone()
            assert row is not None  # the FROM item is one row
            applied, request_epoch, resumed = row
            if request_epoch != (plan.resumption.epoch if plan.resumption else None):
                raise _TakenOverError(plan.job_id)
            first_here = plan.resumption is not None and not resumed
            if applied is not None and applied >= step and not first_here:
                return False
            if step == 0:
                cur.execute(
                    "SELECT status, latest_job_id FROM coopr_clusters WHERE id = %s FOR UPDATE",
                    (plan.cluster.id,),
                )
                current = cur.fetchone()
                # A create's cluster is new; a restarted job may find its own job running.
                if current is not None and current[0] == "PENDING" and current[1] != job.id:
                    raise ClusterBusyError(plan.cluster.id, current[1])
                # A job a takeover left to restart here runs on the cluster too, even before
                # its first write (when its cluster has no row yet, or the completion of an
                # earlier job was an orphan): the cluster is busy until it resumed.
                cur.execute(
                    "SELECT job_id FROM restart_requests"
                    " WHERE cluster_id = %s AND resumed_at IS NULL AND job_id <> %s",
                    (plan.cluster.id, job.id),
                )
                waiting = cur.fetchone()
                if waiting is not None:
                    raise ClusterBusyError(plan.cluster.id, waiting[0])
            cur.execute(
                "INSERT INTO coopr_clusters (id, shard, status, latest_job_id, body, nodes)"
                " VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET shard = EXCLUDED.shard,"
                " status = EXCLUDED.status, latest_job_id = EXCLUDED.latest_job_id,"
                " body = EXCLUDED.body, nodes = EXCLUDED.nodes, updated_at = now()",
                (
                    cluster.id,
                    flight.shard,
                    cluster.status.value,
                    cluster.latest_job_id,
                    json.dumps(cluster_to_json(cluster)),
                    json.dumps([node_to_json(n) for n in nodes]),
                ),
            )
            body = json.dumps(job.to_record())
            tasks_json = json.dumps([t.to_record() for t in tasks])
            if applied is None or first_here:
                cur.execute(
                    "INSERT INTO coopr_jobs"
                    " (id, cluster_id, shard, action, status, step, body, tasks, plan)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    # Only a restart's first write may find a row: one of the job's earlier life.
                    + (_REPLACE_JOB if first_here else ""),
                    (
                        job.id,
                        job.cluster_id,
                        flight.shard,
                        job.action.value,
                        job.status.value,
                        step,
                        body,
                        tasks_json,
                        flight.plan_json,
                    ),
                )
            else:
                # The plan never changes: sending it again would only cost a jsonb parse.
                cur.execute(
                    "UPDATE coopr_jobs SET status = %s, step = %s, body = %s, tasks = %s,"
                    " updated_at = now() WHERE id = %s",
                    (job.status.value, step, body, tasks_json, job.id),
                )
            if first_here:
                cur.execute(
                    "UPDATE restart_requests SET resumed_at = now() WHERE job_id = %s",
                    (job.id,),
                )
            publish(conn, event)
        return True

    def _route(self, cluster_id: str) -> str:
        """The owner DC of ``cluster_id``'s shard; the router is rebuilt after it broke."""
        if self._router is None:
            self._router = ShardRouter(self._topology, self._config.dc)
        try:
            return self._router.route(cluster_id).owner.name
        except _RETRYABLE_DB:
            self._router.close()
            self._router = None
            raise

    def _advance(self, flight: _Flight) -> _Outcome:
        """Write ``flight``'s next step at its shard's owner, retrying a bounded number of times."""
        delay = _BACKOFF_FIRST_S
        plan = flight.plan
        for attempt in range(1, _TX_ATTEMPTS + 1):
            owner = "?"
            try:
                owner = self._route(plan.cluster.id)
                applied = self._write_step(self._dbs.get(owner), flight)
            except ClusterBusyError as exc:
                self._log.info("job rejected", job=plan.job_id, reason=str(exc))
                return _Outcome.REJECTED
            except _TakenOverError:
                self._log.warning("job taken over by a restart elsewhere", job=plan.job_id)
                return _Outcome.TAKEN_OVER
            except (NotOwnerError, ShardNotWritableError) as exc:
                # Ownership is moving: ask the database again before the next attempt.
                if self._router is not None:
                    self._router.invalidate()
                reason = str(exc)
            except _RETRYABLE_DB as exc:
                reason = str(exc).strip() or type(exc).__name__
            else:
                if applied:
                    self._counts.writes[owner] = self._counts.writes.get(owner, 0) + 1
                    self._counts.events += 1
                flight.next_step += 1
                ended = flight.next_step > len(plan.steps)
                return _Outcome.ENDED if ended else _Outcome.ADVANCED
            self._counts.retries += 1
            self._log.warning(
                "write retrying", job=plan.job_id, owner_dc=owner, attempt=attempt, reason=reason
            )
            if self._stop.wait(delay):
                return _Outcome.INTERRUPTED
            delay = min(delay * 2, _BACKOFF_MAX_S)
        self._log.error(
            "job abandoned", job=plan.job_id, step=flight.next_step, attempts=_TX_ATTEMPTS
        )
        return _Outcome.ABANDONED

    def _tick(self, flight: _Flight) -> None:
        """Advance ``flight`` by one step and account for how that went."""
        outcome = self._advance(flight)
        plan = flight.plan
        if flight.next_step == 1 and outcome in (_Outcome.ADVANCED, _Outcome.ENDED):
            if plan.resumption is None:
                self._counts.started += 1
            else:
                self._counts.restarts += 1
                self._log.info(
                    "restart resumed",
                    job=plan.job_id,
                    cluster=plan.cluster.id,
                    shard=flight.shard,
                    epoch=plan.resumption.epoch,
                    stage=plan.resumption.stage,
                    attempt=plan.resumption.round,
                )
        if outcome is _Outcome.INTERRUPTED or outcome is _Outcome.ADVANCED:
            return
        self._flights.remove(flight)
        # A request still pending (its first write did not commit) is found again.
        self._restart_jobs.discard(plan.job_id)
        match outcome:
            case _Outcome.ENDED:
                cluster, job, nodes, deleted = completion_view(plan)
                if job.status is JobStatus.FAILED:
                    self._counts.failed += 1
                else:
                    self._counts.completed += 1
                # A restart may end a job of a cluster another DC's server created.
                if not deleted and cluster.id.isdigit() and self._space.contains(int(cluster.id)):
                    self._idle[cluster.id] = (cluster, nodes)
            case _Outcome.REJECTED if plan.resumption is None:
                self._counts.rejected += 1
            case _Outcome.ABANDONED:
                self._counts.abandoned += 1
            case _Outcome.TAKEN_OVER:
                self._counts.taken_over += 1

    # --- restarts -----------------------------------------------------------------------

    def _restarts_due(self, now: float) -> bool:
        """Whether to look for restart requests now: :data:`_RESTART_POLL_S` has passed, or
        ownership changed (a takeover commits its requests with the change it notifies)."""
        if self._listener is not None:
            try:
                self._listener.poll()
            except _RETRYABLE_DB:
                self._listener.close()
                self._listener = None
            else:
                if self._listener.notifies:
                    self._listener.notifies.clear()
                    return True
        return now >= self._next_restart_look

    def _listen(self) -> psycopg2.extensions.connection:
        conn = connect(self._topology.dc(self._config.dc).database)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"LISTEN {OWNERSHIP_CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _refuse_restart(self, job: str, epoch: int, reason: str) -> None:
        try:
            conn = self._dbs.get(self._config.dc)
            with conn, conn.cursor() as cur:
                cur.execute(
                    "UPDATE restart_requests SET refused = %s WHERE job_id = %s AND epoch = %s",
                    (reason, job, epoch),
                )
        except _RETRYABLE_DB as exc:
            self._log.warning("restart refusal not recorded", job=job, error=str(exc).strip())

    def _look_for_restarts(self, now: float) -> None:
        """Plan this DC's pending restart requests of the shards it owns, oldest first, to run
        as slots free; a request that cannot be planned is logged and left pending."""
        self._next_restart_look = now + _RESTART_POLL_S
        room = _MAX_IN_FLIGHT - len(self._restarts)
        if room <= 0:
            return
        try:
            # Listening before reading: a takeover committed after the read is notified.
            if self._listener is None:
                self._listener = self._listen()
            conn = self._dbs.get(self._config.dc)
            with conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT r.job_id, r.epoch, r.checkpoint, c.body FROM restart_requests r"
                    " JOIN shard_ownership o ON o.shard = r.shard AND o.epoch = r.epoch"
                    " JOIN local_dc l ON o.owner_dc = l.name"
                    " LEFT JOIN coopr_clusters c ON c.id = r.cluster_id"
                    " WHERE r.resumed_at IS NULL AND r.refused IS NULL"
                    " AND r.job_id <> ALL(%s::text[])"
                    " ORDER BY r.requested_at, r.job_id LIMIT %s",
                    (sorted(self._restart_jobs), room),
                )
                rows = cur.fetchall()
        except _RETRYABLE_DB as exc:
            self._log.warning("restart requests unreadable", error=str(exc).strip())
            return
        for job, epoch, payload, body in rows:
            self._restart_jobs.add(job)
            try:
                checkpoint = decode(bytes(payload))
                if not isinstance(checkpoint, RestartCheckpoint):
                    raise ValueError(f"a {type(checkpoint).__name__}, not a RestartCheckpoint")
                cluster = None if body is None else cluster_from_json(body)
                plan = plan_restart(checkpoint, cluster, epoch)
            except (CodecError, ValueError) as exc:
                # Left pending for an operator, with the reason in the request's row.
                self._log.error("restart request not resumable", job=job, reason=str(exc))
                self._refuse_restart(job, epoch, str(exc))
                continue
            shard = shard_of(plan.cluster.id, self._topology.shard_count)
            self._restarts.append(_Flight(plan, shard, json.dumps(plan_to_json(plan))))
            self._log.info(
                "restart request found",
                job=job,
                from_dc=checkpoint.owner_dc,
                shard=shard,
                epoch=epoch,
                stage=checkpoint.job.current_stage,
            )

    # --- the loop -----------------------------------------------------------------------

    def _next_flight(self, target: int) -> _Flight | None:
        """The flight to advance next: while fewer than ``target`` run, a waiting restart or
        else a new job; otherwise one in flight, drawn from the seeded generator. None when a
        new job's ID could not be allocated (after waiting :data:`_BACKOFF_MAX_S`)."""
        if len(self._flights) >= target:
            return self._flights[self._rng.randrange(len(self._flights))]
        if self._restarts:
            # A restarted job was in flight already, elsewhere: it goes before new work.
            flight = self._restarts.popleft()
        else:
            try:
                flight = self._new_flight()
            except _RETRYABLE_DB as exc:
                # This DC's own database hands out the IDs: wait for it like a retry.
                self._log.warning("id allocation failed", error=str(exc).strip())
                self._counts.retries += 1
                self._stop.wait(_BACKOFF_MAX_S)
                return None
        self._flights.append(flight)
        return flight

    def run(self) -> SimulationStats:
        config = self._config
        # Fails now, with UnreachableError, when this DC's own database is down.
        self._router = ShardRouter(self._topology, config.dc)
        self._load()
        target = min(_MAX_IN_FLIGHT, max(1, math.ceil(config.rate * _STAGE_INTERVAL_S)))
        interval = 1.0 / config.rate
        started = time.monotonic()
        deadline = started + config.duration_s
        next_at = started
        next_progress = started + _PROGRESS_EVERY_S
        drain: list[_Flight] | None = None
        drain_deadline = math.inf
        self._log.info(
            "simulation started",
            rate=config.rate,
            duration_s=config.duration_s,
            seed=config.seed,
            jobs_in_flight=target,
            resumed=len(self._flights),
            idle_clusters=len(self._idle),
        )
        while not self._stop.is_set():
            now = time.monotonic()
            if drain is None and now >= deadline:
                drain = list(self._flights)
                drain_deadline = now + _DRAIN_LIMIT_S
            if drain is None and self._restarts_due(now):
                self._look_for_restarts(now)
            if drain is not None:
                if not drain or now >= drain_deadline:
                    break
                flight = drain.pop(0)
            elif (chosen := self._next_flight(target)) is None:
                continue
            else:
                flight = chosen
            if self._stop.wait(max(0.0, next_at - time.monotonic())):
                break
            self._tick(flight)
            now = time.monotonic()
            next_at = max(next_at + interval, now - _MAX_CATCH_UP_S)
            if now >= next_progress:
                next_progress = now + _PROGRESS_EVERY_S
                self._progress(now - started, "simulation progress")
        stats = self._stats(time.monotonic() - started)
        self._progress(stats.elapsed_s, "simulation stopped")
        return stats

    def _stats(self, elapsed_s: float) -> SimulationStats:
        c = self._counts
        return SimulationStats(
            jobs_started=c.started,
            jobs_resumed=c.resumed,
            restarts_resumed=c.restarts,
            jobs_completed=c.completed,
            jobs_failed=c.failed,
            jobs_rejected=c.rejected,
            jobs_abandoned=c.abandoned,
            jobs_taken_over=c.taken_over,
            events_published=c.events,
            retries=c.retries,
            writes_by_dc=dict(c.writes),
            elapsed_s=elapsed_s,
        )

    def _progress(self, elapsed_s: float, what: str) -> None:
        c = self._counts
        self._log.info(
            what,
            elapsed_s=round(elapsed_s, 1),
            events=c.events,
            events_per_s=round(c.events / elapsed_s, 1) if elapsed_s > 0 else 0.0,
            target_per_s=self._config.rate,
            in_flight=len(self._flights),
            started=c.started,
            restarts=c.restarts,
            restarts_waiting=len(self._restarts),
            completed=c.completed,
            failed=c.failed,
            rejected=c.rejected,
            abandoned=c.abandoned,
            taken_over=c.taken_over,
            retries=c.retries,
            **{f"writes_{dc}": n for dc, n in c.writes.items()},
        )
