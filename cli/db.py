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
