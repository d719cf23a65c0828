"""``coopr-pipeline topics``: the shard topics of every DC with their offsets and lag
(``list``), and their records decoded (``show``, ``tail``).

A record that does not decode is shown as such (the codec's reason, its size in bytes) and
the command goes on. Filters (``--type``, ``--cluster``) never hide such a record: nothing
tells what it holds. ``show`` reads up to the end it found when it started; ``tail`` follows
new records until Ctrl-C or ``--count`` records were shown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from confluent_kafka import Message

from cli.lag import Behind, behind
from cli.lookup import (
    TIME,
    OffsetRange,
    applied_offsets,
    database,
    iso_time,
    offset_for_time,
    offset_ranges,
    read_range,
    shard_topics,
    topic_names,
    topic_of,
)
from cli.options import format_option, timeout_option, topology_option
from cli.render import json_line, table
from pipeline.codec import decode_record
from pipeline.errors import CodecError, PipelineError, first_line
from pipeline.events import EVENT_TYPES
from pipeline.topics import SHARD_PREFIX, parse_mirrored_shard
from pipeline.topology import DataCenter, Topology, load_topology

if TYPE_CHECKING:
    from pipeline.ownership import ShardOwner

__all__ = ["Selection", "TopicRow", "shown", "shown_records", "topics"]

#: Rows per table of ``topics show``: each page is a table of its own, with its header.
_PAGE = 1000

_SUMMARY = ["OFFSET", "TIME", "TYPE", "SHARD", "EPOCH", "SEQ", "CLUSTER", "JOB", "WHAT"]


@click.group()
def topics() -> None:
    """Shard topics: offsets and lag per DC, and their records decoded."""


# -- topics list ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicRow:
    """A shard topic in DC ``dc``: local (``source_dc`` is ``dc``) or a mirrored copy. Owner
    and epoch as ``dc``'s database has them. For copies, ``applied`` is the next offset its
    applier reads (stored in Postgres, else the topic's start: ``applied_stored`` false),
    ``lag_records`` the end minus it, ``lag_s`` the oldest unapplied record's age; None for
    local topics, which no applier of ``dc`` reads."""

    dc: str
    topic: str
    source_dc: str
    shard: int
    owner_dc: str | None
    epoch: int | None
    start: int
    end: int
    applied: int | None
    applied_stored: bool | None
    lag_records: int | None
    lag_s: float | None


def _dc_rows(site: DataCenter, timeout_s: float) -> list[TopicRow]:
    from pipeline.ownership import read_ownership

    if site.witness:
        raise PipelineError(f"{site.name} is a witness: it holds no shard topics")
    names = shard_topics(site, timeout_s)
    spans = offset_ranges(site, names, timeout_s)
    conn = database(site, timeout_s)
    try:
        with conn:
            owners = read_ownership(conn)
        stored = applied_offsets(conn)
    finally:
        conn.close()
    copies = {t: spans[t] for t in names if not t.startswith(SHARD_PREFIX)}
    lags = behind(site, copies, stored, timeout_s)
    return [_topic_row(site.name, t, spans[t], owners, lags.get(t)) for t in names]


def _topic_row(
    dc: str, topic: str, span: OffsetRange, owners: Mapping[int, ShardOwner], lag: Behind | None
) -> TopicRow:
    if topic.startswith(SHARD_PREFIX):
        source, shard = dc, int(topic[len(SHARD_PREFIX) :])
    else:
        copy = parse_mirrored_shard(topic)
        source, shard = copy.source_dc, copy.shard
    owner = owners.get(shard)
    return TopicRow(
        dc=dc,
        topic=topic,
        source_dc=source,
        shard=shard,
        owner_dc=owner.owner_dc if owner else None,
        epoch=owner.epoch if owner else None,
        start=span.low,
        end=span.high,
        applied=lag.applied if lag else None,
        applied_stored=lag.stored if lag else None,
        lag_records=lag.records if lag else None,
        lag_s=round(lag.seconds, 3) if lag else None,
    )


def _list_table(rows: list[TopicRow]) -> str:
    def dash(value: object) -> object:
        return "-" if value is None else value

    return table(
        [
            "DC",
            "TOPIC",
            "SOURCE",
            "SHARD",
            "OWNER",
            "EPOCH",
            "START",
            "END",
            "APPLIED",
            "LAG",
            "LAG_S",
        ],
        [
            [
                r.dc,
                r.topic,
                r.source_dc,
                r.shard,
                dash(r.owner_dc),
                dash(r.epoch),
                r.start,
                r.end,
                "-"
                if r.applied is None
                else f"{r.applied}{'' if r.applied_stored else ' (start)'}",
                dash(r.lag_records),
                "-" if r.lag_s is None else f"{r.lag_s:.1f}",
            ]
            for r in rows
        ],
    )


@topics.command("list")
@click.option("--dc", default=None, help="Only this DC [default: every data DC].")
@topology_option
@format_option
@timeout_option
@click.pass_context
def topics_list(
    ctx: click.Context, dc: str | None, topology_file: Path, fmt: str, timeout_s: float
) -> None:
    """Every shard topic and mirrored copy per DC: source, shard, owner and epoch, offsets,
    and for copies the offset applied (from the DC's Postgres) and the lag."""
    topology = load_topology(topology_file)
    sites = [topology.dc(dc)] if dc else list(topology.data_dcs)
    rows: list[TopicRow] = []
    failed = False
    for site in sites:
        try:
            rows += _dc_rows(site, timeout_s)
        except PipelineError as e:
            if dc:
                raise
            click.echo(f"{site.name}: not listed: {e}", err=True)
            failed = True
    if fmt == "json":
        for r in rows:
            click.echo(json_line(asdict(r)))
    else:
        click.echo(_list_table(rows))
    if failed:
        ctx.exit(1)


# -- decoded records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """Which decoded records to show: of one record type, of one cluster. A record that does
    not decode is always shown."""

    record_type: str | None = None
    cluster: str | None = None

    def admits(self, record: Mapping[str, Any]) -> bool:
        event = record["event"]
        if event is None:
            return True
        if self.record_type is not None and record["type"] != self.record_type:
            return False
        return self.cluster is None or _cluster_of(record["type"], event) == self.cluster


def _cluster_of(record_type: str, event: Mapping[str, Any]) -> str | None:
    if record_type == "OperationCompleted":
        return str(event["cluster"]["id"])
    if record_type == "RestartCheckpoint":
        return str(event["job"]["cluster_id"])
    return None


def _text(data: bytes | str | None) -> str | None:
    if data is None or isinstance(data, str):
        return data
    return data.decode("utf-8", "replace")


def _headers(
    raw: Mapping[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None,
) -> dict[str, str | None]:
    # A consumed record's headers come as a list of pairs; the type allows a dict too.
    pairs = raw.items() if isinstance(raw, Mapping) else raw or ()
    return {k: _text(v) for k, v in pairs}


def shown(msg: Message) -> dict[str, Any]:
    """A record as ``topics show --format json`` gives it: where it is, its timestamp (ISO
    and ms), key and headers as text, and the decoded record with its type (the latest
    version of its schema, whichever version wrote it); or, for bytes that do not decode,
    ``undecodable`` with the codec's reason, its error class and the value's size in bytes."""
    value = msg.value()
    stamp = msg.timestamp()[1]
    record: dict[str, Any] = {
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "timestamp": iso_time(stamp) if stamp >= 0 else None,
        "timestamp_ms": stamp if stamp >= 0 else None,
        "key": _text(msg.key()),
        "headers": _headers(msg.headers()),
        "type": None,
        "event": None,
        "undecodable": None,
    }
    try:
        if value is None:
            raise CodecError("the record has no value")
        name, event = decode_record(value)
        record["type"], record["event"] = name, event
    except CodecError as e:
        record["undecodable"] = {
            "reason": first_line(e),
            "error": type(e).__name__,
            "bytes": len(value or b""),
        }
    return record


def shown_records(
    site: DataCenter,
    topic: str,
    start: int,
    stop: int | None,
    timeout_s: float,
    selection: Selection = Selection(),
    *,
    follow: threading.Event | None = None,
) -> Generator[dict[str, Any], None, None]:
    """The records of ``topic`` [0] from ``start`` to ``stop`` (exclusive; following new
    ones with ``follow``, as :func:`cli.lookup.read_range`), decoded (:func:`shown`), those
    ``selection`` admits."""
    for msg in read_range(site, topic, start, stop, timeout_s, follow=follow):
        record = shown(msg)
        if selection.admits(record):
            yield record


def _what(record_type: str, e: Mapping[str, Any]) -> str:
    """What happened, in a few words."""
    if record_type == "OperationCompleted":
        job, cluster = e["job"], e["cluster"]
        gone = ", deleted" if e["cluster_deleted"] else ""
        return f"{job['action']} {job['status']}, cluster {cluster['status']}{gone}"
    if record_type == "RestartCheckpoint":
        job = e["job"]
        return (
            f"{job['action']} stage {job['current_stage']} {job['status']}, {len(e['tasks'])} tasks"
        )
    if record_type == "Heartbeat":
        fenced = ", fenced" if e.get("fenced") else ""
        return f"{e['dc']} hears {','.join(e['alive_dcs']) or 'none'}{fenced}"
    if record_type == "OwnershipChange":
        return (
            f"shard {e['shard']} {e['from_dc']}->{e['to_dc']} epoch {e['from_epoch']}->"
            f"{e['epoch']} ({e['reason']})"
        )
    return "-"


def _summary(record: Mapping[str, Any]) -> list[object]:
    """A record's cells under :data:`_SUMMARY`."""
    head = [record["offset"], record["timestamp"] or "-"]
    event, kind = record["event"], record["type"]
    if event is None:
        bad = record["undecodable"]
        return [
            *head,
            "UNDECODABLE",
            "-",
            "-",
            "-",
            "-",
            "-",
            f"{bad['reason']} ({bad['bytes']} bytes)",
        ]
    job = event.get("job") or {}
    return [
        *head,
        kind,
        event.get("shard", "-"),
        event.get("epoch", "-"),
        event.get("seq", "-"),
        _cluster_of(kind, event) or "-",
        job.get("id", "-"),
        _what(kind, event),
    ]


def _line(record: Mapping[str, Any]) -> str:
    """One record as a line of its own (``tail``: a table cannot wait for the rows to come)."""
    cells = _summary(record)
    labelled = [
        f"{label.lower()} {value}"
        for label, value in zip(_SUMMARY[3:8], cells[3:8], strict=True)
        if value != "-"
    ]
    return "  ".join(
        [f"offset {cells[0]}", str(cells[1]), str(cells[2]), " ".join(labelled), str(cells[8])]
    )


# -- topics show / tail ------------------------------------------------------------------------


def _selectors(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``show`` and ``tail`` share: which topic, where to start, what to show."""
    options = [
        click.option("--dc", required=True, help="The DC whose Kafka to read."),
        click.option("--shard", type=click.IntRange(0), default=None, help="The shard."),
        click.option(
            "--source",
            default=None,
            help="With --shard: the copy mirrored from this DC [default: the local topic].",
        ),
        click.option("--topic", default=None, help="Any topic of the DC, by name."),
        click.option("--offset", type=click.IntRange(0), default=None, help="Start here."),
        click.option(
            "--from-time",
            type=TIME,
            default=None,
            help="Start at the first record stamped at or after this time: ISO-8601 (UTC when"
            " no zone is given) or milliseconds since the epoch.",
        ),
        click.option(
            "--last", type=click.IntRange(1), default=None, help="Start K records before the end."
        ),
        click.option(
            "--count", type=click.IntRange(1), default=None, help="Show at most K records."
        ),
        click.option("--cluster", default=None, help="Only events of this cluster."),
        click.option(
            "--type",
            "record_type",
            type=click.Choice(sorted(EVENT_TYPES)),
            default=None,
            help="Only records of this type.",
        ),
        topology_option,
        format_option,
        timeout_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


@dataclass(frozen=True, slots=True)
class _Where:
    """The topic a command reads, in which DC, from which offset, and what it shows."""

    site: DataCenter
    topic: str
    span: OffsetRange
    start: int
    selection: Selection


def _where(topology: Topology, args: Mapping[str, Any], *, tail: bool) -> _Where:
    """Resolve the selectors: the DC, the topic (named or by shard), the start offset
    (``--offset``, ``--from-time``, ``--last``, else the beginning or, for tail, the end)."""
    starts = [k for k in ("offset", "from_time", "last") if args[k] is not None]
    if len(starts) > 1:
        raise click.UsageError(
            " and ".join(f"--{k.replace('_', '-')}" for k in starts) + " conflict: give one"
        )
    if args["topic"] is not None and (args["shard"] is not None or args["source"] is not None):
        raise click.UsageError("give --topic T, or --shard S (with --source DC), not both")
    if args["source"] is not None and args["shard"] is None:
        raise click.UsageError("--source needs --shard")
    site, timeout_s = topology.dc(args["dc"]), args["timeout_s"]
    topic = topic_of(
        topology,
        site.name,
        args["shard"],
        args["source"],
        args["topic"],
        topic_names(site, timeout_s),
    )
    span = offset_ranges(site, [topic], timeout_s)[topic]
    if args["offset"] is not None:
        span.check(topic, args["offset"])
        start = args["offset"]
    elif args["from_time"] is not None:
        start = offset_for_time(site, topic, args["from_time"], span, timeout_s)
    elif args["last"] is not None:
        start = max(span.low, span.high - args["last"])
    else:
        start = span.high if tail else span.low
    return _Where(site, topic, span, start, Selection(args["record_type"], args["cluster"]))


@contextlib.contextmanager
def _quiet_pipe() -> Iterator[None]:
    """A reader that went away (``| head``) ends the command quietly, as it does ``cat``."""
    try:
        yield
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


@topics.command("show")
@_selectors
def topics_show(**args: Any) -> None:
    """A topic's records decoded, from the beginning (or --offset, --from-time, --last) to
    the end it finds: a summary line per record, or in JSON each whole decoded record."""
    topology = load_topology(args["topology_file"])
    where = _where(topology, args, tail=False)
    records = shown_records(
        where.site, where.topic, where.start, where.span.high, args["timeout_s"], where.selection
    )
    shown_count = 0
    with contextlib.closing(records), _quiet_pipe():
        page: list[list[object]] = []
        for record in records:
            if args["fmt"] == "json":
                sys.stdout.write(json_line(record) + "\n")
            else:
                page.append(_summary(record))
                if len(page) == _PAGE:
                    click.echo(table(_SUMMARY, page))
                    page = []
            shown_count += 1
            if shown_count == args["count"]:
                break
        if page:
            click.echo(table(_SUMMARY, page))
        sys.stdout.flush()
    if shown_count == 0:
        click.echo(
            f"no records to show in {where.topic} from offset {where.start}"
            f" (it holds {where.span.low} to {where.span.high - 1})",
            err=True,
        )


@topics.command("tail")
@_selectors
def topics_tail(**args: Any) -> None:
    """Follow a topic's new records, decoded, from its end (or --offset, --from-time,
    --last) until Ctrl-C, or until --count records were shown."""
    topology = load_topology(args["topology_file"])
    where = _where(topology, args, tail=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    click.echo(
        f"following {where.topic} in {where.site.name} from offset {where.start} (Ctrl-C to stop)",
        err=True,
    )
    records = shown_records(
        where.site, where.topic, where.start, None, args["timeout_s"], where.selection, follow=stop
    )
    shown_count = 0
    with contextlib.closing(records), _quiet_pipe():
        for record in records:
            click.echo(json_line(record) if args["fmt"] == "json" else _line(record))
            shown_count += 1
            if shown_count == args["count"]:
                break
