"""``coopr-pipeline simulate`` (one DC's stand-in Coopr server) and ``demo`` (every DC's)."""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import run_dir_option, topology_option
from cli.render import table, to_json
from cli.stack import running_stack
from pipeline.topology import load_topology

__all__ = ["demo", "simulate"]


@click.command("simulate")
@click.option("--dc", required=True, help="The DC whose stand-in Coopr server to run.")
@topology_option
@click.option(
    "--rate",
    type=click.FloatRange(0.1, 100_000),
    default=50.0,
    show_default=True,
    help="Events (stage boundaries and completions) per second, across all jobs.",
)
@click.option(
    "--duration",
    type=click.FloatRange(0),
    default=60.0,
    show_default=True,
    help="Seconds to start new work; jobs in flight then pass one more boundary.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Same seed and database state: the same operations.",
)
def simulate(dc: str, topology_file: Path, rate: float, duration: float, seed: int) -> None:
    """A stand-in Coopr server: realistic multi-stage jobs, each stage boundary one
    transaction with its outbox event; writes for another DC's shard go to that DC."""
    from pipeline.shutdown import stop_on_signals
    from simulator import SimulatorConfig, run_simulation

    stats = run_simulation(
        load_topology(topology_file),
        SimulatorConfig(dc=dc, rate=rate, duration_s=duration, seed=seed),
        stop_on_signals(),
    )
    click.echo(to_json(stats))


@click.command("demo")
@click.option(
    "--duration",
    type=click.FloatRange(5, 3600),
    default=30.0,
    show_default=True,
    help="Seconds the simulators create work.",
)
@click.option(
    "--rate",
    type=click.FloatRange(1, 10_000),
    default=20.0,
    show_default=True,
    help="Events per second each DC's simulator aims at.",
)
@click.option(
    "--failure-timeout",
    type=click.FloatRange(1, 600),
    default=6.0,
    show_default=True,
    help="The controllers' failure timeout T (s) for the drill.",
)
@click.option(
    "--drill/--no-drill",
    default=True,
    show_default=True,
    help="After the load: kill the DC owning the most shards, fail over, start it again.",
)
@run_dir_option
def demo(duration: float, rate: float, failure_timeout: float, drill: bool, run_dir: Path) -> None:
    """Run a controller, a relay, an applier and a simulator in every DC of the running stack;
    report; then a failover drill."""
    from cli.demo import drill_report, run_demo

    state = running_stack(run_dir)
    rows, failover = run_demo(
        load_topology(state.topology),
        run_dir,
        duration_s=duration,
        rate=rate,
        failure_timeout_s=failure_timeout,
        drill=drill,
    )
    click.echo(f"pipeline demo, {duration:g} s, simulators at {rate:g} events/s per DC:")
    click.echo(
        table(
            ["DC", "EVENTS PUBLISHED", "REPLICA ROWS CHANGED", "DELAY P50 MS", "DELAY P99 MS"],
            [[r.dc, r.published, r.applied, f"{r.p50_ms:.0f}", f"{r.p99_ms:.0f}"] for r in rows],
        )
    )
    click.echo("replication delay: replica row applied_at - event occurred_at in the owner DC")
    if failover is not None:
        click.echo()
        for line in drill_report(failover, failure_timeout):
            click.echo(line)
