"""``coopr-pipeline dlq``: the dead letters of each DC (records its applier refused, kept in
its own ``coopr.dlq``), one of them whole, and their redrive after a fix
(:mod:`consumer.redrive`).

A dead letter's ID is its offset in its DC's ``coopr.dlq`` (partition 0), so an ID means
something only with its DC.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NamedTuple

import click
import psycopg2
import psycopg2.extensions

from cli.lookup import (
    database,
    iso_time,
    offset_ranges,
    read_range,
)
from cli.options import format_option, timeout_option, topology_option
from cli.render import json_line, progress, table, to_json
from consumer.redrive import (
    DeadLetter,
    Outcome,
    Redrive,
    Redriven,
    redrive,
    redriven,
    unshipped,
)
from pipeline.errors import (
    CodecError,
    PipelineError,
    TopicNameError,
    UnreachableError,
    first_line,
)
from pipeline.topics import DLQ_TOPIC
from pipeline.topology import DataCenter, Topology, load_topology

__all__ = ["dlq"]

# Table cells of reasons and details: the whole text is in the JSON form.
_CELL = 72
# PostgreSQL's codes for a statement cancelled by statement_timeout and for lock_timeout.
_TIMED_OUT = frozenset({"57014", "55P03"})


class _Found(NamedTuple):
    """A DC's dead letters, what redrives recorded of them by ID, and how many refused
    records wait in its ``dead_letters`` table to be shipped."""

    site: DataCenter
    letters: list[DeadLetter]
    done: dict[int, Redriven]
    waiting: int


@click.group()
def dlq() -> None:
    """Dead letters: records a DC's applier refused (undecodable, an unknown schema, not a
    shard event, refused by the database), kept in the DC's own coopr.dlq. List them, show
    one, redrive them after a fix. A dead letter's ID is its offset in its DC's coopr.dlq
    (partition 0)."""


@dlq.command("list")
@click.option("--dc", default=None, help="Only this DC [default: every data DC].")
@topology_option
@format_option
@timeout_option
def dlq_list(dc: str | None, topology_file: Path, fmt: str, timeout_s: float) -> None:
    """Every dead letter of each DC: ID (its offset in the DC's coopr.dlq, partition 0), DC,
    reason, error class, source topic, partition and offset, age (since it was shipped to
    coopr.dlq), and whether, when and how it was redriven; then how many refused records
    still wait in the DC's dead_letters table to be shipped. Without --dc, a DC that does not
    answer is skipped and named at the end (exit 1)."""
    topology = load_topology(topology_file)
    sites = [_site(topology, dc)] if dc else list(topology.data_dcs)
    failed: list[str] = []
    found: list[_Found] = []
    for site in sites:
        try:
            found.append(_letters_of(site, timeout_s))
        except UnreachableError as e:
            if dc:
                raise
            failed.append(str(e))
    if fmt == "json":
        _list_json(found)
    else:
        _list_table(found)
    if failed:
        raise PipelineError("not every DC answered: " + "; ".join(failed))


@dlq.command("show")
@click.argument("letter_id", metavar="ID", type=click.IntRange(min=0))
@click.option("--dc", required=True, help="The DC whose coopr.dlq holds the dead letter.")
@topology_option
@format_option
@timeout_option
def dlq_show(letter_id: int, dc: str, topology_file: Path, fmt: str, timeout_s: float) -> None:
    """One dead letter whole: its headers, key, value length, whether a redrive recorded it,
    and what decoding it gives now, with the schemas this command loads ($COOPR_SCHEMA_DIR,
    else the shipped ones): the decoded record, or why it still fails. ID is the dead
    letter's offset in DC's coopr.dlq (partition 0)."""
    site = _site(load_topology(topology_file), dc)
    [letter] = _read_letters(site, [letter_id], timeout_s)
    with _database(site, timeout_s) as conn:
        done = _redriven_by_id(conn, [letter]).get(letter.id)
    doc = _show_doc(site.name, letter, done)
    if fmt == "json":
        click.echo(to_json(doc))
        return
    headers: list[list[object]] = [[f"header {k}", v] for k, v in letter.headers.items()]
    rows: list[list[object]] = [
        ["ID", letter.id],
        ["DC", site.name],
        ["SHIPPED", f"{doc['timestamp']} ({_ago(doc['age_s'])} ago)"],
        *headers,
        ["KEY", "-" if doc["key"] is None else doc["key"]],
        ["VALUE", f"{doc['value_bytes']} bytes"],
        ["DECODES NOW", _decodes_now(doc)],
        ["REDRIVEN", _redriven_cell(letter, done)],
    ]
    click.echo(table(["FIELD", "VALUE"], rows))
    if doc["decoded"] is not None:
        click.echo()
        click.echo(to_json(doc["decoded"]["record"]))


@dlq.command("redrive")
@click.argument("letter_ids", metavar="[ID]...", nargs=-1, type=click.IntRange(min=0))
@click.option("--dc", required=True, help="The DC whose dead letters to redrive.")
@click.option("--all", "every", is_flag=True, help="Every dead letter in the DC's coopr.dlq.")
@click.option(
    "--dry-run", is_flag=True, help="Run the same transaction, report, roll it back: no change."
)
@click.option("--yes", is_flag=True, help="Apply: redriving writes into the DC's database.")
@topology_option
@format_option
@timeout_option
def dlq_redrive(
    letter_ids: tuple[int, ...],
    dc: str,
    every: bool,
    dry_run: bool,
    yes: bool,
    topology_file: Path,
    fmt: str,
    timeout_s: float,
) -> None:
    """Send dead letters (by ID, or --all) back through the applier's decoding, sequencing and
    guarded upserts into DC's database, after a fix such as a newly shipped schema version
    (read from $COOPR_SCHEMA_DIR when set, else the shipped ones). Each letter's outcome:
    applied, duplicate (the replica had it), fenced (an older epoch beyond a claim's cut),
    waits (a newer epoch whose claim is not seen here yet: redrive it later), still refused
    (with the reason: redrive it after another fix), already redriven (by an earlier redrive;
    applied once, never twice). Applied, duplicate and fenced are recorded with the apply, in
    one transaction per letter. A dead letter's ID is its offset in DC's coopr.dlq
    (partition 0). Needs --yes, or --dry-run to see what it would do and change nothing."""
    _check_redrive_usage(letter_ids, every, dry_run, yes)
    site = _site(load_topology(topology_file), dc)
    letters = _read_letters(site, None if every else letter_ids, timeout_s)
    counts: collections.Counter[Outcome] = collections.Counter()
    done: list[Redrive] = []
    with (
        _database(site, timeout_s) as conn,
        progress(f"redriving {site.name}'s dead letters", len(letters)) as bar,
    ):
        for result in redrive(conn, letters, dry_run=dry_run):
            counts[result.outcome] += 1
            bar.advance(bar.task_ids[0])
            if fmt == "json":
                click.echo(json_line(_redrive_json(site.name, result)))
            else:
                done.append(result)
    if fmt == "json":
        click.echo(json_line(_summary_json(site.name, len(letters), counts, dry_run)))
        return
    if done:
        click.echo(_redrive_table(done))
    click.echo(_summary_line(site.name, len(letters), counts, dry_run))


def _check_redrive_usage(letter_ids: Sequence[int], every: bool, dry_run: bool, yes: bool) -> None:
    if every and letter_ids:
        raise click.UsageError("give --all or the IDs of dead letters, not both")
    if not every and not letter_ids:
        raise click.UsageError("give the IDs of the dead letters to redrive, or --all")
    if dry_run and yes:
        raise click.UsageError(
            "--dry-run and --yes together: --dry-run changes nothing, --yes writes; give one"
        )
    if not dry_run and not yes:
        raise click.UsageError(
            "a redrive writes into the DC's database: add --yes to redrive, or --dry-run to"
            " see what it would do without changing anything"
        )


def _site(topology: Topology, dc: str) -> DataCenter:
    """The DC called ``dc``; an error for an unknown DC (naming the known ones) or a
    witness, which runs no applier and so has no dead letters."""
    site = topology.dc(dc)
    if site.witness:
        names = ", ".join(d.name for d in topology.data_dcs)
        raise PipelineError(
            f"{dc} is a witness: it runs no applier and has no dead letters; the data DCs"
            f" are {names}"
        )
    return site


def _read_letters(
    site: DataCenter, letter_ids: Sequence[int] | None, timeout_s: float
) -> list[DeadLetter]:
    """The dead letters ``letter_ids`` (every one when None) of ``site``'s coopr.dlq, in ID
    order; an error giving the range of IDs when one is not there."""
    span = offset_ranges(site, [DLQ_TOPIC], timeout_s)[DLQ_TOPIC]
    if letter_ids is None:
        start, stop, wanted = span.low, span.high, None
    else:
        wanted = set(letter_ids)
        outside = sorted(i for i in wanted if not span.low <= i < span.high)
        if outside:
            raise PipelineError(_not_there(site, outside, span.low, span.high))
        start, stop = min(wanted), max(wanted) + 1
    letters = [
        DeadLetter.from_message(msg)
        for msg in read_range(site, DLQ_TOPIC, start, stop, timeout_s)
        if wanted is None or msg.offset() in wanted
    ]
    # Retention may delete records between asking for the range and reading them.
    missing = sorted((wanted or set()) - {letter.id for letter in letters})
    if missing:
        raise PipelineError(_not_there(site, missing, span.low, span.high))
    return letters


def _not_there(site: DataCenter, letter_ids: Sequence[int], low: int, high: int) -> str:
    which = ", ".join(map(str, letter_ids))
    held = f"its IDs are {low} to {high - 1}" if high > low else "it holds no dead letters"
    return f"no dead letter {which} in {site.name}'s {DLQ_TOPIC}: {held}"


@contextmanager
def _database(site: DataCenter, timeout_s: float) -> Iterator[psycopg2.extensions.connection]:
    """A connection to ``site``'s database whose statements and lock waits give up after
    ``timeout_s``; its errors become one-line errors naming the DC."""
    conn = database(site, timeout_s)
    try:
        with conn.cursor() as cur:
            # Committed, so that they hold for the session, not this transaction only.
            ms = int(timeout_s * 1000)
            cur.execute("SET statement_timeout = %s; SET lock_timeout = %s", (ms, ms))
        conn.commit()
        yield conn
    except psycopg2.Error as e:
        if e.pgcode in _TIMED_OUT:
            raise UnreachableError(
                f"{site.name}'s database did not answer within {timeout_s:g} s: {first_line(e)}"
            ) from None
        raise PipelineError(f"{site.name}'s database failed: {first_line(e)}") from None
    finally:
        conn.close()


def _letters_of(site: DataCenter, timeout_s: float) -> _Found:
    letters = _read_letters(site, None, timeout_s)
    with _database(site, timeout_s) as conn:
        return _Found(site, letters, _redriven_by_id(conn, letters), unshipped(conn))


def _redriven_by_id(
    conn: psycopg2.extensions.connection, letters: Sequence[DeadLetter]
) -> dict[int, Redriven]:
    """What redrives recorded of each letter's source record, by letter ID (a record shipped
    twice shows on both of its letters)."""
    sources = {letter.id: letter.source for letter in letters}
    done = redriven(conn, [s for s in sources.values() if s is not None])
    return {i: done[s] for i, s in sources.items() if s is not None and s in done}


def _list_json(found: Sequence[_Found]) -> None:
    for site, letters, done, waiting in found:
        for letter in letters:
            click.echo(json_line(_letter_json(site.name, letter, done.get(letter.id))))
        click.echo(json_line({"kind": "unshipped", "dc": site.name, "count": waiting}))


def _list_table(found: Sequence[_Found]) -> None:
    rows = [
        [
            letter.id,
            site.name,
            _cell(letter.reason),
            letter.error or "-",
            *(("-", "-", "-") if letter.source is None else letter.source),
            _ago(_age_s(letter)),
            _redriven_cell(letter, done.get(letter.id)),
        ]
        for site, letters, done, _ in found
        for letter in letters
    ]
    if rows:
        headers = ["ID", "DC", "REASON", "ERROR", "SOURCE_TOPIC", "PARTITION", "OFFSET"]
        click.echo(table([*headers, "AGE", "REDRIVEN"], rows))
    else:
        click.echo("no dead letters")
    for site, _, _, waiting in found:
        click.echo(
            f"{site.name}: {waiting} refused record{'' if waiting == 1 else 's'} waiting in"
            f" dead_letters to be shipped to {DLQ_TOPIC}"
        )


def _letter_json(dc: str, letter: DeadLetter, done: Redriven | None) -> dict[str, Any]:
    source = letter.source
    return {
        "kind": "dead_letter",
        "id": letter.id,
        "dc": dc,
        "reason": letter.reason,
        "error": letter.error,
        "source_topic": None if source is None else source.topic,
        "source_partition": None if source is None else source.partition,
        "source_offset": None if source is None else source.offset,
        "source_dc": letter.source_dc or None,
        "timestamp": iso_time(letter.timestamp_ms),
        "age_s": round(_age_s(letter), 3),
        "redriven": None if done is None else _redriven_json(done),
    }


def _redriven_json(done: Redriven) -> dict[str, Any]:
    return {
        "at": done.at.isoformat(),
        "outcome": str(done.outcome),
        "letter": done.letter,
        "shard": done.position.shard,
        "epoch": done.position.epoch,
        "seq": done.position.seq,
    }


def _show_doc(dc: str, letter: DeadLetter, done: Redriven | None) -> dict[str, Any]:
    doc = _letter_json(dc, letter, done)
    doc.pop("kind")
    doc["headers"] = letter.headers
    doc["key"] = _text(letter.key)
    doc["value_bytes"] = None if letter.value is None else len(letter.value)
    try:
        event = letter.decode()
    except (CodecError, TopicNameError) as e:
        doc["decoded"] = None
        doc["still_refused"] = {"error": type(e).__name__, "reason": str(e)}
        return doc
    pos = event.position
    doc["decoded"] = {
        "record_name": event.record_name,
        "shard": pos.shard,
        "source_dc": pos.source_dc,
        "epoch": pos.epoch,
        "seq": pos.seq,
        "record": _plain(event.record),
    }
    doc["still_refused"] = None
    return doc


def _decodes_now(doc: dict[str, Any]) -> str:
    decoded = doc["decoded"]
    if decoded is None:
        refused = doc["still_refused"]
        return f"no: {refused['error']}: {refused['reason']}"
    return (
        f"yes: {decoded['record_name']} of shard {decoded['shard']} from"
        f" {decoded['source_dc']}, epoch {decoded['epoch']} seq {decoded['seq']}"
    )


def _redrive_json(dc: str, result: Redrive) -> dict[str, Any]:
    source, pos = result.letter.source, result.position
    return {
        "kind": "redrive",
        "id": result.letter.id,
        "dc": dc,
        "source_topic": None if source is None else source.topic,
        "source_partition": None if source is None else source.partition,
        "source_offset": None if source is None else source.offset,
        "outcome": str(result.outcome),
        "detail": result.detail,
        "error": result.error,
        "shard": None if pos is None else pos.shard,
        "epoch": None if pos is None else pos.epoch,
        "seq": None if pos is None else pos.seq,
        "redriven": None if result.earlier is None else _redriven_json(result.earlier),
    }


def _redrive_table(done: Sequence[Redrive]) -> str:
    rows = []
    for result in done:
        source, pos = result.letter.source, result.position
        rows.append(
            [
                result.letter.id,
                "-" if source is None else f"{source.topic}[{source.partition}]@{source.offset}",
                "-" if pos is None else f"shard {pos.shard} epoch {pos.epoch} seq {pos.seq}",
                str(result.outcome).replace("_", " "),
                _cell(result.detail),
            ]
        )
    return table(["ID", "SOURCE", "EVENT", "OUTCOME", "DETAIL"], rows)


def _summary_json(
    dc: str, letters: int, counts: collections.Counter[Outcome], dry_run: bool
) -> dict[str, Any]:
    return {
        "kind": "summary",
        "dc": dc,
        "dry_run": dry_run,
        "letters": letters,
        "outcomes": {str(o): counts[o] for o in Outcome},
    }


def _summary_line(
    dc: str, letters: int, counts: collections.Counter[Outcome], dry_run: bool
) -> str:
    parts = ", ".join(f"{str(o).replace('_', ' ')} {counts[o]}" for o in Outcome)
    line = f"{letters} dead letter{'' if letters == 1 else 's'} of {dc}: {parts}"
    return f"dry run, rolled back, nothing changed: {line}" if dry_run else line


def _redriven_cell(letter: DeadLetter, done: Redriven | None) -> str:
    if done is None:
        return "-"
    ago = _ago((datetime.now(UTC) - done.at).total_seconds())
    by = "" if done.letter == letter.id else f" (as dead letter {done.letter})"
    return f"{str(done.outcome).replace('_', ' ')} {ago} ago{by}"


def _age_s(letter: DeadLetter) -> float:
    """Seconds since the letter was shipped to coopr.dlq (its Kafka timestamp)."""
    return max(0.0, time.time() - letter.timestamp_ms / 1000)


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _cell(text: str) -> str:
    return text if len(text) <= _CELL else text[: _CELL - 3] + "..."


def _text(data: bytes | None) -> str | None:
    """Bytes as text when they are UTF-8, else as ``hex:...``."""
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return "hex:" + data.hex()


def _plain(value: Any) -> Any:
    """A decoded record in JSON's types: times as ISO-8601 text, bytes as :func:`_text`."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return _text(value)
    return value
