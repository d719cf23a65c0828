"""The ``coopr-pipeline`` command line.

Every command turns a :class:`~pipeline.errors.PipelineError` into one line on stderr and
exit status 1 (2 for wrong usage, as click does), never a stack trace.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from pipeline.errors import PipelineError
from pipeline.logging import configure_logging
from pipeline.observability import HealthFn
from pipeline.stack.runtime import REPO_ROOT, deploy_dir
from pipeline.topology import Topology, load_topology

__all__ = ["main"]


def default_run_dir() -> Path:
    """``$COOPR_RUN_DIR``, else ``.stack`` in the checkout."""
    return Path(os.environ.get("COOPR_RUN_DIR", REPO_ROOT / ".stack"))


class _Group(click.Group):
    """A click group that reports the project's errors in words."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PipelineError as e:
            click.secho(f"error: {e}", err=True, fg="red")
            ctx.exit(1)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


run_dir_option = click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_run_dir,
    show_default="$COOPR_RUN_DIR or .stack in the checkout",
    help="Folder of the local stack's data, logs and state.",
)

topology_option = click.option(
    "--topology",
    "topology_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("COOPR_TOPOLOGY", str(deploy_dir() / "topology.local.toml")),
    show_default="$COOPR_TOPOLOGY or deploy/topology.local.toml",
    help="Topology file (TOML).",
)


@click.group(cls=_Group)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--log-json/--log-console", default=None, help="Log format; JSON unless stderr is a terminal."
)
@click.version_option(package_name="coopr-pipeline")
def main(log_level: str, log_json: bool | None) -> None:
    """Multi-DC replication for Coopr over Kafka and MirrorMaker 2."""
    configure_logging(log_level, json=log_json)


@main.group()
def stack() -> None:
    """The local multi-DC stack: a Kafka broker and a Postgres per DC, and MirrorMaker 2."""


def _dc_rows(topology: Topology) -> list[list[object]]:
    rows: list[list[object]] = []
    for dc in topology.dcs:
        owned = [s for s in range(topology.shard_count) if topology.initial_owner(s) == dc.name]
        role = "witness" if dc.witness else f"owns {len(owned)} shards"
        rows.append([dc.name, dc.kafka, "-" if dc.witness else dc.database, role])
    return rows


def _print_stack(run_dir: Path) -> bool:
    from pipeline.stack import status
    from pipeline.stack.processes import StackState

    state = StackState.load(run_dir.resolve())
    rows = status(run_dir)
    if state is None or not rows:
        click.echo(f"no stack in {run_dir}")
        return False
    click.echo(f"topology: {state.topology}")
    click.echo(_table(["DC", "KAFKA", "DATABASE", "ROLE"], _dc_rows(load_topology(state.topology))))
    click.echo()
    click.echo(
        _table(
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
    from pipeline.stack.processes import StackState

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
                "database": None if dc.witness else dc.database,
                "witness": dc.witness,
            }
            for dc in (topology.dcs if topology else ())
        ],
        "processes": [
            {"name": r.name, "pid": r.pid, "ports": list(r.ports), "health": r.health, "log": r.log}
            for r in rows
        ],
    }
    click.echo(json.dumps(body, indent=2))
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


@main.group()
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


@main.group()
def worker() -> None:
    """Long-running workers: they log with structlog, serve /metrics and /healthz, and stop
    cleanly on SIGTERM (the batch in flight finishes)."""


metrics_port_option = click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port of /metrics and /healthz (0: any free port, logged at start).",
)


@worker.command("relay")
@click.option("--dc", required=True, help="The DC whose outbox to publish.")
@topology_option
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=5000, show_default=True)
@click.option(
    "--poll-interval",
    type=click.FloatRange(0.01, 60),
    default=1.0,
    show_default=True,
    help="Seconds between outbox polls when no NOTIFY arrives.",
)
@click.option(
    "--retention",
    type=click.FloatRange(0),
    default=86400.0,
    show_default=True,
    help="Seconds published rows stay in the outbox before they are pruned.",
)
@metrics_port_option
def worker_relay(
    dc: str,
    topology_file: Path,
    batch_size: int,
    poll_interval: float,
    retention: float,
    metrics_port: int,
) -> None:
    """Publish this DC's outbox to its shard topics (one active relay per DC)."""
    from pipeline.kafka_config import KafkaSettings
    from pipeline.shutdown import stop_on_signals
    from producer.relay import Relay, RelayConfig

    topology = load_topology(topology_file)
    site = topology.dc(dc)
    config = RelayConfig(
        dc=dc,
        database=site.database,
        kafka=KafkaSettings(site.kafka, client_id=f"coopr-relay-{dc}"),
        batch_size=batch_size,
        poll_interval_s=poll_interval,
        retention_s=retention,
    )
    relay = Relay(config, stop_on_signals())
    _serve_while(relay.run, relay.health, metrics_port, dc)


