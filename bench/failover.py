"""Failover benchmark: how long writes to a killed DC's shards are refused, what it loses, and
how long a planned move refuses writes to its shard, on the running local stack.

Each run has controllers, relays, appliers and the stand-in server (``simulate``) in every
data DC, started as separate processes and recorded as workers of their DC, so that
:func:`pipeline.stack.orchestrator.kill_dc` kills them with it, as a power loss would. The
stand-in server is the load because it is what a DC serves: it routes each write to the
shard's owner and retries refusals, so it keeps writing through the failover, and its jobs in
flight are what the new owner restarts. The figures come from the bench's own writes
(:class:`ProbeWriter`), one real event per attempt through :func:`producer.outbox.publish`,
so a refusal is exactly what a writer meets.

A run: wait until every shard is writable at its owner, every applier holds its partitions
and every controller is past its start (T); kill the DC owning the most shards; probe each
moved shard at its claimant until a write is accepted there; start the DC again, restart its
workers, wait until its controller has demoted it; count its orphans; then move one shard
with ``coopr-pipeline ownership move`` while a probe writes to it every 20 ms. Ownership
moves from run to run: each run picks its victim anew.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import psycopg2.extensions
from confluent_kafka.admin import AdminClient

from bench.load import event_for
from bench.workers import wait_until
from controller.report import orphans
from pipeline.db import connect, fetch_all
from pipeline.errors import NotOwnerError, PipelineError, ShardNotWritableError, UnreachableError
from pipeline.stack.orchestrator import kill_dc, start_dc
from pipeline.stack.processes import (
    ProcessRecord,
    forget_worker,
    is_running,
    record_worker,
    spawn,
    stop,
)
from pipeline.stack.security import StackSecurity, client_settings
from pipeline.stats import percentile
from pipeline.topology import Topology

__all__ = [
    "FailoverRun",
    "MoveRun",
    "ProbeWriter",
    "StackWorkers",
    "bench_failover",
    "drill",
    "figures",
    "longest_refusal",
    "ownership_view",
    "wait_ready",
]

PROBE_INTERVAL_S = 0.02
#: Seconds of load before the kill over which the victim's write rate and the mirror delay
#: are measured.
WINDOW_S = 8.0


def longest_refusal(timeline: Sequence[tuple[float, bool]]) -> float:
    """The longest time (s) writes were refused in ``timeline``, a list of (attempt time in s,
    accepted) in time order: from the first refused attempt after an accepted one (or from
    the first attempt) to the next accepted one. A refusal that no accepted write ends lasts
    until the last attempt. 0 when nothing was refused."""
    longest = 0.0
    refused_since: float | None = None
    for t, accepted in timeline:
        if not accepted:
            if refused_since is None:
                refused_since = t
        elif refused_since is not None:
            longest = max(longest, t - refused_since)
            refused_since = None
    if refused_since is not None and timeline:
        longest = max(longest, timeline[-1][0] - refused_since)
    return longest


def ownership_view(topology: Topology, dc: str) -> dict[int, tuple[str, int, bool]]:
    """Per shard, as ``dc``'s database has it: owner, epoch, whether it accepts writes now."""
    return {
        s: (owner, int(epoch), bool(ok))
        for s, owner, epoch, ok in fetch_all(
            topology.dc(dc).database,
            "SELECT shard, owner_dc, epoch, writable AND lease_until > clock_timestamp()"
            " FROM shard_ownership",
        )
    }


