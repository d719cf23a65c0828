"""``coopr-pipeline replay``: re-apply a shard's events into a replica DC's rows, from an
offset or a time, beside the running applier (``docs/replay.md``)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import click
import psycopg2.extensions
from confluent_kafka import Message

from cli.lookup import (
    TIME,
    OffsetRange,
    applied_offsets,
    database,
    offset_for_time,
    offset_ranges,
    read_range,
    shard_topics,
    topic_of,
)
from cli.options import format_option, timeout_option, topology_option
from cli.render import json_line, progress, table
from consumer.replay import ReplayCounts, ShardReplay, rebuild_refusal
from pipeline.errors import PipelineError
from pipeline.ownership import read_ownership
from pipeline.topics import mirrored, shard_topic
from pipeline.topology import DataCenter, Topology, load_topology

__all__ = ["replay"]

#: Records per batch (one transaction each), as the applier's default.
_BATCH_RECORDS = 5000
#: Record bytes per batch, about, as the applier's default.
_BATCH_BYTES = 16 * 1024 * 1024


@click.command("replay")
@click.option("--dc", required=True, help="The replica DC whose rows to replay into.")
@click.option("--shard", type=int, required=True, help="The shard to replay.")
@click.option(
    "--source",
    default=None,
    help="The DC whose copy of the shard's topic to read [default: the shard's owner, as the"
    " DC's database has it].",
)
@click.option("--from-offset", type=click.IntRange(0), default=None, help="First offset to read.")
@click.option(
    "--from-time",
    type=TIME,
    default=None,
    help="Start at the first record stamped at or after this time (ISO 8601, UTC unless it"
    " says otherwise, or epoch ms), found with the broker's time index.",
)
@click.option(
    "--to-offset",
    type=click.IntRange(0),
    default=None,
    help="Stop before this offset [default: the applier's stored offset: what it applied].",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Also rewrite rows whose (epoch, seq) equals the event's but whose content differs"
    " (damaged by hand).",
)
@click.option(
    "--rebuild",
    is_flag=True,
    help="Replace the DC's rows of the shard with what every copy of its topic holds, from"
    " offset 0; refused when a copy no longer starts at 0.",
)
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@click.option("--yes", is_flag=True, help="Confirm: write the replica's rows.")
@topology_option
@format_option
@timeout_option
def replay(
    dc: str,
    shard: int,
    source: str | None,
    from_offset: int | None,
    from_time: int | None,
    to_offset: int | None,
    repair: bool,
    rebuild: bool,
    dry_run: bool,
    yes: bool,
    topology_file: Path,
    fmt: str,
    timeout_s: float,
) -> None:
    """Re-apply a shard's events from an offset or a time into a replica DC's rows, through
    the applier's decoding, fence and row guard, while the applier keeps running. Never moves
    the applier's offsets. A summary tells how many events were read, applied, unchanged
    (the replica had them or newer), fenced, and refused (dead-lettered when first read)."""
    _check_usage(rebuild, source, from_offset, from_time, to_offset, dry_run, yes)
    topology = load_topology(topology_file)
    site = topology.dc(dc)
    if not 0 <= shard < topology.shard_count:
        raise PipelineError(
            f"no shard {shard}: the topology has shards 0 to {topology.shard_count - 1}"
        )
    conn = database(site, timeout_s)
    try:
        job = ShardReplay(conn, dc, shard, repair=repair or rebuild, dry_run=dry_run)
        started = time.monotonic()
        if rebuild:
            spans = _rebuild_spans(topology, site, conn, shard, timeout_s)
        else:
            spans = [
                _span(
                    topology,
                    site,
                    conn,
                    shard,
                    source,
                    from_offset,
                    from_time,
                    to_offset,
                    timeout_s,
                )
            ]
        counts = _run(job, site, spans, timeout_s)
        if rebuild:
            stored = {topic: stop for topic, _, stop in spans}
            counts.add(job.sweep(lambda t, a, b: _batches(site, t, a, b, timeout_s), stored))
        elapsed = time.monotonic() - started
    finally:
        conn.close()
    _report(fmt, dc, shard, spans, counts, elapsed, repair, rebuild, dry_run)


def _check_usage(
    rebuild: bool,
    source: str | None,
    from_offset: int | None,
    from_time: int | None,
    to_offset: int | None,
    dry_run: bool,
    yes: bool,
) -> None:
    if dry_run and yes:
        raise click.UsageError("--dry-run changes nothing and --yes confirms changes: give one")
    if not dry_run and not yes:
        raise click.UsageError(
            "a replay writes the replica's rows: add --yes to go on, or --dry-run to see what it"
            " would change"
        )
    if rebuild:
        if (
            source is not None
            or from_offset is not None
            or from_time is not None
            or to_offset is not None
        ):
            raise click.UsageError(
                "--rebuild reads every copy of the shard's topic from offset 0: it takes no"
                " --source, --from-offset, --from-time or --to-offset"
            )
    elif (from_offset is None) == (from_time is None):
        raise click.UsageError("give one of --from-offset N or --from-time T (or --rebuild)")


def _span(
    topology: Topology,
    site: DataCenter,
    conn: psycopg2.extensions.connection,
    shard: int,
    source: str | None,
    from_offset: int | None,
    from_time: int | None,
    to_offset: int | None,
    timeout_s: float,
) -> tuple[str, int, int]:
    """The topic and offsets ``[start, stop)`` to replay, checked against the topic's range
    and the applier's stored offset."""
    if source is None:
        with conn:
            source = read_ownership(conn)[shard].owner_dc
        if source == site.name:
            raise PipelineError(
                f"{site.name} owns shard {shard}: its rows are the owner's; give --source to"
                " name a copy anyway"
            )
    topology.dc(source)
    topic = topic_of(topology, site.name, shard, source, None, shard_topics(site, timeout_s))
    span = offset_ranges(site, [topic], timeout_s)[topic]
    stored = applied_offsets(conn).get(topic, 0)
    start = _start(site, topic, span, from_offset, from_time, timeout_s)
    stop = stored if to_offset is None else to_offset
    if to_offset is not None:
        span.check(topic, to_offset)
        if to_offset > stored:
            raise PipelineError(
                f"--to-offset {to_offset} is past what {site.name}'s applier applied of {topic}"
                f" (its next offset is {stored}): a replay covers applied events only"
            )
    if start > stop:
        raise PipelineError(
            f"nothing to replay: {topic} from offset {start} is past the end {stop}"
            + (" (the applier's next offset)" if to_offset is None else "")
        )
    return topic, start, stop


