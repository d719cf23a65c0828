"""``coopr-pipeline bench``: the benchmarks of :mod:`bench`, each with its baseline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from cli.options import run_dir_option
from cli.render import table
from cli.stack import running_stack
from pipeline.stack.runtime import deploy_dir
from pipeline.topology import Topology, load_topology

__all__ = ["bench"]


def _running_topology(run_dir: Path) -> Topology:
    return load_topology(running_stack(run_dir).topology)


@click.group()
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
        table(
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
    click.echo(table(["FIGURE", "VALUE"], [[k, f"{v:,.2f}"] for k, v in figures.items()]))


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
    return table(
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


@bench.command("topics")
@click.option("--dc", default="dc1", show_default=True, help="DC whose Kafka holds the topic.")
@_count_option
@run_dir_option
def bench_topics_cmd(dc: str, count: int, run_dir: Path) -> None:
    """`topics show --format json` decode rate against `kcat -C -e` reading the same topic raw."""
    from bench.topics import bench_topics_show

    r = bench_topics_show(_running_topology(run_dir), dc, count=count)
    click.echo(
        f"reading a topic of {r.records} records of {r.record_bytes} B, whole process"
        " (startup included) to a pipe:"
    )
    click.echo(
        table(
            ["READER", "SECONDS", "RECORDS/S"],
            [
                ["topics show --format json", f"{r.show_s:.2f}", f"{r.show_per_s:,.0f}"],
                ["kcat -C -e (raw)", f"{r.kcat_s:.2f}", f"{r.kcat_per_s:,.0f}"],
                ["ratio", "", f"{r.show_per_s / r.kcat_per_s:.2f}"],
            ],
        )
    )


@bench.command("replay")
@click.option("--owner", default="dc1", show_default=True, help="DC whose events are replayed.")
@_count_option
@run_dir_option
def bench_replay_cmd(owner: str, count: int, run_dir: Path) -> None:
    """`replay --from-offset` rate against the applier's own, on the same events."""
    from bench.replay import bench_replay

    r = bench_replay(_running_topology(run_dir), owner, count=count)
    click.echo(f"applying {r.events} events of one shard into its replica's Postgres:")
    click.echo(_throughput_table("replay", r.replay_per_s, "applier", r.applier_per_s))


@bench.command("failover")
@click.option("--runs", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option(
    "--failure-timeout",
    type=click.FloatRange(1, 600),
    default=10.0,
    show_default=True,
    help="The controllers' failure timeout T (s).",
)
@click.option(
    "--rate",
    type=click.FloatRange(1, 10_000),
    default=20.0,
    show_default=True,
    help="Events per second each DC's stand-in server aims at.",
)
@run_dir_option
def bench_failover_cmd(
    runs: int, failure_timeout: float, rate: float, run_dir: Path
) -> dict[str, float]:
    """Failover of the DC owning the most shards under load: time to the first write
    accepted by the new owner, events orphaned against rate x mirror delay; and the longest
    refusal of writes during `ownership move`. Leaves ownership where the runs moved it."""
    from bench.failover import bench_failover, figures

    failovers, moves = bench_failover(
        _running_topology(run_dir),
        run_dir,
        runs=runs,
        failure_timeout_s=failure_timeout,
        rate=rate,
        progress=lambda line: click.echo(line, err=True),
    )
    click.echo(
        f"failover, {runs} runs, failure timeout {failure_timeout:g} s, stand-in servers at"
        f" {rate:g} events/s per DC:"
    )
    click.echo(
        table(
            [
                "RUN",
                "KILLED",
                "SHARDS",
                "FIRST WRITE S",
                "ALL SHARDS S",
                "ORPHANS",
                "RATE X DELAY",
                "RESTARTS",
                "MOVE REFUSED MS",
            ],
            [
                [
                    i + 1,
                    f.victim,
                    len(f.moved),
                    f"{f.first_write_s:.2f}",
                    f"{f.all_writes_s:.2f}",
                    f.orphans,
                    f"{f.expected_loss:.1f} ({f.victim_rate:.1f}/s x {f.delay_ms:.0f} ms)",
                    f"{f.completed}/{f.restarts}",
                    f"{m.refused_s * 1000:.0f}",
                ]
                for i, (f, m) in enumerate(zip(failovers, moves, strict=True))
            ],
        )
    )
    result = figures(failovers, moves)
    click.echo(
        f"failover time (kill to first write accepted by the new owner): p50"
        f" {result['failover_first_write_p50_s']:.2f} s, max"
        f" {result['failover_first_write_max_s']:.2f} s (target: at most T + 2 ="
        f" {failure_timeout + 2:g} s)"
    )
    click.echo(
        f"writes refused during `ownership move`: p50 {result['move_refused_p50_ms']:.0f} ms,"
        f" max {result['move_refused_max_ms']:.0f} ms (target: under 500 ms)"
    )
    return result


@bench.command("all")
@run_dir_option
@click.pass_context
def bench_all(ctx: click.Context, run_dir: Path) -> None:
    """Every benchmark: codec, a cold stack, then mirror, relay, applier and topics on the
    stack in --run-dir.

    The stack in --run-dir is brought up first (the default topology) if it is not running.
    `bench failover` is left out: each of its runs kills and restarts a DC, minutes of waiting
    for Kafka groups' session timeouts, and it leaves ownership moved.
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
    ctx.invoke(bench_topics_cmd, run_dir=run_dir)
    ctx.invoke(bench_replay_cmd, run_dir=run_dir)
