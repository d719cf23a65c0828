"""``coopr-pipeline bench``: the benchmarks of :mod:`bench`, each with its baseline.

Every benchmark command returns its section of the results file (:mod:`bench.results`) and,
with ``--output``, writes a results file holding it; ``bench all`` runs them all and writes
one file with every section.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from bench.results import Section, compared, uncompared
from cli.options import run_dir_option, topology_option
from cli.render import table
from cli.stack import running_stack
from pipeline.errors import PipelineError
from pipeline.topology import Topology, load_topology

__all__ = ["bench"]


def _running_topology(run_dir: Path) -> Topology:
    return load_topology(running_stack(run_dir).topology)


def _say(line: str) -> None:
    """Progress of a long phase, on stderr so that stdout stays the figures."""
    click.echo(line, err=True)


output_option = click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Also write the figures to this results file (JSON).",
)


def _results_document(
    sections: dict[str, Section],
    *,
    started: datetime,
    command: str,
    quick: bool,
    topology: Topology | None,
) -> dict[str, Any]:
    from bench.environment import machine, versions
    from bench.results import document

    return document(
        sections,
        started=started,
        finished=datetime.now(UTC),
        command=command,
        quick=quick,
        machine=machine(),
        versions=versions(topology),
    )


def _finish(
    name: str,
    section: Section,
    *,
    output: Path | None,
    started: datetime,
    topology: Topology | None,
) -> Section:
    """Time the section, write it to ``output`` if given (the path printed last), return it."""
    from bench.results import write

    section["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    if output is not None:
        command = f"bench {name}"
        doc = _results_document(
            {name: section}, started=started, command=command, quick=False, topology=topology
        )
        click.echo(str(write(output, doc)))
    return section


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
@output_option
@run_dir_option
def bench_mirror_cmd(count: int, rate: float, output: Path | None, run_dir: Path) -> Section:
    """Mirror latency through MirrorMaker 2 on the running stack, against a direct read."""
    from bench.mirror import bench_mirror

    started = datetime.now(UTC)
    topology = _running_topology(run_dir)
    direct, through = bench_mirror(topology, count=count, rate=rate)
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
                for r in (direct, through)
            ],
        )
    )
    if direct.received < direct.sent or through.received < through.sent:
        raise click.ClickException("some records did not arrive")

    def figures(r: Any) -> dict[str, Any]:
        return {"p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "max_ms": r.max_ms, "records": r.sent}

    section = compared(
        {"path": through.path, **figures(through)},
        f"a direct read: {direct.path}",
        figures(direct),
        key="p50_ms",
        better="lower",
        also=("p99_ms",),
    )
    return _finish("mirror", section, output=output, started=started, topology=topology)


@bench.command("stack")
@click.option("--dcs", type=click.IntRange(2, 9), default=3, show_default=True)
@click.option(
    "--base-port",
    type=click.IntRange(1024, 65000),
    default=30090,
    show_default=True,
    help="Ports of the throw-away stack (see pipeline/stack/layout.py); below 32768, where"
    " Linux hands out the ports of outgoing connections.",
)
@output_option
def bench_stack_cmd(dcs: int, base_port: int, output: Path | None) -> Section:
    """Cold `stack up` time and resident memory of a fresh stack (started and wiped)."""
    from bench.stack import bench_stack

    started = datetime.now(UTC)
    r = bench_stack(dcs, base_port=base_port)
    return _finish("stack", _stack_section(r), output=output, started=started, topology=None)


def _stack_section(r: Any, **notes: Any) -> Section:
    click.echo(
        f"stack of {r.dcs} DCs: up {r.up_s:.1f} s, resident memory "
        f"{r.resident_mb:.0f} MiB in {r.processes} processes"
    )
    section = uncompared(
        {
            "dcs": r.dcs,
            "up_s": r.up_s,
            "resident_mb": r.resident_mb,
            "processes": r.processes,
            **notes,
        },
        "nothing else starts a whole stack",
        also=("up_s", "resident_mb"),
    )
    return section


@bench.command("codec")
@click.option(
    "--seconds",
    type=click.FloatRange(0.1, 600),
    default=3.0,
    show_default=True,
    help="Time per measurement.",
)
@output_option
def bench_codec_cmd(seconds: float, output: Path | None) -> Section:
    """Encode and decode rate of the Avro codec against bare fastavro, per core."""
    from bench.codec import bench_codec

    started = datetime.now(UTC)
    figures = bench_codec(seconds)
    click.echo(table(["FIGURE", "VALUE"], [[k, f"{v:,.2f}"] for k, v in figures.items()]))
    # Compared: `decode` and `encode` with the event classes, of the 1.2 KB event the other
    # benchmarks move (the target: within 20% of bare fastavro).
    section = compared(
        {
            "decode_per_s": figures["small_event_decode_per_s"],
            "encode_per_s": figures["small_event_encode_per_s"],
            **figures,
        },
        "bare fastavro schemaless_reader/writer, same 1.2 KB record",
        {
            "decode_per_s": figures["small_fastavro_decode_per_s"],
            "encode_per_s": figures["small_fastavro_encode_per_s"],
        },
        key="decode_per_s",
        better="higher",
        also=("encode_per_s",),
    )
    return _finish("codec", section, output=output, started=started, topology=None)


_count_option = click.option(
    "--count",
    type=click.IntRange(100, 10_000_000),
    default=50_000,
    show_default=True,
    help="Events for the throughput run.",
)

_runs_option = click.option(
    "--runs",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    help="Alternating runs of each side after a warm-up run each (median and range).",
)


def _rate_option(default: float) -> Callable[[Callable[..., Section]], Callable[..., Section]]:
    return click.option(
        "--rate",
        type=click.FloatRange(1, 100_000),
        default=default,
        show_default=True,
        help="Events per second for the timed run.",
    )


def _seconds_option(default: float) -> Callable[[Callable[..., Section]], Callable[..., Section]]:
    return click.option(
        "--seconds",
        type=click.FloatRange(1, 3600),
        default=default,
        show_default=True,
        help="Length of the timed run.",
    )


def _spread(s: Any) -> str:
    return f"{s.median:,.0f} ({s.low:,.0f}..{s.high:,.0f})"


def _throughput_table(sides: list[tuple[str, Any]]) -> str:
    """Events/s of each side, median and range; the ratio of the first to each other."""
    first = sides[0][1]
    return table(
        ["PATH", "EVENTS/S MEDIAN (MIN..MAX)", "RATIO"],
        [
            [name, _spread(s), "-" if s is first else f"{first.ratio_to(s):.2f}"]
            for name, s in sides
        ],
    )


def _timed_run(prefix: str, run: Any) -> dict[str, float]:
    """The figures of a run at a fixed rate (its rate, events, p50, p99 and max in ms)."""
    return {
        f"{prefix}_rate": run.rate,
        f"{prefix}_events": run.events,
        f"{prefix}_p50_ms": run.p50_ms,
        f"{prefix}_p99_ms": run.p99_ms,
        f"{prefix}_max_ms": run.max_ms,
    }


@bench.command("relay")
@click.option("--dc", default="dc1", show_default=True)
@_count_option
@_runs_option
@_rate_option(1000.0)
@_seconds_option(15.0)
@click.option(
    "--end-to-end-records",
    type=click.IntRange(10, 1_000_000),
    default=1000,
    show_default=True,
    help="Records Kafka's EndToEndLatency sends, one at a time.",
)
@output_option
@run_dir_option
def bench_relay_cmd(
    dc: str,
    count: int,
    runs: int,
    rate: float,
    seconds: float,
    end_to_end_records: int,
    output: Path | None,
    run_dir: Path,
) -> Section:
    """Relay throughput against bare librdkafka and Kafka's ProducerPerformance, and
    commit-to-ack latency at a fixed rate beside Kafka's EndToEndLatency."""
    from bench.relay import bench_kafka_end_to_end, bench_relay_latency, bench_relay_throughput

    started = datetime.now(UTC)
    topology = _running_topology(run_dir)
    t = bench_relay_throughput(topology, dc, count=count, runs=runs, progress=_say)
    click.echo(
        f"relay throughput, {t.events} events of {t.event_bytes} B per run, outbox to"
        f" acknowledged, {runs} alternating runs after a warm-up each:"
    )
    click.echo(_throughput_table([("relay", t.relay), ("bare librdkafka", t.raw)]))
    if t.producer_perf is not None:
        click.echo(
            f"Kafka ProducerPerformance, {t.producer_perf_records} records in one JVM:"
            f" {t.producer_perf:,.0f} events/s (relay ratio {t.relay.median / t.producer_perf:.2f})"
        )
    lat = bench_relay_latency(topology, dc, rate=rate, seconds=seconds)
    click.echo(
        f"relay latency at {lat.rate:,.0f} events/s ({lat.events} events), "
        f"outbox commit to acknowledged: p50 {lat.p50_ms:.1f} ms, "
        f"p99 {lat.p99_ms:.1f} ms, max {lat.max_ms:.1f} ms"
    )
    e2e = bench_kafka_end_to_end(topology, dc, records=end_to_end_records)
    secured = {"skipped": "a secured stack: the Kafka tools are not given its credentials"}
    if e2e is not None:
        click.echo(
            f"Kafka EndToEndLatency, {e2e.records} records of {t.event_bytes} B one at a time"
            f" (produce, ack, consume): p50 {e2e.p50_ms:.0f} ms, p99 {e2e.p99_ms:.0f} ms"
        )
    section = compared(
        {
            "events_per_s": t.relay,
            "events": t.events,
            "event_bytes": t.event_bytes,
            **_timed_run("latency", lat),
        },
        "bare librdkafka, same bytes and settings",
        {"events_per_s": t.raw},
        key="events_per_s",
        better="higher",
        also=("latency_p50_ms", "latency_p99_ms"),
        kafka_producer_perf=secured
        if t.producer_perf is None
        else {
            "name": "Kafka ProducerPerformance, one run",
            "compared": "events_per_s",
            "events_per_s": t.producer_perf,
            "records": t.producer_perf_records,
            "ratio": t.relay.median / t.producer_perf,
        },
        kafka_end_to_end=secured
        if e2e is None
        else {
            "name": "Kafka EndToEndLatency (produce to consume, one at a time)",
            "compared": "p50_ms",
            "records": e2e.records,
            "avg_ms": e2e.avg_ms,
            "p50_ms": e2e.p50_ms,
            "p99_ms": e2e.p99_ms,
            "p999_ms": e2e.p999_ms,
            "ratio": None,
        },
    )
    return _finish("relay", section, output=output, started=started, topology=topology)


