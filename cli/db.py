"""``coopr-pipeline db``: the DC's database."""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import topology_option
from pipeline.topology import load_topology

__all__ = ["db"]


@click.group()
def db() -> None:
    """The DC's database."""


@db.command("migrate")
@click.option("--dc", required=True, help="The DC whose database to migrate.")
@topology_option
def db_migrate(dc: str, topology_file: Path) -> None:
    """Apply the migrations the DC's database lacks and seed its shard ownership."""
    from pipeline.db import prepare

    topology = load_topology(topology_file)
    applied = prepare(topology, dc)
    click.echo(
        f"{dc}: applied {len(applied)} migrations"
        + "".join(f"\n  {m.version:04d} {m.name}" for m in applied)
    )


@db.command("check")
@click.option("--dc", required=True, help="The DC whose database to check.")
@topology_option
def db_check(dc: str, topology_file: Path) -> None:
    """Check, changing nothing, that the DC's database has exactly this release's migrations.

    Exits 1 when a migration it applied was edited since, when a newer release migrated it,
    or when it lacks some (run `db migrate`).
    """
    from pipeline.db import check_migrations, connect, migrations

    topology = load_topology(topology_file)
    shipped = migrations()
    conn = connect(topology.dc(dc).database)
    try:
        pending = check_migrations(conn, shipped)
    finally:
        conn.close()
    if pending:
        raise click.ClickException(
            f"{dc}: {len(pending)} migrations not applied yet"
            f" ({', '.join(m.filename for m in pending)}):"
            f" run `coopr-pipeline db migrate --dc {dc}`"
        )
    click.echo(f"{dc}: all {len(shipped)} migrations applied, unchanged")
