"""``coopr-pipeline status``: the whole pipeline on one screen, with a one-word verdict.

Everything is asked of every DC at once, each part within ``--timeout`` seconds:

- the local stack's processes with their health (as ``stack status`` checks them) and the
  demo's workers recorded under the run dir, when there is a stack (a deployment's
  processes are not known locally);
- each DC's latest heartbeat, the freshest copy that any DC's Kafka holds, whether it says
  fenced, and which DCs do not hear it (:mod:`controller.report`);
- per shard, the owner and epoch (the highest epoch any database holds) with writable and
  lease as the owner's own database has them: the only place where the lease means something;
- replication delay per DC pair, from the replica rows applied in the last ``--window``
  seconds (``applied_at`` at the replica minus ``occurred_at`` at the owner);
- per DC: relay backlog (outbox rows not yet published), records behind (the mirrored
  topics' ends minus the offsets the applier stored in Postgres), dead letters (the end of
  ``coopr.dlq`` and the rows not yet shipped there), gaps, fenced and late events.

A DC part that does not answer reads ``unreachable: <reason>`` and the rest is shown; the
verdict is then degraded (:func:`verdict` lists every rule).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click
import psycopg2
from confluent_kafka import KafkaException

from cli.lookup import (
    OffsetRange,
    applied_offsets,
    database,
    kafka_settings,
    offset_ranges,
    offsets_since,
)
from cli.options import format_option, run_dir_option, timeout_option, topology_option
from cli.render import json_line, table, to_json
from pipeline.errors import PipelineError, UnreachableError, first_line
from pipeline.topology import DataCenter, Topology, load_topology

if TYPE_CHECKING:
    import psycopg2.extensions

    from controller.report import DcLiveness, ShardOwnership
    from pipeline.events import Heartbeat

__all__ = [
    "Backlog",
    "Behind",
    "DcStatus",
    "Delay",
    "Limits",
    "ProcessRow",
    "Processes",
    "Replication",
    "Report",
    "ShardRow",
    "Waiting",
    "gather",
    "render",
    "stack_processes",
    "status",
    "verdict",
]

_T = TypeVar("_T")
_S = TypeVar("_S")


@dataclass(frozen=True, slots=True)
class Limits:
    """What the report looks at and how long it may wait (all in seconds)."""

    #: Delay percentiles and new gaps cover what was applied or found in this last stretch.
    window_s: float
    #: An unpublished outbox row, an unapplied record or an unshipped dead letter older
    #: than this makes the verdict degraded.
    max_lag_s: float
    #: A DC whose latest heartbeat is older counts as silent (the controllers' own timeout).
    failure_timeout_s: float
    #: Longest wait for one broker or database to answer.
    timeout_s: float


@dataclass(frozen=True, slots=True)
class ProcessRow:
    """A process of the local stack (``kind`` "stack", health as ``stack status`` checks it)
    or a worker recorded under the run dir (``kind`` "worker": "running" or "stopped")."""

    name: str
    kind: str
    dc: str | None
    pid: int | None
    health: str
    ok: bool


@dataclass(frozen=True, slots=True)
class Processes:
    """The processes of the stack in ``run_dir``; ``known`` is False without a stack there."""

    known: bool
    run_dir: str
    rows: tuple[ProcessRow, ...] = ()
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Backlog:
    """Outbox rows not yet published. ``disowned``: of those, rows of an epoch the DC no
    longer owns (orphans of a failover, never published). ``overdue``: publishable rows
    older than the lag limit; ``oldest_s``: the oldest publishable row's age (s)."""

    unpublished: int
    disowned: int
    overdue: int
    oldest_s: float | None


@dataclass(frozen=True, slots=True)
class Behind:
    """Records of the mirrored shard topics the DC's applier has not applied: the topics'
    ends minus the offsets stored in its database, per source DC. ``overdue``: of those,
    records the broker stamped more than the lag limit ago (its time index)."""

    total: int
    by_source: dict[str, int]
    overdue: int


@dataclass(frozen=True, slots=True)
class Waiting:
    """Dead letters written to the ``dead_letters`` table and not yet acknowledged by
    ``coopr.dlq``; ``overdue``: waiting longer than the lag limit."""

    rows: int
    overdue: int