@bench.command("applier")
@click.option("--owner", default="dc1", show_default=True, help="DC whose events are replicated.")
@click.option("--replica", default="dc2", show_default=True, help="DC whose applier is measured.")
@_count_option
@_runs_option
@_rate_option(2000.0)
@_seconds_option(60.0)
@output_option
@run_dir_option
def bench_applier_cmd(
    owner: str,
    replica: str,
    count: int,
    runs: int,
    rate: float,
    seconds: float,
    output: Path | None,
    run_dir: Path,
) -> Section:
    """Apply throughput against a bare COPY, and outbox-to-replica delay at a fixed rate."""
    from bench.applier import bench_apply_throughput, bench_replication_delay

    started = datetime.now(UTC)
    topology = _running_topology(run_dir)
    t = bench_apply_throughput(topology, replica, count=count, runs=runs, progress=_say)
    click.echo(
        f"apply throughput, {t.events} events per run into {replica}'s Postgres,"
        f" {runs} alternating runs after a warm-up each:"
    )
    click.echo(_throughput_table([("applier", t.applier), ("bare COPY", t.copy)]))
    d = bench_replication_delay(topology, owner, replica, rate=rate, seconds=seconds)
    click.echo(
        f"replication delay {owner}->{replica} at {d.rate:,.0f} events/s for {d.seconds:g} s "
        f"({d.events} events), outbox commit to replica row: p50 {d.p50_ms:.0f} ms, "
        f"p99 {d.p99_ms:.0f} ms, max {d.max_ms:.0f} ms"
    )
    section = compared(
        {
            "events_per_s": t.applier,
            "events": t.events,
            **_timed_run("delay", d),
        },
        "bare COPY of the same rows",
        {"events_per_s": t.copy},
        key="events_per_s",
        better="higher",
        also=("delay_p50_ms", "delay_p99_ms"),
    )
    return _finish("applier", section, output=output, started=started, topology=topology)