class ProbeWriter:
    """Real writes through :func:`producer.outbox.publish`, one event per transaction, each
    to a new cluster of the bench's own (``p<run><n>``), with one connection per DC."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.run = uuid.uuid4().hex[:6]
        self.count = 0
        self._conns: dict[str, psycopg2.extensions.connection] = {}

    def write(self, shard: int, dc: str) -> str | None:
        """Try one write of ``shard`` at ``dc``: None when it committed, else the DC the
        refusal names as the owner (``dc`` itself when read-only, fenced or unreachable)."""
        from producer.outbox import publish

        try:
            conn = self._conns.get(dc) or self._conns.setdefault(
                dc, connect(self.topology.dc(dc).database)
            )
        except UnreachableError:
            return dc
        self.count += 1
        try:
            with conn:
                # Stamped now: the probes count towards the replication delay measured.
                event = event_for(
                    f"p{self.run}{self.count:08d}", shard, occurred_at=datetime.now(UTC)
                )
                publish(conn, event)
            return None
        except NotOwnerError as e:
            return e.owner_dc
        except ShardNotWritableError:
            return dc
        except psycopg2.Error:
            self._conns.pop(dc, None)
            conn.close()
            return dc

    def writable_here(self, dc: str, shards: Sequence[int]) -> set[int]:
        """Of ``shards``, those ``dc``'s database would accept a write of now (one query: the
        gate before a real write, so that waiting costs the DCs little CPU)."""
        try:
            conn = self._conns.get(dc) or self._conns.setdefault(
                dc, connect(self.topology.dc(dc).database)
            )
            with conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT o.shard FROM shard_ownership o JOIN local_dc l ON o.owner_dc = l.name"
                    " WHERE o.shard = ANY(%s) AND o.writable"
                    " AND o.lease_until > clock_timestamp()",
                    (list(shards),),
                )
                return {s for (s,) in cur.fetchall()}
        except UnreachableError:
            return set()
        except psycopg2.Error:
            self._conns.pop(dc, None)
            return set()

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


@dataclass
class StackWorkers:
    """The workers of a benchmark or the demo on the stack in ``run_dir``: each a process
    recorded as a worker of its DC (``stack kill-dc`` kills it), logging to
    ``<log_dir>/<prefix>-<kind>-<dc>.log``. ``started_at``: monotonic time (s) of the latest
    controller start, per DC."""

    topology: Topology
    run_dir: Path
    log_dir: Path
    prefix: str
    failure_timeout_s: float
    #: Per DC: (kind, process) of each running worker.
    records: dict[str, list[tuple[str, ProcessRecord]]] = field(default_factory=dict)
    controller_started: dict[str, float] = field(default_factory=dict)
    load_started: float = 0.0

    def start(self, dc: str, kind: str, *args: str) -> ProcessRecord:
        """Start ``coopr-pipeline worker <kind>`` (or ``simulate`` with ``args``) in ``dc``."""
        cli = [sys.executable, "-m", "cli", "--log-json"]
        if kind == "simulate":
            argv = [*cli, "simulate", "--dc", dc, *args]
        else:
            argv = [*cli, "worker", kind, "--dc", dc, *args]
        argv += ["--topology", self.topology.source]
        name = f"{self.prefix}-{kind}-{dc}"
        security = StackSecurity.of(self.run_dir)
        env = None if security is None else security.worker_environ(kind, dc)
        record = spawn(name, argv, log=self.log_dir / f"{name}.log", ports=(), env=env)
        record_worker(self.run_dir, dc, record)
        self.records.setdefault(dc, []).append((kind, record))
        if kind == "controller":
            self.controller_started[dc] = time.monotonic()
        if kind == "simulate":
            self.load_started = time.monotonic()
        return record

    def start_dc_workers(self, dc: str, *, rate: float, seed: int) -> None:
        """Controller, relay, applier; then the stand-in server at ``rate`` events/s (0: none).
        A witness runs its controller only."""
        self.start(
            dc,
            "controller",
            *("--interval", "0.5", "--failure-timeout", f"{self.failure_timeout_s:g}"),
        )
        if self.topology.dc(dc).witness:
            return
        self.start(dc, "relay", "--poll-interval", "0.2")
        self.start(dc, "applier")
        if rate > 0:
            # Bounded: an hour of new work at most, stopped by SIGTERM long before.
            self.start(
                dc, "simulate", *("--rate", f"{rate:g}", "--duration", "3600", "--seed", str(seed))
            )

    def forget_dc(self, dc: str) -> None:
        """Drop the records of ``dc``'s workers, which ``kill_dc`` killed."""
        for _, record in self.records.pop(dc, []):
            forget_worker(self.run_dir, record.name)

    def stop(self, dc: str, kinds: Sequence[str]) -> None:
        """SIGTERM ``dc``'s workers of ``kinds`` (an applier killed would keep its group's
        partitions for a session timeout), at most 60 s each."""
        keep = []
        for kind, record in self.records.get(dc, []):
            if kind in kinds:
                stop(record, sig=signal.SIGTERM, timeout_s=60)
                forget_worker(self.run_dir, record.name)
            else:
                keep.append((kind, record))
        self.records[dc] = keep

    def stop_all(self) -> None:
        """SIGTERM every worker: the stand-in servers first, so their last writes flow."""
        for kinds in (("simulate",), ("relay", "applier", "controller")):
            for dc in list(self.records):
                self.stop(dc, kinds)

    def dead(self) -> list[str]:
        """Workers that exited by themselves (a crash to report, never to wait out)."""
        return [r.name for rs in self.records.values() for _, r in rs if not is_running(r)]