@dataclass(frozen=True, slots=True)
class Replication:
    """What the DC's applier recorded of the topology's shards: seq gaps ever and found in
    the window, gaps still open (events missing) and in which shards, events fenced (of an
    older epoch, not applied) and late (arrived into an open gap, applied)."""

    gaps: int
    gaps_in_window: int
    open_gaps: int
    open_gap_shards: tuple[int, ...]
    fenced: int
    late: int


@dataclass(frozen=True, slots=True)
class DcStatus:
    """One DC. ``kafka`` and ``database`` are "ok" or "unreachable: <reason>" (or
    "error: <reason>"); a section that needed the part that did not answer holds that string
    instead of its figures. A witness has no database: its sections are None."""

    name: str
    witness: bool
    kafka: str
    database: str
    missing_topics: tuple[str, ...]
    heartbeat: DcLiveness
    relay_backlog: Backlog | str | None
    records_behind: Behind | str | None
    dlq_end_offset: int | str | None
    dead_letters_waiting: Waiting | str | None
    replication: Replication | str | None


@dataclass(frozen=True, slots=True)
class ShardRow:
    """A shard: owner and epoch (the highest epoch any database holds); ``writable``:
    accepts writes at its owner (writable, lease running) as the owner's own database says,
    None when that database does not answer or has not the epoch yet; ``lease_s``: lease left
    (None: endless, or unknown); ``behind_in``: DCs whose database still has another owner or
    an older epoch."""

    shard: int
    owner: str
    epoch: int
    writable: bool | None
    lease_s: float | None
    last_seq: int
    as_seen_by: str
    behind_in: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Delay:
    """Replication delay from ``source`` to ``replica`` (ms): percentiles of the replica
    rows applied in the last ``--window`` seconds (the replica database's clock), each cluster
    or job row counted once, at its latest change. ``error``: the replica's database did not
    answer."""

    source: str
    replica: str
    rows: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """One report of the whole pipeline; ``verdict`` is "ok", "degraded" or "down"."""

    verdict: str
    reasons: tuple[str, ...]
    at: str
    topology: str
    window_s: float
    max_lag_s: float
    processes: Processes
    dcs: tuple[DcStatus, ...]
    shards: tuple[ShardRow, ...]
    delays: tuple[Delay, ...]


# --- gathering ----------------------------------------------------------------------------


def _attempt(work: Callable[[], _T]) -> _T | str:
    """``work()``, or what went wrong in one line: "unreachable: ..." for a part that does
    not answer, "error: ..." for one that answers wrongly."""
    try:
        return work()
    except UnreachableError as e:
        return f"unreachable: {e}"
    except psycopg2.OperationalError as e:
        return f"unreachable: {first_line(e)}"
    except (PipelineError, psycopg2.Error, KafkaException) as e:
        return f"error: {first_line(e)}"


def stack_processes(run_dir: Path, topology: Topology) -> Processes:
    """The stack's processes in ``run_dir`` and the workers recorded there; not known when
    the run dir holds no stack."""
    from pipeline.stack import status as stack_status
    from pipeline.stack.processes import StackState, is_running, recorded_workers

    run_dir = run_dir.resolve()
    if StackState.load(run_dir) is None:
        return Processes(False, str(run_dir), note=f"not known locally: no stack in {run_dir}")
    rows = [
        ProcessRow(r.name, "stack", _dc_of(r.name), r.pid, r.health, r.healthy)
        for r in stack_status(run_dir)
    ]
    for dc in topology.dcs:
        for record in recorded_workers(run_dir, dc.name):
            running = is_running(record)
            rows.append(
                ProcessRow(
                    record.name,
                    "worker",
                    dc.name,
                    record.pid if running else None,
                    "running" if running else "stopped",
                    running,
                )
            )
    return Processes(True, str(run_dir), tuple(rows))


def _dc_of(process: str) -> str | None:
    # Names are <role>-<dc> (roles hold no '-'); the toxiproxy serves every DC.
    return process.split("-", 1)[1] if "-" in process else None


@dataclass(frozen=True, slots=True)
class _KafkaFacts:
    ranges: dict[str, OffsetRange]
    #: Per mirrored topic, the first offset stamped within the lag limit (None: none is).
    recent_from: dict[str, int | None]
    missing: tuple[str, ...]
    heartbeats: dict[str, Heartbeat]


