"""``coopr-pipeline stack``: the local multi-DC stack (up, status, down) and its drills
(kill-dc, start-dc, partition, heal, slow)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.options import format_option, run_dir_option
from cli.render import table, to_json
from pipeline.stack.layout import MAX_DCS
from pipeline.stack.processes import DC_COMPONENTS, StackState
from pipeline.stack.runtime import deploy_dir
from pipeline.topology import Topology, load_topology

if TYPE_CHECKING:
    from pipeline.stack.links import Link, LinkStatus

__all__ = ["running_stack", "stack"]


def running_stack(run_dir: Path) -> StackState:
    """The state of the stack in ``run_dir``; a usage error naming the fix when there is none."""
    state = StackState.load(run_dir.resolve())
    if state is None:
        raise click.ClickException(f"no stack in {run_dir}: run `coopr-pipeline stack up` first")
    return state


@click.group()
def stack() -> None:
    """The local multi-DC stack: a Kafka broker, a Postgres and a MirrorMaker 2 per DC, and
    links between the DCs that drills can cut or slow."""


def _dc_rows(topology: Topology) -> list[list[object]]:
    rows: list[list[object]] = []
    for dc in topology.dcs:
        role = "witness" if dc.witness else f"owns {len(topology.owned_shards(dc.name))} shards"
        rows.append([dc.name, dc.kafka, "-" if dc.witness else dc.database_redacted, role])
    return rows


def _link_rows(topology: Topology) -> list[LinkStatus]:
    from pipeline.stack.links import link_status

    return link_status(topology)


def _print_stack(run_dir: Path) -> bool:
    from pipeline.stack import status

    state = StackState.load(run_dir.resolve())
    rows = status(run_dir)
    if state is None or not rows:
        click.echo(f"no stack in {run_dir}")
        return False
    topology = load_topology(state.topology)
    click.echo(f"topology: {state.topology}")
    click.echo(table(["DC", "KAFKA", "DATABASE", "ROLE"], _dc_rows(topology)))
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
    click.echo()
    click.echo(
        table(
            ["LINK", "PROXY", "UPSTREAM", "STATE"],
            [[r.link.name, r.link.address, r.link.upstream, r.state] for r in _link_rows(topology)],
        )
    )
    return all(r.healthy for r in rows)


@stack.command("up")
@click.option(
    "--dcs",
    type=click.IntRange(2, MAX_DCS),
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
@click.option(
    "--secure",
    is_flag=True,
    help="Kafka over SASL_SSL (SCRAM-SHA-512) with ACLs, PostgreSQL over TLS with passwords; "
    "certificates and secrets generated into the run dir (docs/security.md).",
)
@run_dir_option
def stack_up(dcs: int | None, topology_file: Path | None, secure: bool, run_dir: Path) -> None:
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
    up(run_dir, topology_file, secure=secure)
    _print_stack(run_dir)
    if secure:
        secrets = run_dir.resolve() / "secrets"
        click.echo()
        click.echo(
            f"secured: credentials in {secrets}; for the operator's commands run\n"
            f"  set -a; . {secrets}/coopr-operator.env; set +a"
        )


@stack.command("status")
@format_option
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
        "links": [
            {
                "name": r.link.name,
                "source": r.link.source,
                "target": r.link.target,
                "proxy": r.link.address,
                "upstream": r.link.upstream,
                "state": r.state,
                "cut": r.cut,
                "latency_ms": r.latency_ms,
            }
            for r in (_link_rows(topology) if topology else ())
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


def _topology(run_dir: Path) -> Topology:
    return load_topology(running_stack(run_dir).topology)


def _echo_links(verb: str, done: list[Link]) -> None:
    click.echo(f"{verb} {len(done)} links: {', '.join(link.name for link in done)}")


@stack.command("kill-dc")
@click.argument("dc")
@click.option(
    "--only",
    type=click.Choice(DC_COMPONENTS),
    help="Kill only this component of DC (its broker, database or MirrorMaker 2).",
)
@run_dir_option
def stack_kill_dc(dc: str, only: str | None, run_dir: Path) -> None:
    """SIGKILL DC's broker, database, MirrorMaker and demo workers, as a power loss would."""
    from pipeline.stack import kill_dc

    killed = kill_dc(run_dir, dc, only)
    click.echo(
        f"killed {len(killed)} processes of {dc}" + (f": {', '.join(killed)}" if killed else "")
    )


@stack.command("start-dc")
@click.argument("dc")
@run_dir_option
def stack_start_dc(dc: str, run_dir: Path) -> None:
    """Start what of DC is not running and wait until it is healthy (idempotent)."""
    from pipeline.stack import start_dc

    start_dc(run_dir, dc)
    _print_stack(run_dir)


@stack.command("partition")
@click.argument("dc")
@run_dir_option
def stack_partition(dc: str, run_dir: Path) -> None:
    """Cut every link into and out of DC: data stops, connections hang (until `stack heal`)."""
    from pipeline.stack.links import partition

    _echo_links("cut", partition(_topology(run_dir), dc))


@stack.command("heal")
@click.argument("dc", required=False)
@run_dir_option
def stack_heal(dc: str | None, run_dir: Path) -> None:
    """Remove every cut and delay from DC's links, or from all links without DC."""
    from pipeline.stack.links import heal

    _echo_links("healed", heal(_topology(run_dir), dc))


@stack.command("slow")
@click.argument("dc")
@click.option(
    "--latency-ms",
    type=click.IntRange(0, 600_000),
    required=True,
    help="Delay added to data on each of DC's links, each way (ms).",
)
@run_dir_option
def stack_slow(dc: str, latency_ms: int, run_dir: Path) -> None:
    """Delay data on every link into and out of DC (until `stack heal`)."""
    from pipeline.stack.links import slow

    _echo_links(f"slowed by {latency_ms} ms", slow(_topology(run_dir), dc, latency_ms))
