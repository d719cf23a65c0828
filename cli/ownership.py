"""``coopr-pipeline ownership``: who owns which shard, as one DC sees it, and the orphans a
failover left (``docs/ownership.md``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.options import format_option, topology_option
from cli.render import table, to_json
from pipeline.topology import DataCenter, Topology, load_topology

if TYPE_CHECKING:
    import psycopg2.extensions

    from controller.report import Orphan
    from pipeline.ownership import ShardOwner

__all__ = ["ownership"]


@click.group()
def ownership() -> None:
    """Shard ownership: owners, epochs, leases, claims; orphans of failovers."""


def _answering(
    topology: Topology, dc: str | None
) -> tuple[DataCenter, psycopg2.extensions.connection]:
    """The DC to ask (``dc``, else the first data DC whose database answers) and a
    connection to its database."""
    from pipeline.db import connect
    from pipeline.errors import UnreachableError

    candidates = [topology.dc(dc)] if dc else list(topology.data_dcs)
    errors = []
    for site in candidates:
        try:
            return site, connect(site.database)
        except UnreachableError as e:
            errors.append(str(e))
    raise UnreachableError("no DC's database answers: " + "; ".join(errors))


@ownership.command("show")
@click.option(
    "--dc", default=None, help="The DC whose view to show [default: the first that answers]."
)
@topology_option
@format_option
def ownership_show(dc: str | None, topology_file: Path, fmt: str) -> None:
    """Per shard: owner, epoch, writable, lease left, the claim's cut; per DC: heartbeat age,
    fenced, and which DCs do not hear it. Read from the chosen DC's own database and Kafka."""
    from controller.report import latest_heartbeats, liveness_rows, shard_states
    from pipeline.kafka_config import settings_for

    topology = load_topology(topology_file)
    site, conn = _answering(topology, dc)
    try:
        shards = shard_states(conn)
    finally:
        conn.close()
    heartbeats = latest_heartbeats(settings_for(site, "coopr-ownership"), topology, site.name)
    dcs = liveness_rows(topology, heartbeats)
    if fmt == "json":
        report = {
            "as_seen_by": site.name,
            "shards": [dataclasses.asdict(s) for s in shards],
            "dcs": [dataclasses.asdict(d) for d in dcs],
        }
        click.echo(to_json(report))
        return
    click.echo(f"as {site.name} sees it")
    click.echo(
        table(
            ["SHARD", "OWNER", "EPOCH", "WRITABLE", "LEASE_S", "LAST_SEQ", "CLAIM", "CUT"],
            [
                [
                    s.shard,
                    s.owner_dc,
                    s.epoch,
                    "yes" if s.writable else "no",
                    "endless" if s.lease_s is None else f"{s.lease_s:.1f}",
                    s.last_seq,
                    s.claim_reason or "-",
                    "-" if s.cut is None else f"{s.cut_epoch}:{s.cut}",
                ]
                for s in shards
            ],
        )
    )
    click.echo()
    click.echo(
        table(
            ["DC", "HEARTBEAT_AGE_S", "FENCED", "NOT_HEARD_BY"],
            [
                [
                    d.dc,
                    "never" if d.age_s is None else f"{d.age_s:.1f}",
                    "-" if d.fenced is None else ("yes" if d.fenced else "no"),
                    ",".join(d.suspected_by) or "-",
                ]
                for d in dcs
            ],
        )
    )


@ownership.command("orphans")
@click.option("--dc", default=None, help="Only this DC [default: every DC that answers].")
@topology_option
@format_option
def ownership_orphans(dc: str | None, topology_file: Path, fmt: str) -> None:
    """Events a DC committed for a shard it lost, beyond the cut its successor applied: never
    applied anywhere, kept in its outbox, listed here decoded."""
    from controller.report import orphans
    from pipeline.db import connect
    from pipeline.errors import UnreachableError

    topology = load_topology(topology_file)
    sites = [topology.dc(dc)] if dc else list(topology.data_dcs)
    found: list[tuple[str, Orphan]] = []
    for site in sites:
        try:
            conn = connect(site.database)
        except UnreachableError as e:
            if dc:
                raise
            click.echo(f"{site.name}: not checked: {e}", err=True)
            continue
        try:
            found += [(site.name, o) for o in orphans(conn)]
        finally:
            conn.close()
    if fmt == "json":
        for name, o in found:
            click.echo(json.dumps({"dc": name, **dataclasses.asdict(o)}, default=str))
        return
    if not found:
        click.echo("no orphans")
        return
    click.echo(
        table(
            [
                "DC",
                "SHARD",
                "EPOCH",
                "SEQ",
                "CUT",
                "TYPE",
                "CLUSTER",
                "JOB",
                "WOULD_HAVE",
                "PUBLISHED",
            ],
            [
                [
                    name,
                    o.shard,
                    o.epoch,
                    o.seq,
                    o.cut,
                    o.event_type,
                    o.cluster_id,
                    o.job_id or "-",
                    o.change,
                    "yes" if o.published else "no",
                ]
                for name, o in found
            ],
        )
    )


def _owner_view(site: DataCenter) -> dict[int, ShardOwner]:
    """Every shard's owner as ``site``'s database has it."""
    from pipeline.db import connect
    from pipeline.ownership import read_ownership

    conn = connect(site.database)
    try:
        with conn:
            return read_ownership(conn)
    finally:
        conn.close()


def _request(
    site: DataCenter, kind: str, from_dc: str, shard: int | None, to_dc: str | None
) -> int:
    from pipeline.db import fetch_all

    rows = fetch_all(
        site.database,
        "INSERT INTO ownership_requests (kind, shard, from_dc, to_dc) VALUES (%s, %s, %s, %s)"
        " RETURNING id",
        (kind, shard, from_dc, to_dc),
    )
    return int(rows[0][0])


