"""``coopr-pipeline lag``: how far each replica DC is behind each source DC, per shard, from
the applier's truth (the offsets it stored in Postgres with the rows, never Kafka's group
offsets), and what the owners' outboxes hold that is not in Kafka yet.

Per mirrored copy a DC applies: records behind (the copy's end minus the next offset its
applier stored; the topic's start when it stored none, where the applier would begin), seconds
behind (the age of the oldest record not applied: now minus its timestamp, which is when the
owner's relay produced it, kept by MirrorMaker 2; 0 when none), and the source DC's outbox
backlog for the shard (rows of the epoch it owns the shard at, not yet published, counted in
its own database, with the age of the oldest). ``--max-lag-s`` makes it a health check.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

from cli.lookup import (
    OffsetRange,
    applied_offsets,
    database,
    offset_ranges,
    shard_topics,
    timestamps_at,
)
from cli.options import format_option, timeout_option, topology_option
from cli.render import json_line, table
from pipeline.errors import PipelineError
from pipeline.topics import parse_mirrored_shard
from pipeline.topology import DataCenter, Topology, load_topology

__all__ = ["Behind", "Lag", "behind", "lag", "outbox_backlogs"]


@dataclass(frozen=True, slots=True)
class Behind:
    """How far a DC's applier is behind on one mirrored copy. ``applied``: the next offset
    it reads (stored in its database, else the topic's start); ``records``: end minus that;
    ``seconds``: the oldest unapplied record's age (0 when none)."""

    applied: int
    stored: bool
    records: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Backlog:
    """Outbox rows of a shard its owner has not published yet, and the oldest one's age (s)."""

    rows: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Lag:
    """One row of ``lag``: DC ``dc`` applying ``topic``, the copy of ``shard`` from
    ``source_dc``. ``backlog`` and ``backlog_s`` are None when the source does not own the
    shard (its own database says so): then nothing of it is waiting to be published."""

    dc: str
    source_dc: str
    shard: int
    topic: str
    end: int
    applied: int
    applied_stored: bool
    records: int
    seconds: float
    backlog: int | None
    backlog_s: float | None


def behind(
    site: DataCenter, copies: Mapping[str, OffsetRange], stored: Mapping[str, int], timeout_s: float
) -> dict[str, Behind]:
    """For each mirrored copy in ``site`` (with its offset range), how far its applier is
    behind, given the offsets it ``stored``; the oldest unapplied records' timestamps are
    read from the broker in one go."""
    applied = {t: stored.get(t, span.low) for t, span in copies.items()}
    due = {t: max(o, copies[t].low) for t, o in applied.items() if o < copies[t].high}
    stamps = timestamps_at(site, due, timeout_s)
    now_ms = time.time() * 1000
    return {
        t: Behind(
            applied=o,
            stored=t in stored,
            records=max(0, copies[t].high - o),
            seconds=max(0.0, (now_ms - stamps[t]) / 1000) if t in stamps else 0.0,
        )
        for t, o in applied.items()
    }


# Per shard the DC owns as its own database says: unpublished rows of the epoch it owns the
# shard at (older epochs' rows are orphans, never published: `ownership orphans`).
_BACKLOG = """
SELECT o.shard, count(x.id),
    coalesce(extract(epoch FROM clock_timestamp() - min(x.created_at)), 0)::float8
FROM shard_ownership o JOIN local_dc l ON o.owner_dc = l.name
LEFT JOIN outbox x ON x.shard = o.shard AND x.epoch = o.epoch AND x.published_at IS NULL
GROUP BY o.shard
"""


def outbox_backlogs(site: DataCenter, timeout_s: float) -> dict[int, Backlog]:
    """Per shard ``site`` owns (as its own database says): its outbox rows not published."""
    conn = database(site, timeout_s)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(_BACKLOG)
            return {shard: Backlog(int(n), float(age)) for shard, n, age in cur.fetchall()}
    finally:
        conn.close()


def _applied_copies(
    topology: Topology, site: DataCenter, shard: int | None, timeout_s: float
) -> tuple[list[tuple[str, Behind, OffsetRange]], list[str]]:
    """The copies ``site`` applies (only ``shard``'s when given) with how far behind it is,
    and the copies the topology expects that its Kafka does not have."""
    from consumer.applier import replicated_topics

    expected = [
        t
        for t in replicated_topics(topology, site.name)
        if shard is None or parse_mirrored_shard(t).shard == shard
    ]
    present = set(shard_topics(site, timeout_s))
    spans = offset_ranges(site, [t for t in expected if t in present], timeout_s)
    conn = database(site, timeout_s)
    try:
        stored = applied_offsets(conn)
    finally:
        conn.close()
    found = behind(site, spans, stored, timeout_s)
    rows = [(t, found[t], spans[t]) for t in expected if t in found]
    return rows, [t for t in expected if t not in present]


@dataclass(slots=True)
class _Report:
    """What ``lag`` found, and what it could not find out (each a line for stderr)."""

    rows: list[Lag] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


#: A replica DC, a mirrored copy it applies, how far behind it is, and the copy's range.
_Copy = tuple[str, str, Behind, OffsetRange]


def _collect(topology: Topology, dc: str | None, shard: int | None, timeout_s: float) -> _Report:
    report = _Report()
    sites = [topology.dc(dc)] if dc else list(topology.data_dcs)
    copies: list[_Copy] = []
    for site in sites:
        try:
            found, missing = _applied_copies(topology, site, shard, timeout_s)
        except PipelineError as e:
            if dc:
                raise
            report.problems.append(f"{site.name}: not checked: {e}")
            continue
        copies += [(site.name, t, b, span) for t, b, span in found]
        report.problems += [
            f"{site.name}: no topic {t}: MirrorMaker 2 has not created it" for t in missing
        ]
    sources = {parse_mirrored_shard(t).source_dc for _, t, _, _ in copies}
    backlogs: dict[str, dict[int, Backlog]] = {}
    for source in sorted(sources):
        try:
            backlogs[source] = outbox_backlogs(topology.dc(source), timeout_s)
        except PipelineError as e:
            report.problems.append(f"{source}: outbox backlog unknown: {e}")
    report.rows = [_row(copy, backlogs) for copy in copies]
    return report


def _row(copy: _Copy, backlogs: Mapping[str, Mapping[int, Backlog]]) -> Lag:
    dc, topic, b, span = copy
    source = parse_mirrored_shard(topic)
    backlog = backlogs.get(source.source_dc, {}).get(source.shard)
    return Lag(
        dc=dc,
        source_dc=source.source_dc,
        shard=source.shard,
        topic=topic,
        end=span.high,
        applied=b.applied,
        applied_stored=b.stored,
        records=b.records,
        seconds=round(b.seconds, 3),
        backlog=None if backlog is None else backlog.rows,
        backlog_s=None if backlog is None else round(backlog.seconds, 3),
    )


def _over(rows: Iterable[Lag], max_lag_s: float) -> list[str]:
    """The rows behind by more than ``max_lag_s``, on the replica or in the outbox, in words."""
    over = []
    seen_backlogs = set()
    for r in rows:
        if r.seconds > max_lag_s:
            over.append(
                f"{r.dc} is {r.seconds:.1f} s ({r.records} records) behind {r.source_dc} on shard"
                f" {r.shard}, above {max_lag_s:g} s"
            )
        key = (r.source_dc, r.shard)
        if r.backlog_s is not None and r.backlog_s > max_lag_s and key not in seen_backlogs:
            seen_backlogs.add(key)
            over.append(
                f"{r.source_dc}'s outbox holds {r.backlog} rows of shard {r.shard} not in Kafka,"
                f" the oldest for {r.backlog_s:.1f} s, above {max_lag_s:g} s"
            )
    return over


def _totals(rows: list[Lag]) -> str:
    backlogs = {(r.source_dc, r.shard): r for r in rows if r.backlog is not None}
    return (
        f"total: {len(rows)} copies, {sum(r.records for r in rows)} records behind"
        f" (oldest {max((r.seconds for r in rows), default=0.0):.1f} s),"
        f" {sum(r.backlog or 0 for r in backlogs.values())} outbox rows not in Kafka"
        f" (oldest {max((r.backlog_s or 0.0 for r in backlogs.values()), default=0.0):.1f} s)"
    )


def _print(rows: list[Lag], fmt: str) -> None:
    if fmt == "json":
        for r in rows:
            click.echo(json_line(asdict(r)))
        return
    click.echo(
        table(
            [
                "DC",
                "SOURCE",
                "SHARD",
                "END",
                "APPLIED",
                "RECORDS",
                "SECONDS",
                "BACKLOG",
                "BACKLOG_S",
            ],
            [
                [
                    r.dc,
                    r.source_dc,
                    r.shard,
                    r.end,
                    r.applied if r.applied_stored else f"{r.applied} (start)",
                    r.records,
                    f"{r.seconds:.1f}",
                    "-" if r.backlog is None else r.backlog,
                    "-" if r.backlog_s is None else f"{r.backlog_s:.1f}",
                ]
                for r in rows
            ],
        )
    )
    click.echo(_totals(rows))


@click.command("lag")
@click.option("--dc", default=None, help="Only this replica DC [default: every data DC].")
@click.option("--shard", type=click.IntRange(0), default=None, help="Only this shard.")
@click.option(
    "--max-lag-s",
    type=click.FloatRange(0),
    default=None,
    help="Exit 1 when a replica is more seconds than this behind, or an outbox row waits"
    " longer than this (a health check).",
)
@topology_option
@format_option
@timeout_option
@click.pass_context
def lag(
    ctx: click.Context,
    dc: str | None,
    shard: int | None,
    max_lag_s: float | None,
    topology_file: Path,
    fmt: str,
    timeout_s: float,
) -> None:
    """Per replica DC, source DC and shard: records and seconds behind (from the offsets the
    applier stored in Postgres), and the owner's outbox rows not yet in Kafka."""
    topology = load_topology(topology_file)
    if shard is not None and shard >= topology.shard_count:
        raise PipelineError(
            f"no shard {shard}: the topology has shards 0 to {topology.shard_count - 1}"
        )
    report = _collect(topology, dc, shard, timeout_s)
    _print(report.rows, fmt)
    over = [] if max_lag_s is None else _over(report.rows, max_lag_s)
    for line in report.problems + over:
        click.echo(line, err=True)
    if report.problems or over:
        ctx.exit(1)