def _kafka_facts(site: DataCenter, topology: Topology, at_ms: int, timeout_s: float) -> _KafkaFacts:
    from consumer.applier import replicated_topics
    from controller.report import latest_heartbeats
    from pipeline.admin import list_topics
    from pipeline.topics import DLQ_TOPIC

    settings = kafka_settings(site, timeout_s)
    try:
        existing = list_topics(settings, timeout_s)
    except UnreachableError:
        raise UnreachableError(
            f"{site.name}'s Kafka at {site.kafka} did not answer within {timeout_s:g} s"
        ) from None
    mirrored = replicated_topics(topology, site.name)
    wanted = [*mirrored, DLQ_TOPIC]
    return _KafkaFacts(
        ranges=offset_ranges(site, [t for t in wanted if t in existing], timeout_s),
        recent_from=offsets_since(site, [t for t in mirrored if t in existing], at_ms, timeout_s),
        missing=tuple(t for t in wanted if t not in existing),
        heartbeats=latest_heartbeats(settings, topology, site.name, timeout_s),
    )


@dataclass(frozen=True, slots=True)
class _DbFacts:
    backlog: Backlog
    waiting: Waiting
    replication: Replication
    applied: dict[str, int]
    shards: list[ShardOwnership]
    delays: list[Delay]


_BACKLOG = """
SELECT count(*), count(*) FILTER (WHERE NOT mine),
    count(*) FILTER (
        WHERE mine AND created_at < clock_timestamp() - make_interval(secs => %(lag)s)),
    extract(epoch FROM clock_timestamp() - min(created_at) FILTER (WHERE mine))
FROM (
    SELECT b.created_at, COALESCE(o.owner_dc = %(dc)s AND o.epoch = b.epoch, false) AS mine
    FROM outbox b LEFT JOIN shard_ownership o USING (shard)
    WHERE b.published_at IS NULL
) unpublished
"""
_WAITING = """
SELECT count(*), count(*) FILTER (WHERE created_at < now() - make_interval(secs => %(lag)s))
FROM dead_letters
"""
_STATES = """
SELECT shard, gaps, jsonb_array_length(open_gaps), fenced, late FROM replication_state
WHERE source_dc = ANY(%(sources)s) AND shard < %(shards)s
"""
_NEW_GAPS = """
SELECT count(*) FROM replication_gaps
WHERE source_dc = ANY(%(sources)s) AND shard < %(shards)s
    AND detected_at >= now() - make_interval(secs => %(window)s)
"""
# In SQL, not in Python: a busy replica applies many thousand rows in a window, and only four
# figures per DC pair need to cross the network. percentile_cont interpolates as
# pipeline.stats.percentile does, so these figures compare with the demo's and the benches'.
_DELAYS = """
WITH applied AS (
    SELECT source_dc, extract(epoch FROM applied_at - occurred_at) * 1000 AS ms
    FROM replica_clusters
    WHERE source_dc = ANY(%(sources)s) AND applied_at >= now() - make_interval(secs => %(window)s)
    UNION ALL
    SELECT source_dc, extract(epoch FROM applied_at - occurred_at) * 1000
    FROM replica_checkpoints
    WHERE source_dc = ANY(%(sources)s) AND applied_at >= now() - make_interval(secs => %(window)s)
)
SELECT source_dc, count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
    percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)
FROM applied GROUP BY source_dc
"""


def _db_facts(site: DataCenter, topology: Topology, limits: Limits) -> _DbFacts:
    from controller.report import shard_states

    conn = database(site, limits.timeout_s)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET statement_timeout = %s", (int(limits.timeout_s * 1000),))
        return _DbFacts(
            *_db_figures(conn, site, topology, limits),
            applied=applied_offsets(conn),
            shards=shard_states(conn),
            delays=_delays(conn, site, topology, limits.window_s),
        )
    finally:
        conn.close()