def _appliers_assigned(workers: StackWorkers, dcs: Sequence[str]) -> bool:
    """Every DC's applier group is stable with each member holding partitions: a member left
    by a killed applier would hold its share for a session timeout."""
    security = StackSecurity.of(workers.run_dir)
    for dc in dcs:
        site = workers.topology.dc(dc)
        admin = AdminClient(client_settings(security, site, "coopr-bench").common())
        group = f"coopr-applier-{dc}"
        try:
            described = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
        except Exception:  # a coordinator still loading after a restart: not ready yet
            return False
        members = described.members
        if not members or any(not m.assignment.topic_partitions for m in members):
            return False
        if str(described.state).split(".")[-1] != "STABLE":
            return False
    return True


def _writable_everywhere(topology: Topology, dcs: Sequence[str]) -> bool:
    views = {dc: ownership_view(topology, dc) for dc in dcs}
    first = views[dcs[0]]
    agreed = all(
        {s: v[:2] for s, v in view.items()} == {s: v[:2] for s, v in first.items()}
        for view in views.values()
    )
    return agreed and all(views[o][s] == (o, e, True) for s, (o, e, _) in first.items())


def wait_ready(workers: StackWorkers, *, load_s: float = WINDOW_S, timeout_s: float = 180) -> None:
    """Wait (at most ``timeout_s`` s) until every shard is writable at its owner and every DC
    agrees on owners, every applier holds its partitions, every controller is past its start
    (T, when it counts every DC as heard), and the load has run for ``load_s`` s."""
    dcs = [dc.name for dc in workers.topology.data_dcs]
    deadline = time.monotonic() + timeout_s

    def ready() -> bool:
        if dead := workers.dead():
            raise PipelineError(f"workers exited: {', '.join(dead)} (see {workers.log_dir})")
        now = time.monotonic()
        return (
            all(now - t > workers.failure_timeout_s for t in workers.controller_started.values())
            and now - workers.load_started > load_s
            and _writable_everywhere(workers.topology, dcs)
            and _appliers_assigned(workers, dcs)
        )

    wait_until(ready, max(1.0, deadline - time.monotonic()), "the stack ready for a failover")


@dataclass(frozen=True, slots=True)
class FailoverRun:
    """One DC killed under load.

    ``first_write_s``/``all_writes_s``: from the kill to the first write accepted at a new
    owner for any moved shard / for every moved shard (s). ``orphans``: the victim's outbox
    rows of the moved shards beyond the cuts. ``victim_rate``: events/s the victim committed
    to those shards in the ``WINDOW_S`` s before the kill; ``delay_ms``: mean of replica
    row ``applied_at - occurred_at`` at the new owners for the victim's events in that window
    (ms); ``expected_loss``: their product, the events in flight at the kill (Little's law).
    ``restarts``: restart requests of the moved shards at their new owners, ``resumed`` and
    ``completed`` of them when counted (at the end of the run).
    """

    victim: str
    moved: dict[int, tuple[str, str, int, int]]  # shard: (old owner, new owner, old/new epoch)
    first_write_s: float
    all_writes_s: float
    orphans: int
    victim_rate: float
    delay_ms: float
    restarts: int
    resumed: int
    completed: int

    @property
    def expected_loss(self) -> float:
        return self.victim_rate * self.delay_ms / 1000.0


