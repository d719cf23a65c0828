"""``coopr-pipeline stack``: the local multi-DC stack (up, status, down)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.options import run_dir_option
from cli.render import table, to_json
from pipeline.stack.processes import StackState
from pipeline.stack.runtime import deploy_dir
from pipeline.topology import Topology, load_topology

__all__ = ["running_stack", "stack"]


def running_stack(run_dir: Path) -> StackState:
    """The state of the stack in ``run_dir``; a usage error naming the fix when there is none."""
    state = StackState.load(run_dir.resolve())
    if state is None:
        raise click.ClickException(f"no stack in {run_dir}: run `coopr-pipeline stack up` first")
    return state


@click.group()
def stack() -> None:
    """The local multi-DC stack: a Kafka broker and a Postgres per DC, and MirrorMaker 2."""


def _dc_rows(topology: Topology) -> list[list[object]]:
    rows: list[list[object]] = []
    for dc in topology.dcs:
        role = "witness" if dc.witness else f"owns {len(topology.owned_shards(dc.name))} shards"
        rows.append([dc.name, dc.kafka, "-" if dc.witness else dc.database_redacted, role])
    return rows


def _print_stack(run_dir: Path) -> bool:
    from pipeline.stack import status

    state = StackState.load(run_dir.resolve())
    rows = status(run_dir)
    if state is None or not rows:
        click.echo(f"no stack in {run_dir}")
        return False
    click.echo(f"topology: {state.topology}")
    click.echo(table(["DC", "KAFKA", "DATABASE", "ROLE"], _dc_rows(load_topology(state.topology))))
    click.echo()
    click.echo(
        table(
            ["PROCESS", "PID", "PORTS", "HEALTH", "LOG"],
            [
                [r.name, r.pid or "-", ",".join(map(str, r.ports)) or "-", r.health, r.log]
                for r in rows
            ],
        )
    )
    return all(r.healthy for r in rows)


@stack.command("up")
@click.option(
    "--dcs",
    type=click.IntRange(2, 9),
    default=None,
    help="Generate a topology of N DCs on loopback [default: deploy/topology.local.toml].",
)
@click.option(
    "--topology",
    "topology_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Topology file to run (TOML).",
)
@run_dir_option
def stack_up(dcs: int | None, topology_file: Path | None, run_dir: Path) -> None:
    """Start the stack (what already runs is left alone) and wait until it is healthy."""
    from pipeline.stack import local_topology_toml, up

    if topology_file is not None and dcs is not None:
        raise click.UsageError("give --dcs or --topology, not both")
    if topology_file is None:
        if dcs is None:
            topology_file = deploy_dir() / "topology.local.toml"
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            topology_file = run_dir / "topology.toml"
            topology_file.write_text(local_topology_toml(dcs))
    up(run_dir, topology_file)
    _print_stack(run_dir)


@stack.command("status")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@run_dir_option
def stack_status(fmt: str, run_dir: Path) -> None:
    """Each process with pid, ports and health; exits 1 unless every process is healthy."""
    from pipeline.stack import status

    if fmt == "table":
        sys.exit(0 if _print_stack(run_dir) else 1)
    state = StackState.load(run_dir.resolve())
    rows = status(run_dir)
    topology = load_topology(state.topology) if state is not None else None
    body = {
        "run_dir": str(run_dir.resolve()),
        "topology": state.topology if state is not None else None,
        "shard_count": topology.shard_count if topology else None,
        "dcs": [
            {
                "name": dc.name,
                "kafka": dc.kafka,
                "database": None if dc.witness else dc.database_redacted,
                "witness": dc.witness,
            }
            for dc in (topology.dcs if topology else ())
        ],
        "processes": [
            {"name": r.name, "pid": r.pid, "ports": list(r.ports), "health": r.health, "log": r.log}
            for r in rows
        ],
    }
    click.echo(to_json(body))
    sys.exit(0 if rows and all(r.healthy for r in rows) else 1)


@stack.command("down")
@click.option("--wipe", is_flag=True, help="Also delete the brokers' logs and the databases.")
@run_dir_option
def stack_down(wipe: bool, run_dir: Path) -> None:
    """Stop everything the stack started."""
    from pipeline.stack import down

    stopped = down(run_dir, wipe=wipe)
    click.echo(f"stopped {len(stopped)} processes" + (f": {', '.join(stopped)}" if stopped else ""))
    if wipe:
        click.echo(f"wiped the data in {run_dir}")