def _db_figures(
    conn: psycopg2.extensions.connection, site: DataCenter, topology: Topology, limits: Limits
) -> tuple[Backlog, Waiting, Replication]:
    params = {
        "dc": site.name,
        "lag": limits.max_lag_s,
        "window": limits.window_s,
        "sources": [dc.name for dc in topology.dcs if dc.name != site.name],
        "shards": topology.shard_count,
    }
    with conn, conn.cursor() as cur:
        cur.execute(_BACKLOG, params)
        unpublished, disowned, overdue, oldest = cur.fetchone() or (0, 0, 0, None)
        cur.execute(_WAITING, params)
        waiting, waiting_overdue = cur.fetchone() or (0, 0)
        cur.execute(_STATES, params)
        states = cur.fetchall()
        cur.execute(_NEW_GAPS, params)
        new_gaps = int((cur.fetchone() or (0,))[0])
    backlog = Backlog(
        int(unpublished),
        int(disowned),
        int(overdue),
        None if oldest is None else round(float(oldest), 3),
    )
    replication = Replication(
        gaps=sum(int(s[1]) for s in states),
        gaps_in_window=new_gaps,
        open_gaps=sum(int(s[2]) for s in states),
        open_gap_shards=tuple(sorted({int(s[0]) for s in states if s[2]})),
        fenced=sum(int(s[3]) for s in states),
        late=sum(int(s[4]) for s in states),
    )
    return backlog, Waiting(int(waiting), int(waiting_overdue)), replication


def _delays(
    conn: psycopg2.extensions.connection, site: DataCenter, topology: Topology, window_s: float
) -> list[Delay]:
    sources = sorted(topology.replicated_by(site.name))
    with conn, conn.cursor() as cur:
        cur.execute(_DELAYS, {"sources": sources, "window": window_s})
        found = {row[0]: row[1:] for row in cur.fetchall()}
    out = []
    for source in sources:
        count, p50, p99, most = found.get(source, (0, None, None, None))
        out.append(Delay(source, site.name, int(count), _ms(p50), _ms(p99), _ms(most)))
    return out


def _ms(value: object) -> float | None:
    return None if value is None else round(float(str(value)), 3)


def gather(
    topology: Topology, topology_path: str, processes: Callable[[], Processes], limits: Limits
) -> Report:
    """One report: every DC's Kafka and database asked at once, and the processes."""
    at = datetime.now(UTC)
    recent_ms = int((at.timestamp() - limits.max_lag_s) * 1000)
    with ThreadPoolExecutor(max_workers=2 * len(topology.dcs) + 1) as pool:
        procs = pool.submit(_attempt, processes)
        kafka = {
            dc.name: pool.submit(
                _attempt, partial(_kafka_facts, dc, topology, recent_ms, limits.timeout_s)
            )
            for dc in topology.dcs
        }
        db = {
            dc.name: pool.submit(_attempt, partial(_db_facts, dc, topology, limits))
            for dc in topology.data_dcs
        }
        kafka_facts = {name: f.result() for name, f in kafka.items()}
        db_facts = {name: f.result() for name, f in db.items()}
        found = procs.result()
    if isinstance(found, str):
        found = Processes(True, "", note=found)
    heartbeats = _heartbeats(topology, kafka_facts.values())
    dcs = tuple(
        _dc_status(dc, topology, kafka_facts[dc.name], db_facts.get(dc.name), heartbeats[dc.name])
        for dc in topology.dcs
    )
    shards = tuple(
        _shard_rows({n: f.shards for n, f in db_facts.items() if not isinstance(f, str)})
    )
    delays = tuple(_all_delays(topology, db_facts))
    word, reasons = verdict(found, dcs, shards, limits)
    return Report(
        verdict=word,
        reasons=tuple(reasons),
        at=at.isoformat(timespec="milliseconds"),
        topology=topology_path,
        window_s=limits.window_s,
        max_lag_s=limits.max_lag_s,
        processes=found,
        dcs=dcs,
        shards=shards,
        delays=delays,
    )


def _heartbeats(topology: Topology, views: Iterable[_KafkaFacts | str]) -> dict[str, DcLiveness]:
    """Each DC's freshest heartbeat among the copies every answering Kafka holds."""
    from controller.report import liveness_rows

    freshest: dict[str, Heartbeat] = {}
    for view in views:
        if isinstance(view, str):
            continue
        for dc, beat in view.heartbeats.items():
            if dc not in freshest or beat.occurred_at > freshest[dc].occurred_at:
                freshest[dc] = beat
    return {row.dc: row for row in liveness_rows(topology, freshest)}