@bench.command("topics")
@click.option("--dc", default="dc1", show_default=True, help="DC whose Kafka holds the topic.")
@_count_option
@output_option
@run_dir_option
def bench_topics_cmd(dc: str, count: int, output: Path | None, run_dir: Path) -> Section:
    """`topics show --format json` decode rate against `kcat -C -e` reading the same topic raw."""
    from bench.topics import bench_topics_show

    started = datetime.now(UTC)
    topology = _running_topology(run_dir)
    r = bench_topics_show(topology, dc, count=count)
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
    section = compared(
        {"records_per_s": r.show_per_s, "seconds": r.show_s, "records": r.records},
        "kcat -C -e reading the same topic raw",
        {"records_per_s": r.kcat_per_s, "seconds": r.kcat_s},
        key="records_per_s",
        better="higher",
    )
    return _finish("topics", section, output=output, started=started, topology=topology)


@bench.command("replay")
@click.option("--owner", default="dc1", show_default=True, help="DC whose events are replayed.")
@_count_option
@output_option
@run_dir_option
def bench_replay_cmd(owner: str, count: int, output: Path | None, run_dir: Path) -> Section:
    """`replay --from-offset` rate against the applier's own, on the same events."""
    from bench.replay import bench_replay

    started = datetime.now(UTC)
    topology = _running_topology(run_dir)
    r = bench_replay(topology, owner, count=count)
    click.echo(f"applying {r.events} events of one shard into its replica's Postgres:")
    click.echo(
        table(
            ["PATH", "EVENTS/S"],
            [
                ["replay", f"{r.replay_per_s:,.0f}"],
                ["applier", f"{r.applier_per_s:,.0f}"],
                ["ratio", f"{r.replay_per_s / r.applier_per_s:.2f}"],
            ],
        )
    )
    section = compared(
        {"events_per_s": r.replay_per_s, "events": r.events},
        "the applier on the same events",
        {"events_per_s": r.applier_per_s},
        key="events_per_s",
        better="higher",
    )
    return _finish("replay", section, output=output, started=started, topology=topology)