@dataclass(frozen=True, slots=True)
class MoveRun:
    """One planned move under load: ``refused_s``, the longest time writes to the shard were
    refused (s, within one probe interval of 20 ms plus a write)."""

    shard: int
    source: str
    target: str
    refused_s: float


def _probe_until_taken_over(
    writer: ProbeWriter, victim: str, moved: Sequence[int], killed_at: float, timeout_s: float
) -> dict[int, float]:
    """Every ``PROBE_INTERVAL_S``, for each moved shard not yet written, try a real write at
    the DCs that now accept it (gated by one query per survivor); per shard, seconds from
    ``killed_at`` to its first accepted write."""
    topology = writer.topology
    survivors = [dc.name for dc in topology.data_dcs if dc.name != victim]
    accepted: dict[int, float] = {}
    deadline = killed_at + timeout_s
    while len(accepted) < len(moved):
        if time.monotonic() > deadline:
            pending = sorted(set(moved) - set(accepted))
            raise PipelineError(f"shards {pending} of {victim} not writable within {timeout_s:g} s")
        pending = [s for s in moved if s not in accepted]
        for dc in survivors:
            for shard in sorted(writer.writable_here(dc, pending)):
                if writer.write(shard, dc) is None:
                    accepted[shard] = time.monotonic() - killed_at
        time.sleep(PROBE_INTERVAL_S)
    return accepted


def _victim_figures(
    topology: Topology,
    victim: str,
    moved: dict[int, tuple[str, str, int, int]],
    killed_wall: datetime,
) -> tuple[float, float]:
    """The victim's write rate (events/s) to the moved shards in the window before the kill,
    from its outbox; the mean replication delay (ms) of those events at their new owners.
    Chosen by when they occurred, not when they were applied: an applier catching up on what
    a DC wrote while it was down (a previous run's victim) applies old events in the window."""
    since = killed_wall - timedelta(seconds=WINDOW_S)
    ((count,),) = fetch_all(
        topology.dc(victim).database,
        "SELECT count(*) FROM outbox WHERE shard = ANY(%s) AND created_at BETWEEN %s AND %s",
        (list(moved), since, killed_wall),
    )
    delays: list[float] = []
    for owner in sorted({new for _, new, _, _ in moved.values()}):
        shards = [s for s, (_, new, _, _) in moved.items() if new == owner]
        delays += [
            float(d)
            for (d,) in fetch_all(
                topology.dc(owner).database,
                "SELECT extract(epoch FROM applied_at - occurred_at) * 1000 FROM replica_clusters"
                " WHERE source_dc = %(v)s AND shard = ANY(%(s)s)"
                " AND occurred_at BETWEEN %(a)s AND %(b)s"
                " UNION ALL SELECT extract(epoch FROM applied_at - occurred_at) * 1000"
                " FROM replica_checkpoints WHERE source_dc = %(v)s AND shard = ANY(%(s)s)"
                " AND occurred_at BETWEEN %(a)s AND %(b)s",
                {"v": victim, "s": shards, "a": since, "b": killed_wall},
            )
        ]
    return int(count) / WINDOW_S, sum(delays) / len(delays) if delays else float("nan")