def _dc_status(
    site: DataCenter,
    topology: Topology,
    kafka: _KafkaFacts | str,
    db: _DbFacts | str | None,
    heartbeat: DcLiveness,
) -> DcStatus:
    from pipeline.topics import DLQ_TOPIC

    def of_db(pick: Callable[[_DbFacts], _T]) -> _T | str | None:
        return db if db is None or isinstance(db, str) else pick(db)

    dlq: int | str | None = kafka if isinstance(kafka, str) else None
    if not isinstance(kafka, str) and DLQ_TOPIC in kafka.ranges:
        dlq = kafka.ranges[DLQ_TOPIC].high
    return DcStatus(
        name=site.name,
        witness=site.witness,
        kafka=kafka if isinstance(kafka, str) else "ok",
        database="-" if db is None else db if isinstance(db, str) else "ok",
        missing_topics=() if isinstance(kafka, str) else kafka.missing,
        heartbeat=heartbeat,
        relay_backlog=of_db(lambda f: f.backlog),
        records_behind=None if db is None else _behind(topology, site.name, kafka, db),
        dlq_end_offset=dlq,
        dead_letters_waiting=of_db(lambda f: f.waiting),
        replication=of_db(lambda f: f.replication),
    )


def _behind(
    topology: Topology, dc: str, kafka: _KafkaFacts | str, db: _DbFacts | str
) -> Behind | str:
    """Per source DC, the records of its mirrored topics in ``dc`` not applied yet: from the
    applied offset (the topic's start when none is stored) to the topic's end."""
    from consumer.applier import replicated_topics
    from pipeline.topics import parse_mirrored_shard

    if isinstance(kafka, str):
        return kafka
    if isinstance(db, str):
        return db
    by_source = {source: 0 for source in topology.replicated_by(dc)}
    overdue = 0
    for topic in replicated_topics(topology, dc):
        span = kafka.ranges.get(topic)
        if span is None:
            continue  # missing: reported as such
        start = min(max(db.applied.get(topic, span.low), span.low), span.high)
        by_source[parse_mirrored_shard(topic).source_dc] += span.high - start
        recent = kafka.recent_from.get(topic)
        overdue += max(0, (span.high if recent is None else recent) - start)
    return Behind(sum(by_source.values()), by_source, overdue)


def _shard_rows(views: dict[str, list[ShardOwnership]]) -> list[ShardRow]:
    """Each shard at the highest epoch any database holds, writable and lease as its owner's
    own database has them."""
    seen: dict[int, dict[str, ShardOwnership]] = {}
    for dc, rows in views.items():
        for row in rows:
            seen.setdefault(row.shard, {})[dc] = row
    out = []
    for shard, held in sorted(seen.items()):
        top_dc, top = max(held.items(), key=lambda item: item[1].epoch)
        own = held.get(top.owner_dc)
        if own is not None and own.epoch == top.epoch and own.owner_dc == top.owner_dc:
            top_dc, top = top.owner_dc, own
            accepts: bool | None = own.writable and (own.lease_s is None or own.lease_s > 0)
        else:
            accepts = None
        out.append(
            ShardRow(
                shard=shard,
                owner=top.owner_dc,
                epoch=top.epoch,
                writable=accepts,
                lease_s=top.lease_s if accepts is not None else None,
                last_seq=top.last_seq,
                as_seen_by=top_dc,
                behind_in=tuple(
                    sorted(
                        dc
                        for dc, row in held.items()
                        if (row.owner_dc, row.epoch) != (top.owner_dc, top.epoch)
                    )
                ),
            )
        )
    return out


def _all_delays(topology: Topology, db_facts: dict[str, _DbFacts | str]) -> list[Delay]:
    out = []
    for replica, facts in db_facts.items():
        if isinstance(facts, str):
            out += [
                Delay(source, replica, 0, None, None, None, facts)
                for source in sorted(topology.replicated_by(replica))
            ]
        else:
            out += facts.delays
    return sorted(out, key=lambda d: (d.source, d.replica))


# --- the verdict --------------------------------------------------------------------------