@bench.command("catchup")
@click.option("--dc", default="dc1", show_default=True, help="DC whose applier catches up.")
@click.option(
    "--events",
    type=click.IntRange(100, 100_000_000),
    default=1_000_000,
    show_default=True,
    help="Events the other DCs write while the applier is stopped.",
)
@output_option
@run_dir_option
def bench_catchup_cmd(dc: str, events: int, output: Path | None, run_dir: Path) -> Section:
    """A DC's applier catching up on a backlog written while it was stopped: time to zero
    lag, events/s, and memory at its peak against the stack's before it started."""
    from bench.catchup import bench_catchup

    started = datetime.now(UTC)
    topology = _running_topology(run_dir)
    topology.dc(dc)  # an unknown DC is refused before anything is written
    c = bench_catchup(topology, run_dir, dc, events=events, progress=_say)
    click.echo(
        f"catch-up of {dc}'s applier: {c.backlog:,} events ({c.written:,} written by this run)"
        f" applied in {c.seconds:.1f} s, {c.events_per_s:,.0f} events/s; applier peak RSS"
        f" {c.applier_peak_mb:.0f} MiB; stack and applier at most {c.stack_peak_mb:,.0f} MiB"
        f" (stack before: {c.stack_before_mb:,.0f} MiB)"
    )
    section = compared(
        {
            "memory_mb": c.stack_peak_mb,
            "events_per_s": c.events_per_s,
            "seconds": c.seconds,
            "backlog": c.backlog,
            "written": c.written,
            "applier_peak_mb": c.applier_peak_mb,
        },
        "the stack's memory before the applier started",
        {"memory_mb": c.stack_before_mb},
        key="memory_mb",
        better="lower",
        also=("events_per_s", "seconds", "applier_peak_mb"),
    )
    return _finish("catchup", section, output=output, started=started, topology=topology)


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


#: ``bench all --quick``: counts and durations that fit, with a stack to start, in 5 minutes
#: on a 2-core machine; the figures are rougher, the shape of the results the same.
_QUICK: dict[str, dict[str, Any]] = {
    "codec": {"seconds": 1.0},
    "mirror": {"count": 200},
    "relay": {"count": 3000, "rate": 500.0, "seconds": 3.0, "end_to_end_records": 200},
    "applier": {"count": 3000, "rate": 500.0, "seconds": 3.0},
    "topics": {"count": 5000},
    "catchup": {"events": 10_000},
}