def _start(
    site: DataCenter,
    topic: str,
    span: OffsetRange,
    from_offset: int | None,
    from_time: int | None,
    timeout_s: float,
) -> int:
    if from_offset is not None:
        span.check(topic, from_offset)
        return from_offset
    assert from_time is not None
    return offset_for_time(site, topic, from_time, span, timeout_s)


def _rebuild_spans(
    topology: Topology,
    site: DataCenter,
    conn: psycopg2.extensions.connection,
    shard: int,
    timeout_s: float,
) -> list[tuple[str, int, int]]:
    """Every copy of the shard's topic in the DC's Kafka, from 0 to the applier's stored
    offset; refused with the reason when the DC owns or owned the shard, or when a copy no
    longer starts at offset 0."""
    refusal = rebuild_refusal(conn, site.name, shard)
    if refusal is not None:
        raise PipelineError(f"cannot rebuild: {refusal}")
    existing = set(shard_topics(site, timeout_s))
    copies = [
        t for dc in topology.data_dcs if (t := mirrored(dc.name, shard_topic(shard))) in existing
    ]
    if not copies:
        raise PipelineError(f"cannot rebuild: {site.name}'s Kafka holds no copy of shard {shard}")
    ranges = offset_ranges(site, copies, timeout_s)
    for topic, span in ranges.items():
        if span.low > 0:
            raise PipelineError(
                f"cannot rebuild: {topic} no longer starts at offset 0 of the shard's history:"
                f" retention deleted offsets 0 to {span.low - 1}, so their rows cannot be"
                " rebuilt"
            )
    stored = applied_offsets(conn)
    return [(t, 0, stored.get(t, 0)) for t in copies]


def _batches(
    site: DataCenter, topic: str, start: int, stop: int, timeout_s: float
) -> Iterator[list[Message]]:
    """Records ``[start, stop)`` of ``topic`` in batches of the applier's size."""
    batch: list[Message] = []
    size = 0
    for msg in read_range(site, topic, start, stop, timeout_s):
        batch.append(msg)
        size += len(msg.value() or b"")
        if len(batch) >= _BATCH_RECORDS or size >= _BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _run(
    job: ShardReplay, site: DataCenter, spans: Sequence[tuple[str, int, int]], timeout_s: float
) -> ReplayCounts:
    counts = ReplayCounts()
    with progress("replay", sum(stop - start for _, start, stop in spans)) as bar:
        for topic, start, stop in spans:
            for batch in _batches(site, topic, start, stop, timeout_s):
                counts.add(job.apply(batch))
                bar.advance(bar.task_ids[0], len(batch))
    return counts


def _report(
    fmt: str,
    dc: str,
    shard: int,
    spans: Sequence[tuple[str, int, int]],
    counts: ReplayCounts,
    elapsed: float,
    repair: bool,
    rebuild: bool,
    dry_run: bool,
) -> None:
    mode = "rebuild" if rebuild else "repair" if repair else "replay"
    rate = counts.read / elapsed if elapsed > 0 else 0.0
    if fmt == "json":
        click.echo(
            json_line(
                {
                    "dc": dc,
                    "shard": shard,
                    "mode": mode,
                    "dry_run": dry_run,
                    "topics": [{"topic": t, "from": a, "to": b} for t, a, b in spans],
                    **asdict(counts),
                    "seconds": round(elapsed, 3),
                    "records_per_s": round(rate, 1),
                }
            )
        )
        return
    ranges = ", ".join(f"{t} [{a}, {b})" for t, a, b in spans)
    click.echo(
        f"{mode} of shard {shard} into {dc}: {ranges}"
        + (" (dry run: nothing changed)" if dry_run else "")
    )
    headers = ["READ", "APPLIED", "UNCHANGED", "FENCED", "AHEAD", "REFUSED"]
    row: list[object] = [
        counts.read,
        counts.applied,
        counts.unchanged,
        counts.fenced,
        counts.ahead,
        counts.refused,
    ]
    if rebuild:
        headers.append("REMOVED")
        row.append(counts.removed)
    click.echo(
        table([*headers, "SECONDS", "RECORDS/S"], [[*row, f"{elapsed:.2f}", f"{rate:,.0f}"]])
    )