def verdict(
    processes: Processes,
    dcs: Sequence[DcStatus],
    shards: Sequence[ShardRow],
    limits: Limits,
) -> tuple[str, list[str]]:
    """The verdict and its reasons: "down" when no DC's database or no DC's Kafka
    answers, or no shard accepts writes; else "degraded" when any of these holds, else "ok":

    - a stack process is not healthy, or a recorded worker no longer runs;
    - a DC's Kafka or database does not answer (or answers with an error), or a topic it
      should hold is missing;
    - a DC's latest heartbeat is older than the failure timeout, says fenced, or another
      DC's latest heartbeat does not list it (a DC that never sent one is not counted: no
      controller runs, as on a stack with static ownership);
    - a shard does not accept writes at its owner, or its owner's database cannot tell;
    - an outbox row publishable for longer than the lag limit, a mirrored record stamped
      longer ago and not applied, or a dead letter waiting that long to reach ``coopr.dlq``;
    - an open gap: events of a shard's current epoch that never arrived.

    Dead letters already in ``coopr.dlq``, gaps closed, fenced and late events and the
    delays are figures to read, not faults: they stay after the cause is gone.
    """
    reasons = _down(dcs, shards)
    word = "down" if reasons else "ok"
    reasons += [f"process {p.name}: {p.health}" for p in processes.rows if not p.ok]
    if processes.known and not processes.rows:
        reasons.append(f"processes: {processes.note or 'none recorded'}")
    for dc in dcs:
        reasons += _dc_reasons(dc, limits)
    reasons += _shard_reasons(shards)
    if word == "ok" and reasons:
        word = "degraded"
    return word, reasons


def _down(dcs: Sequence[DcStatus], shards: Sequence[ShardRow]) -> list[str]:
    data = [dc for dc in dcs if not dc.witness]
    if data and all(dc.database != "ok" for dc in data):
        return ["no DC's database answers"]
    if dcs and all(dc.kafka != "ok" for dc in dcs):
        return ["no DC's Kafka answers"]
    if shards and not any(s.writable for s in shards):
        return ["no shard accepts writes"]
    return []


def _dc_reasons(dc: DcStatus, limits: Limits) -> list[str]:
    lag = f"{limits.max_lag_s:g} s"
    # Most messages name the DC already ("unreachable: dc1's Kafka at ..."): their first
    # word goes; those that do not get the DC's name in front.
    out = [
        state.split(": ", 1)[1] if dc.name in state else f"{dc.name}'s {part}: {state}"
        for part, state in _parts(dc)
        if state != "ok"
    ]
    if dc.missing_topics:
        out.append(
            f"{dc.name}: {len(dc.missing_topics)} topics missing in its Kafka, e.g."
            f" {dc.missing_topics[0]}"
        )
    out += _heartbeat_reasons(dc.name, dc.heartbeat, limits.failure_timeout_s)
    if isinstance(dc.relay_backlog, Backlog) and dc.relay_backlog.overdue:
        oldest = dc.relay_backlog.oldest_s or 0.0
        out.append(
            f"{dc.name}: relay backlog: {dc.relay_backlog.overdue} outbox rows unpublished"
            f" for over {lag} (the oldest {oldest:.1f} s)"
        )
    if isinstance(dc.records_behind, Behind) and dc.records_behind.overdue:
        out.append(
            f"{dc.name}: applier behind: {dc.records_behind.overdue} mirrored records older"
            f" than {lag} not applied"
        )
    if isinstance(dc.dead_letters_waiting, Waiting) and dc.dead_letters_waiting.overdue:
        out.append(
            f"{dc.name}: {dc.dead_letters_waiting.overdue} dead letters waiting over {lag}"
            " to reach coopr.dlq"
        )
    if isinstance(dc.replication, Replication) and dc.replication.open_gaps:
        shards = ", ".join(map(str, dc.replication.open_gap_shards))
        out.append(
            f"{dc.name}: {dc.replication.open_gaps} open gaps (events missing) in shards {shards}"
        )
    return out


def _parts(dc: DcStatus) -> list[tuple[str, str]]:
    return [("Kafka", dc.kafka)] + ([] if dc.witness else [("database", dc.database)])


def _heartbeat_reasons(dc: str, beat: DcLiveness, failure_timeout_s: float) -> list[str]:
    out = []
    if beat.age_s is not None and beat.age_s > failure_timeout_s:
        out.append(f"{dc}: its latest heartbeat is {beat.age_s:.1f} s old (controller silent)")
    if beat.fenced:
        out.append(f"{dc}: fenced (it hears fewer than a majority of DCs)")
    if beat.suspected_by:
        out.append(f"{dc}: not heard by {', '.join(beat.suspected_by)}")
    return out