def _serve_while(run: Callable[[], None], health: HealthFn, port: int, dc: str) -> None:
    """Serve /metrics and /healthz on ``port`` while ``run`` runs."""
    from pipeline.logging import get_logger
    from pipeline.observability import ObservabilityServer

    server = ObservabilityServer(health, port=port)
    get_logger("pipeline.cli").info("serving metrics and health", port=server.port, dc=dc)
    try:
        run()
    finally:
        server.close()


@worker.command("applier")
@click.option("--dc", required=True, help="The DC whose replica tables to keep up to date.")
@topology_option
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=5000, show_default=True)
@metrics_port_option
def worker_applier(dc: str, topology_file: Path, batch_size: int, metrics_port: int) -> None:
    """Apply the mirrored shard topics this DC replicates to its Postgres."""
    from consumer.applier import Applier, ApplierConfig, replicated_topics
    from pipeline.kafka_config import KafkaSettings
    from pipeline.shutdown import stop_on_signals

    topology = load_topology(topology_file)
    site = topology.dc(dc)
    config = ApplierConfig(
        dc=dc,
        database=site.database,
        kafka=KafkaSettings(site.kafka, client_id=f"coopr-applier-{dc}"),
        topics=replicated_topics(topology, dc),
        batch_size=batch_size,
    )
    applier = Applier(config, stop_on_signals())
    _serve_while(applier.run, applier.health, metrics_port, dc)


@main.command("simulate")
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
    import dataclasses

    from pipeline.shutdown import stop_on_signals
    from simulator import SimulatorConfig, run_simulation

    stats = run_simulation(
        load_topology(topology_file),
        SimulatorConfig(dc=dc, rate=rate, duration_s=duration, seed=seed),
        stop_on_signals(),
    )
    click.echo(json.dumps(dataclasses.asdict(stats), default=dict, indent=2))


@main.command("demo")
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
@run_dir_option
def demo(duration: float, rate: float, run_dir: Path) -> None:
    """Run a relay, an applier and a simulator in every DC of the running stack; report."""
    from pipeline.demo import run_demo
    from pipeline.stack.processes import StackState

    state = StackState.load(run_dir.resolve())
    if state is None:
        raise click.ClickException(f"no stack in {run_dir}: run `coopr-pipeline stack up` first")
    rows = run_demo(
        load_topology(state.topology), Path(state.topology), run_dir, duration_s=duration, rate=rate
    )
    click.echo(f"pipeline demo, {duration:g} s, simulators at {rate:g} events/s per DC:")
    click.echo(
        _table(
            ["DC", "EVENTS PUBLISHED", "REPLICA ROWS CHANGED", "DELAY P50 MS", "DELAY P99 MS"],
            [[r.dc, r.published, r.applied, f"{r.p50_ms:.0f}", f"{r.p99_ms:.0f}"] for r in rows],
        )
    )
    click.echo("replication delay: replica row applied_at - event occurred_at in the owner DC")


def _running_topology(run_dir: Path) -> Topology:
    from pipeline.stack.processes import StackState

    state = StackState.load(run_dir.resolve())
    if state is None:
        raise click.ClickException(f"no stack in {run_dir}: run `coopr-pipeline stack up` first")
    return load_topology(state.topology)


@main.group()
def bench() -> None:
    """Benchmarks; each prints its figures with a baseline measured in the same run."""


@bench.command("mirror")
@click.option("--count", type=click.IntRange(1, 1_000_000), default=1000, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(1, 100_000),
    default=100.0,
    show_default=True,
    help="Records per second.",
)
@run_dir_option
def bench_mirror_cmd(count: int, rate: float, run_dir: Path) -> None:
    """Mirror latency through MirrorMaker 2 on the running stack, against a direct read."""
    from bench.mirror import bench_mirror

    results = bench_mirror(_running_topology(run_dir), count=count, rate=rate)
    click.echo(f"mirror latency, {count} records at {rate:g}/s (read time - CreateTime):")
    click.echo(
        _table(
            ["PATH", "RECEIVED", "P50 MS", "P99 MS", "MAX MS"],
            [
                [
                    r.path,
                    f"{r.received}/{r.sent}",
                    f"{r.p50_ms:.1f}",
                    f"{r.p99_ms:.1f}",
                    f"{r.max_ms:.1f}",
                ]
                for r in results
            ],
        )
    )
    if any(r.received < r.sent for r in results):
        raise click.ClickException("some records did not arrive")


@bench.command("stack")
@click.option("--dcs", type=click.IntRange(2, 9), default=3, show_default=True)
@click.option(
    "--base-port",
    type=click.IntRange(1024, 65000),
    default=39090,
    show_default=True,
    help="Ports of the throw-away stack (see pipeline/stack/layout.py).",
)
def bench_stack_cmd(dcs: int, base_port: int) -> None:
    """Cold `stack up` time and resident memory of a fresh stack (started and wiped)."""
    from bench.stack import bench_stack

    r = bench_stack(dcs, base_port=base_port)
    click.echo(
        f"stack of {r.dcs} DCs: cold up {r.up_s:.1f} s, resident memory "
        f"{r.resident_mb:.0f} MiB in {r.processes} processes"
    )


