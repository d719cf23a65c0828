"""``coopr-pipeline ownership``: who owns which shard, as one DC sees it, and the orphans a
failover left (``docs/ownership.md``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.options import topology_option
from cli.render import table, to_json
from pipeline.topology import DataCenter, Topology, load_topology

if TYPE_CHECKING:
    import psycopg2.extensions

    from controller.report import Orphan

__all__ = ["ownership"]

_FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output: aligned table, or JSON.",
)


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
@_FORMAT
def ownership_show(dc: str | None, topology_file: Path, fmt: str) -> None:
    """Per shard: owner, epoch, writable, lease left, the claim's cut; per DC: heartbeat age,
    fenced, and which DCs do not hear it. Read from the chosen DC's own database and Kafka."""
    from controller.report import latest_heartbeats, liveness_rows, shard_states
    from pipeline.kafka_config import KafkaSettings

    topology = load_topology(topology_file)
    site, conn = _answering(topology, dc)
    try:
        shards = shard_states(conn)
    finally:
        conn.close()
    heartbeats = latest_heartbeats(
        KafkaSettings(site.kafka, client_id="coopr-ownership"), topology, site.name
    )
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
@_FORMAT
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