def _outcome(site: DataCenter, request: int) -> str | None:
    from pipeline.db import fetch_all

    rows = fetch_all(
        site.database, "SELECT outcome FROM ownership_requests WHERE id = %s", (request,)
    )
    return rows[0][0] if rows else None


def _wait_for_owners(
    topology: Topology,
    wanted: dict[int, str],
    requests: list[tuple[DataCenter, int]],
    timeout_s: float,
) -> float:
    """Wait until each shard of ``wanted`` is writable at its new owner, as that owner's
    database says; seconds taken. A refused request, or the timeout, is an error."""
    import time

    from pipeline.errors import PipelineError, UnreachableError

    start = time.monotonic()
    while True:
        pending = dict(wanted)
        for owner in sorted(set(wanted.values())):
            try:
                view = _owner_view(topology.dc(owner))
            except UnreachableError:
                continue
            for shard, target in wanted.items():
                held = view[shard]
                if target == owner == held.owner_dc and held.writable and held.leased:
                    pending.pop(shard, None)
        if not pending:
            return time.monotonic() - start
        refused = [
            f"{site.name}: {outcome}"
            for site, request in requests
            if (outcome := _outcome(site, request)) is not None and outcome.startswith("refused")
        ]
        if refused and len(refused) == len(requests):
            raise PipelineError("; ".join(refused))
        if time.monotonic() - start > timeout_s:
            raise PipelineError(
                f"not done within {timeout_s:g} s: shards {sorted(pending)} are not writable"
                " at their new owners yet (see `ownership show`)"
            )
        time.sleep(0.1)


_TIMEOUT = click.option(
    "--timeout",
    type=click.FloatRange(1, 3600),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the shards to be writable at their new owners.",
)


@ownership.command("move")
@click.option("--shard", type=click.IntRange(0), default=None, help="The shard to move.")
@click.option("--to", "to_dc", default=None, help="The DC to move it to (one of its replicas).")
@click.option(
    "--all-from",
    "all_from",
    default=None,
    help="Move every shard this DC owns, each to its first replica.",
)
@topology_option
@_TIMEOUT
def ownership_move(
    shard: int | None, to_dc: str | None, all_from: str | None, topology_file: Path, timeout: float
) -> None:
    """Hand shards over without losing an event: the owner goes read-only, its relay
    flushes, the target applies up to the last event and takes over (docs/ownership.md)."""
    from controller.protocol import claimant
    from pipeline.ownership import read_ownership

    topology = load_topology(topology_file)
    if (shard is None) == (all_from is None) or (shard is not None and to_dc is None):
        raise click.UsageError("give --shard S --to DC, or --all-from DC")
    site, conn = _answering(topology, None)
    try:
        with conn:
            view = read_ownership(conn)
    finally:
        conn.close()
    if all_from is not None:
        topology.dc(all_from)
        moves = {
            s: target
            for s, o in sorted(view.items())
            if o.owner_dc == all_from
            and (target := claimant(topology, s, all_from, ())) is not None
        }
        if not moves:
            click.echo(f"{all_from} owns no shard, as {site.name} sees it")
            return
    else:
        assert shard is not None and to_dc is not None
        if shard not in view:
            raise click.UsageError(f"no shard {shard}: the topology has 0..{len(view) - 1}")
        topology.dc(to_dc)
        moves = {shard: to_dc}
    requests = []
    for s, target in moves.items():
        owner = topology.dc(view[s].owner_dc)
        requests.append((owner, _request(owner, "move", owner.name, s, target)))
    took = _wait_for_owners(topology, moves, requests, timeout)
    for s, target in moves.items():
        click.echo(f"shard {s}: {view[s].owner_dc} -> {target}")
    click.echo(f"moved {len(moves)} shards in {took:.2f} s")


@ownership.command("failover")
@click.option("--from", "from_dc", required=True, help="The DC whose shards to take over.")
@click.option("--yes", is_flag=True, help="Confirm: the operator decides that DC is gone.")
@topology_option
@_TIMEOUT
def ownership_failover(from_dc: str, yes: bool, topology_file: Path, timeout: float) -> None:
    """The operator's failover away from a DC where no majority can decide without it (two data
    DCs, no witness). Refused without --yes, and by the controllers while a majority of DCs
    still hears that DC. Events it had not replicated become orphans."""
    from controller.protocol import claimant
    from pipeline.errors import UnreachableError

    topology = load_topology(topology_file)
    topology.dc(from_dc)
    if not yes:
        raise click.UsageError(
            f"failing over away from {from_dc} makes its unreplicated events orphans:"
            " add --yes to confirm"
        )
    others = [dc for dc in topology.data_dcs if dc.name != from_dc]
    answering = []
    for site in others:
        try:
            answering.append((site, _owner_view(site)))
        except UnreachableError as e:
            click.echo(f"{site.name}: not asked: {e}", err=True)
    if not answering:
        raise UnreachableError("no other DC's database answers")
    moves = {
        s: target
        for s, held in sorted(answering[0][1].items())
        if held.owner_dc == from_dc and (target := claimant(topology, s, from_dc, ())) is not None
    }
    if not moves:
        click.echo(f"{from_dc} owns no shard, as {answering[0][0].name} sees it")
        return
    requests = [(site, _request(site, "failover", from_dc, None, None)) for site, _ in answering]
    took = _wait_for_owners(topology, moves, requests, timeout)
    for s, target in moves.items():
        click.echo(f"shard {s}: {from_dc} -> {target}")
    click.echo(f"failed over {len(moves)} shards in {took:.2f} s")