def _shard_reasons(shards: Sequence[ShardRow]) -> list[str]:
    refused = [s for s in shards if s.writable is False]
    unknown = [s for s in shards if s.writable is None]
    out = []
    for owner in sorted({s.owner for s in refused}):
        mine = ",".join(str(s.shard) for s in refused if s.owner == owner)
        out.append(f"shards {mine}: not writable at their owner {owner}")
    for owner in sorted({s.owner for s in unknown}):
        mine = ",".join(str(s.shard) for s in unknown if s.owner == owner)
        out.append(
            f"shards {mine}: their owner {owner}'s database cannot confirm they accept writes"
        )
    return out


# --- rendering ----------------------------------------------------------------------------


def render(report: Report) -> str:
    """The report as text: the verdict and its reasons, then a table per section."""
    parts = [_headline(report), _process_table(report.processes), _dc_table(report.dcs)]
    parts += [_shard_table(report.shards), _delay_table(report)]
    return "\n\n".join(parts)


def _headline(report: Report) -> str:
    lines = [f"status: {report.verdict}"] + [f"- {r}" for r in report.reasons]
    lines.append(f"at {report.at}, topology {report.topology}")
    return "\n".join(lines)


def _process_table(processes: Processes) -> str:
    if not processes.known:
        return f"processes: {processes.note}"
    if not processes.rows:
        return f"processes: {processes.note or 'none recorded'}"
    return table(
        ["PROCESS", "DC", "PID", "HEALTH"],
        [[p.name, p.dc or "-", p.pid or "-", p.health] for p in processes.rows],
    )


def _cell(section: _S | str | None, figure: Callable[[_S], object]) -> object:
    """A section's figure, or the first word of why it is missing ("unreachable")."""
    if section is None:
        return "-"
    if isinstance(section, str):
        return section.split(":", 1)[0]
    return figure(section)


def _dc_table(dcs: Sequence[DcStatus]) -> str:
    def row(dc: DcStatus) -> list[object]:
        beat = dc.heartbeat
        return [
            dc.name,
            dc.kafka.split(":", 1)[0],
            "-" if dc.witness else dc.database.split(":", 1)[0],
            "never" if beat.age_s is None else f"{beat.age_s:.1f}",
            "-" if beat.fenced is None else ("yes" if beat.fenced else "no"),
            ",".join(beat.suspected_by) or "-",
            _cell(dc.relay_backlog, lambda b: b.unpublished),
            _cell(dc.records_behind, lambda b: b.total),
            _cell(dc.dlq_end_offset, lambda end: end),
            _cell(dc.dead_letters_waiting, lambda w: w.rows),
            _cell(dc.replication, lambda r: r.gaps),
            _cell(dc.replication, lambda r: r.open_gaps),
            _cell(dc.replication, lambda r: r.fenced),
            _cell(dc.replication, lambda r: r.late),
        ]

    return table(
        [
            *("DC", "KAFKA", "DATABASE", "HEARTBEAT_AGE_S", "FENCED", "NOT_HEARD_BY"),
            *("RELAY_BACKLOG", "RECORDS_BEHIND", "DLQ", "DLQ_WAITING"),
            *("GAPS", "OPEN_GAPS", "FENCED_EVENTS", "LATE_EVENTS"),
        ],
        [row(dc) for dc in dcs],
    )


def _shard_table(shards: Sequence[ShardRow]) -> str:
    if not shards:
        return "shards: no database answers"
    return table(
        ["SHARD", "OWNER", "EPOCH", "WRITABLE", "LEASE_S", "LAST_SEQ", "SEEN_BY", "BEHIND_IN"],
        [
            [
                s.shard,
                s.owner,
                s.epoch,
                "unknown" if s.writable is None else ("yes" if s.writable else "no"),
                "endless" if s.lease_s is None and s.writable is not None else _num(s.lease_s),
                s.last_seq,
                s.as_seen_by,
                ",".join(s.behind_in) or "-",
            ]
            for s in shards
        ],
    )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _delay_table(report: Report) -> str:
    title = (
        f"replication delay, replica rows applied in the last {report.window_s:g} s"
        " (applied_at at the replica - occurred_at at the owner):"
    )
    rows = [
        [d.source, d.replica, d.rows, _num(d.p50_ms), _num(d.p99_ms), _num(d.max_ms)]
        if d.error is None
        else [d.source, d.replica, d.error.split(":", 1)[0], "-", "-", "-"]
        for d in report.delays
    ]
    return title + "\n" + table(["SOURCE", "REPLICA", "ROWS", "P50_MS", "P99_MS", "MAX_MS"], rows)