def _restarts(topology: Topology, moved: dict[int, tuple[str, str, int, int]]) -> tuple[int, ...]:
    """Restart requests of the moved shards at their new owners (at the new epoch): requested,
    resumed, and resumed whose job is no longer running."""
    totals = [0, 0, 0]
    for owner in sorted({new for _, new, _, _ in moved.values()}):
        shards = [s for s, (_, new, _, _) in moved.items() if new == owner]
        for resumed, done in fetch_all(
            topology.dc(owner).database,
            "SELECT r.resumed_at IS NOT NULL, r.resumed_at IS NOT NULL"
            " AND COALESCE(j.status, '') <> 'RUNNING'"
            " FROM restart_requests r JOIN shard_ownership o ON o.shard = r.shard"
            " AND o.epoch = r.epoch LEFT JOIN coopr_jobs j ON j.id = r.job_id"
            " WHERE r.shard = ANY(%s)",
            (shards,),
        ):
            totals[0] += 1
            totals[1] += int(resumed)
            totals[2] += int(done)
    return tuple(totals)


def drill(
    workers: StackWorkers, *, rate: float, seed: int, restarts_timeout_s: float = 0.0
) -> FailoverRun:
    """Kill the DC owning the most shards under load, measure the takeover, start the DC
    again with its workers, wait until it is demoted, and count its orphans.

    With ``restarts_timeout_s`` > 0, waits at most that long for the restarted jobs to
    complete before counting them. Takes about T + 2 s, plus the DC's start (about 20 s)."""
    topology = workers.topology
    dcs = [dc.name for dc in topology.data_dcs]
    before = ownership_view(topology, dcs[0])
    counts = {dc: sum(1 for o, _, _ in before.values() if o == dc) for dc in dcs}
    victim = max(sorted(counts), key=lambda dc: counts[dc])
    shards = sorted(s for s, (o, _, _) in before.items() if o == victim)
    survivors = [dc for dc in dcs if dc != victim]
    writer = ProbeWriter(topology)
    timeout_s = workers.failure_timeout_s + 30
    try:
        killed_wall = datetime.now(UTC)
        killed_at = time.monotonic()
        kill_dc(workers.run_dir, victim)
        workers.forget_dc(victim)
        accepted = _probe_until_taken_over(writer, victim, shards, killed_at, timeout_s)
    finally:
        writer.close()
        start_dc(workers.run_dir, victim)
    after = ownership_view(topology, survivors[0])
    moved = {s: (victim, after[s][0], before[s][1], after[s][1]) for s in shards}
    workers.start_dc_workers(victim, rate=rate, seed=seed)

    def demoted() -> bool:
        mine = ownership_view(topology, victim)
        return all(mine[s][:2] == after[s][:2] and not mine[s][2] for s in shards)

    wait_until(demoted, 120, f"{victim} demoted for the shards it lost")
    conn = connect(topology.dc(victim).database)
    try:
        lost = [o for o in orphans(conn) if o.shard in moved and o.epoch == before[o.shard][1]]
    finally:
        conn.close()
    victim_rate, delay_ms = _victim_figures(topology, victim, moved, killed_wall)
    counted = _restarts(topology, moved)
    deadline = time.monotonic() + restarts_timeout_s
    while counted[2] < counted[0] and time.monotonic() < deadline:
        time.sleep(1.0)
        counted = _restarts(topology, moved)
    return FailoverRun(
        victim=victim,
        moved=moved,
        first_write_s=min(accepted.values()),
        all_writes_s=max(accepted.values()),
        orphans=len(lost),
        victim_rate=victim_rate,
        delay_ms=delay_ms,
        restarts=counted[0],
        resumed=counted[1],
        completed=counted[2],
    )