#: What ``bench all --quick`` leaves out, and why.
_QUICK_SKIPS = {
    "replay": "--quick: needs over 5,000 events (an applier batch) written at 1,000/s",
}


@bench.command("all")
@click.option(
    "--quick",
    is_flag=True,
    help="Smaller counts and shorter runs (about 5 minutes with a stack to start); what does"
    " not fit is skipped, and the results file says so.",
)
@output_option
@topology_option
@run_dir_option
@click.pass_context
def bench_all(
    ctx: click.Context, quick: bool, output: Path | None, topology_file: Path, run_dir: Path
) -> None:
    """Every benchmark: codec, a cold stack, then mirror, relay, applier, topics, replay and
    catchup on the stack in --run-dir; one results file (default: .bench/ here), a summary
    table, and the file's path as the last line.

    The stack in --run-dir is brought up first (its recorded topology, else --topology) if it
    is not running. `bench failover` is left out: each of its runs kills and restarts a DC,
    minutes of waiting for Kafka groups' session timeouts, and it leaves ownership moved.
    """
    from bench.results import default_path, failed, skipped, summary_rows, write
    from bench.stack import measure_up
    from pipeline.stack import status
    from pipeline.stack.processes import StackState

    started = datetime.now(UTC)
    sizes: dict[str, dict[str, Any]] = _QUICK if quick else {}
    sections: dict[str, Section] = {}

    def measure(name: str, command: click.Command, **params: Any) -> None:
        if quick and name in _QUICK_SKIPS:
            sections[name] = skipped(_QUICK_SKIPS[name])
            return
        _say(f"bench {name}: starting")
        start = time.monotonic()
        try:
            sections[name] = ctx.invoke(command, **sizes.get(name, {}), **params)
        except (PipelineError, click.ClickException) as e:
            sections[name] = failed(str(e), seconds=round(time.monotonic() - start, 1))
            _say(f"bench {name} failed: {e}")

    measure("codec", bench_codec_cmd)
    run_dir = run_dir.resolve()
    state = StackState.load(run_dir)
    is_up = state is not None and all(p.healthy for p in status(run_dir))
    if is_up:
        if quick:
            # A second, throw-away stack takes minutes to start on 2 cores.
            sections["stack"] = skipped(
                "--quick, stack already up: measured only when bench all starts it"
            )
        else:
            measure("stack", bench_stack_cmd)
    else:
        if not quick:
            measure("stack", bench_stack_cmd)
        _say(f"bench: starting the stack in {run_dir}")
        start = time.monotonic()
        topology_path = Path(state.topology) if state else topology_file
        footprint = measure_up(run_dir, topology_path, len(load_topology(topology_path).dcs))
        if quick:
            # The stack this run needs anyway is the cold start measured: no second stack.
            sections["stack"] = _stack_section(footprint, cold=state is None)
            sections["stack"]["seconds"] = round(time.monotonic() - start, 1)
    for name, command in (
        ("mirror", bench_mirror_cmd),
        ("relay", bench_relay_cmd),
        ("applier", bench_applier_cmd),
        ("topics", bench_topics_cmd),
        ("replay", bench_replay_cmd),
        ("catchup", bench_catchup_cmd),
    ):
        measure(name, command, run_dir=run_dir)

    topology = load_topology(running_stack(run_dir).topology)
    doc = _results_document(
        sections,
        started=started,
        command="bench all" + (" --quick" if quick else ""),
        quick=quick,
        topology=topology,
    )
    path = write(output or default_path(started), doc)
    click.echo(
        f"\nbench all{' --quick' if quick else ''}: {doc['seconds']:.0f} s; ratio ="
        " measured / baseline (medians)"
    )
    click.echo(
        table(
            ["BENCHMARK", "FIGURE", "MEASURED", "BASELINE", "BASELINE VALUE", "RATIO"],
            summary_rows(sections),
        )
    )
    click.echo(str(path))
    if any("failed" in s for s in sections.values()):
        ctx.exit(1)