# --- the command --------------------------------------------------------------------------


def _watch(produce: Callable[[], Report], fmt: str, interval_s: float, count: int | None) -> Report:
    """Report every ``interval_s`` s, ``count`` times (None: until Ctrl-C), refreshed in
    place on a terminal; returns the last report."""
    show: Callable[[Report, int], None]
    if fmt == "json":
        show = lambda report, _: click.echo(json_line(asdict(report)))  # noqa: E731
        return _repeat(produce, show, interval_s, count)
    if not sys.stdout.isatty():

        def show(report: Report, n: int) -> None:
            click.echo(("\n" if n > 1 else "") + render(report))

        return _repeat(produce, show, interval_s, count)
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    with Live(console=Console(), auto_refresh=False) as live:
        return _repeat(
            produce,
            lambda report, _: live.update(Text(render(report), no_wrap=True), refresh=True),
            interval_s,
            count,
        )


def _repeat(
    produce: Callable[[], Report],
    show: Callable[[Report, int], None],
    interval_s: float,
    count: int | None,
) -> Report:
    n = 0
    while True:
        n, started = n + 1, time.monotonic()
        report = produce()
        show(report, n)
        if count is not None and n >= count:
            return report
        time.sleep(max(0.0, started + interval_s - time.monotonic()))


@click.command("status")
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until Ctrl-C.")
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(0.1, 3600),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.option(
    "--count",
    type=click.IntRange(1),
    default=None,
    help="With --watch: stop after this many reports [default: run until Ctrl-C].",
)
@click.option(
    "--window",
    "window_s",
    type=click.FloatRange(1, 7 * 86400),
    default=300.0,
    show_default=True,
    help="Seconds back that the delay percentiles and the new gaps cover.",
)
@click.option(
    "--max-lag-s",
    "max_lag_s",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="An outbox row unpublished, a mirrored record unapplied or a dead letter unshipped"
    " for longer makes the verdict degraded.",
)
@click.option(
    "--failure-timeout",
    "failure_timeout_s",
    type=click.FloatRange(0.1),
    default=10.0,
    show_default=True,
    help="A DC whose latest heartbeat is older counts as silent (the controllers' own).",
)
@run_dir_option
@topology_option
@format_option
@timeout_option
@click.pass_context
def status(
    ctx: click.Context,
    watch: bool,
    interval_s: float,
    count: int | None,
    window_s: float,
    max_lag_s: float,
    failure_timeout_s: float,
    run_dir: Path,
    topology_file: Path,
    fmt: str,
    timeout_s: float,
) -> None:
    """The whole pipeline on one screen: a verdict (ok, degraded, down) with its reasons;
    processes; heartbeats; owners and epochs; replication delay per DC pair; relay backlog,
    records behind, dead letters, gaps, fenced and late events per DC. Exits 0 when ok, 1
    otherwise (with --watch: as the last report says; 0 on Ctrl-C)."""
    from pipeline.stack.processes import StackState

    given = click.core.ParameterSource.COMMANDLINE
    if not watch and given in (ctx.get_parameter_source(p) for p in ("interval_s", "count")):
        raise click.UsageError("--interval and --count go with --watch")
    state = StackState.load(run_dir.resolve())
    if state is None and ctx.get_parameter_source("run_dir") == given:
        raise PipelineError(f"no stack in {run_dir}: run `coopr-pipeline stack up` first")
    if ctx.get_parameter_source("topology_file") != given and "COOPR_TOPOLOGY" not in os.environ:
        topology_file = Path(state.topology) if state is not None else topology_file
    topology = load_topology(topology_file)
    limits = Limits(window_s, max_lag_s, failure_timeout_s, timeout_s)

    def produce() -> Report:
        return gather(
            topology, str(topology_file), partial(stack_processes, run_dir, topology), limits
        )

    if watch:
        try:
            last = _watch(produce, fmt, interval_s, count)
        except KeyboardInterrupt:
            sys.exit(0)
    else:
        last = produce()
        click.echo(to_json(last) if fmt == "json" else render(last))
    sys.exit(0 if last.verdict == "ok" else 1)