@bench.command("codec")
@click.option(
    "--seconds",
    type=click.FloatRange(0.1, 600),
    default=3.0,
    show_default=True,
    help="Time per measurement.",
)
def bench_codec_cmd(seconds: float) -> None:
    """Encode and decode rate of the Avro codec against bare fastavro, per core."""
    from bench.codec import bench_codec

    figures = bench_codec(seconds)
    click.echo(_table(["FIGURE", "VALUE"], [[k, f"{v:,.2f}"] for k, v in figures.items()]))


_count_option = click.option(
    "--count",
    type=click.IntRange(100, 10_000_000),
    default=50_000,
    show_default=True,
    help="Events for the throughput run.",
)


def _rate_option(default: float) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(
        "--rate",
        type=click.FloatRange(1, 100_000),
        default=default,
        show_default=True,
        help="Events per second for the timed run.",
    )


def _seconds_option(default: float) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(
        "--seconds",
        type=click.FloatRange(1, 3600),
        default=default,
        show_default=True,
        help="Length of the timed run.",
    )


def _throughput_table(measured: str, per_s: float, baseline: str, baseline_per_s: float) -> str:
    return _table(
        ["PATH", "EVENTS/S"],
        [
            [measured, f"{per_s:,.0f}"],
            [baseline, f"{baseline_per_s:,.0f}"],
            ["ratio", f"{per_s / baseline_per_s:.2f}"],
        ],
    )


@bench.command("relay")
@click.option("--dc", default="dc1", show_default=True)
@_count_option
@_rate_option(1000.0)
@_seconds_option(15.0)
@run_dir_option
def bench_relay_cmd(dc: str, count: int, rate: float, seconds: float, run_dir: Path) -> None:
    """Relay throughput against bare librdkafka, and commit-to-ack latency at a fixed rate."""
    from bench.relay import bench_relay_latency, bench_relay_throughput

    topology = _running_topology(run_dir)
    t = bench_relay_throughput(topology, dc, count=count)
    click.echo(f"relay throughput, {t.events} events of {t.event_bytes} B, outbox to acknowledged:")
    click.echo(_throughput_table("relay", t.relay_per_s, "bare librdkafka", t.raw_per_s))
    lat = bench_relay_latency(topology, dc, rate=rate, seconds=seconds)
    click.echo(
        f"relay latency at {lat.rate:,.0f} events/s ({lat.events} events), "
        f"outbox commit to acknowledged: p50 {lat.p50_ms:.1f} ms, "
        f"p99 {lat.p99_ms:.1f} ms, max {lat.max_ms:.1f} ms"
    )


@bench.command("applier")
@click.option("--owner", default="dc1", show_default=True, help="DC whose events are replicated.")
@click.option("--replica", default="dc2", show_default=True, help="DC whose applier is measured.")
@_count_option
@_rate_option(2000.0)
@_seconds_option(60.0)
@run_dir_option
def bench_applier_cmd(
    owner: str, replica: str, count: int, rate: float, seconds: float, run_dir: Path
) -> None:
    """Apply throughput against a bare COPY, and outbox-to-replica delay at a fixed rate."""
    from bench.applier import bench_apply_throughput, bench_replication_delay

    topology = _running_topology(run_dir)
    t = bench_apply_throughput(topology, replica, count=count)
    click.echo(f"apply throughput, {t.events} events into {replica}'s Postgres:")
    click.echo(_throughput_table("applier", t.applier_per_s, "bare COPY", t.copy_per_s))
    d = bench_replication_delay(topology, owner, replica, rate=rate, seconds=seconds)
    click.echo(
        f"replication delay {owner}->{replica} at {d.rate:,.0f} events/s for {d.seconds:g} s "
        f"({d.events} events), outbox commit to replica row: p50 {d.p50_ms:.0f} ms, "
        f"p99 {d.p99_ms:.0f} ms, max {d.max_ms:.0f} ms"
    )


@bench.command("all")
@run_dir_option
@click.pass_context
def bench_all(ctx: click.Context, run_dir: Path) -> None:
    """Every benchmark: codec, a cold stack, then mirror, relay and applier on the stack in
    --run-dir.

    The stack in --run-dir is brought up first (the default topology) if it is not running.
    """
    from pipeline.stack import up
    from pipeline.stack.processes import StackState

    ctx.invoke(bench_codec_cmd)
    ctx.invoke(bench_stack_cmd)
    state = StackState.load(run_dir.resolve())
    up(run_dir, Path(state.topology) if state else deploy_dir() / "topology.local.toml")
    ctx.invoke(bench_mirror_cmd, run_dir=run_dir)
    ctx.invoke(bench_relay_cmd, run_dir=run_dir)
    ctx.invoke(bench_applier_cmd, run_dir=run_dir)


if __name__ == "__main__":
    main()