def _move_under_probe(topology: Topology, timeout_s: float = 60.0) -> MoveRun:
    """Move one shard (the lowest a DC owns writable, to another DC of its set) with
    ``coopr-pipeline ownership move`` while a probe writes it every ``PROBE_INTERVAL_S``,
    following the owner a refusal names."""
    dcs = [dc.name for dc in topology.data_dcs]
    view = ownership_view(topology, dcs[0])
    shard = min(s for s, (o, _, _) in view.items() if ownership_view(topology, o)[s][2])
    source = view[shard][0]
    target = next(d for d in topology.dc_set(shard) if d != source)
    writer = ProbeWriter(topology)
    timeline: list[tuple[float, bool]] = []
    done = threading.Event()

    def probe() -> None:
        at = source
        deadline = time.monotonic() + timeout_s + 10
        while not done.is_set() and time.monotonic() < deadline:
            named = writer.write(shard, at)
            timeline.append((time.monotonic(), named is None))
            at = named or at
            time.sleep(PROBE_INTERVAL_S)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # accepted writes before the move: its window starts at a refusal
        moved = subprocess.run(
            [
                *(sys.executable, "-m", "cli", "--log-level", "warning", "ownership", "move"),
                *("--shard", str(shard), "--to", target, "--topology", topology.source),
                *("--timeout", f"{timeout_s:g}"),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s + 30,
        )
        # Writes accepted at the new owner after the move end the window.
        wait_until(lambda: bool(timeline) and timeline[-1][1] and len(timeline) > 1, 10, "a write")
        time.sleep(0.3)
    finally:
        done.set()
        thread.join(10)
        writer.close()
    if moved.returncode != 0:
        raise PipelineError(f"ownership move failed: {moved.stderr.strip()}")
    return MoveRun(shard, source, target, longest_refusal(timeline))


def bench_failover(
    topology: Topology,
    run_dir: Path,
    *,
    runs: int = 5,
    failure_timeout_s: float = 10.0,
    rate: float = 20.0,
    log_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[FailoverRun], list[MoveRun]]:
    """``runs`` failovers and planned moves under load (``rate`` events/s per DC from the
    stand-in servers); every worker is stopped with SIGTERM at the end, the stack left
    running with every DC up. Each run takes about T + 40 s plus an applier group's session
    timeout (10 s) after the killed DC's restart; ``progress`` is told each run's figures."""
    workers = StackWorkers(
        topology, run_dir.resolve(), log_dir or run_dir / "logs", "bench", failure_timeout_s
    )
    failovers: list[FailoverRun] = []
    moves: list[MoveRun] = []
    try:
        for i, dc in enumerate(topology.dcs):
            workers.start_dc_workers(dc.name, rate=rate, seed=i)
        for run in range(runs):
            wait_ready(workers)
            failovers.append(drill(workers, rate=rate, seed=100 * (run + 1)))
            wait_ready(workers, load_s=0)
            moves.append(_move_under_probe(topology))
            if progress is not None:
                f, m = failovers[-1], moves[-1]
                progress(
                    f"run {run + 1}/{runs}: {f.victim} killed, first write after"
                    f" {f.first_write_s:.2f} s, every shard after {f.all_writes_s:.2f} s,"
                    f" {f.orphans} orphans; move of shard {m.shard} refused writes"
                    f" {m.refused_s * 1000:.0f} ms"
                )
    finally:
        workers.stop_all()
    return failovers, moves


def figures(failovers: Sequence[FailoverRun], moves: Sequence[MoveRun]) -> dict[str, float]:
    """The benchmark's figures: failover times (s), orphans against rate x delay, refused
    windows of planned moves (ms), as p50 and max over the runs."""
    first = [r.first_write_s for r in failovers]
    every = [r.all_writes_s for r in failovers]
    refused = [m.refused_s * 1000 for m in moves]
    return {
        "runs": float(len(failovers)),
        "failover_first_write_p50_s": percentile(first, 0.5),
        "failover_first_write_max_s": max(first, default=float("nan")),
        "failover_all_shards_p50_s": percentile(every, 0.5),
        "failover_all_shards_max_s": max(every, default=float("nan")),
        "orphans_p50": percentile([float(r.orphans) for r in failovers], 0.5),
        "orphans_max": float(max((r.orphans for r in failovers), default=0)),
        "expected_loss_p50": percentile([r.expected_loss for r in failovers], 0.5),
        "mirror_delay_p50_ms": percentile([r.delay_ms for r in failovers], 0.5),
        "move_refused_p50_ms": percentile(refused, 0.5),
        "move_refused_max_ms": max(refused, default=float("nan")),
    }
