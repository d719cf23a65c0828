"""``coopr-pipeline worker``: the long-running relay and applier, with /metrics and /healthz."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from cli.options import (
    batch_bytes_option,
    db_dead_peer_option,
    metrics_host_option,
    metrics_port_option,
    topology_option,
)
from pipeline.observability import HealthFn
from pipeline.topology import DataCenter, Topology, load_topology

__all__ = ["worker"]


@click.group()
def worker() -> None:
    """Long-running workers: they log with structlog, serve /metrics and /healthz, and stop
    cleanly on SIGTERM (the batch in flight finishes)."""


def serve_while(
    run: Callable[[], None], health: HealthFn, *, host: str, port: int, dc: str
) -> None:
    """Serve /metrics and /healthz on ``host:port`` while ``run`` runs, with the garbage
    collector set for batches (:mod:`pipeline.gc_tuning`)."""
    from pipeline.gc_tuning import tune_for_batches
    from pipeline.logging import get_logger
    from pipeline.observability import ObservabilityServer

    tune_for_batches()

    with ObservabilityServer(health, host=host, port=port) as server:
        get_logger("cli.worker").info(
            "serving metrics and health", host=host, port=server.port, dc=dc
        )
        run()


def data_site(topology_file: Path, dc: str) -> tuple[Topology, DataCenter]:
    """The topology and its DC ``dc``, once the DC's database passed :func:`check_schema`."""
    topology = load_topology(topology_file)
    site = topology.dc(dc)
    check_schema(dc, site.database)
    return topology, site


def check_schema(dc: str, database: str) -> None:
    """Refuse to start against a database whose migrations are not exactly this release's (a
    landed file edited since, a newer release, migrations missing); one that cannot be reached
    now is not checked, since the worker waits for it anyway."""
    from pipeline.db import check_migrations, connect
    from pipeline.errors import MigrationError, UnreachableError
    from pipeline.logging import get_logger

    try:
        conn = connect(database)
    except UnreachableError as e:
        get_logger("cli.worker").warning("migrations not checked", dc=dc, error=str(e))
        return
    try:
        pending = check_migrations(conn)
    finally:
        conn.close()
    if pending:
        raise MigrationError(
            f"{dc}'s database lacks {len(pending)} migrations of this release"
            f" ({', '.join(m.filename for m in pending)}): run `coopr-pipeline db migrate"
            f" --dc {dc}` first"
        )


@worker.command("relay")
@click.option("--dc", required=True, help="The DC whose outbox to publish.")
@topology_option
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=5000,
    show_default=True,
    help="Rows per shard and round.",
)
@batch_bytes_option
@click.option(
    "--ack-timeout",
    type=click.FloatRange(0.1, 600),
    default=5.0,
    show_default=True,
    help="Seconds to wait for Kafka's acknowledgements before a shard counts as stuck and the"
    " others go on.",
)
@click.option(
    "--lock-silence",
    type=click.FloatRange(3, 3600),
    default=15.0,
    show_default=True,
    help="Seconds without a statement after which the database ends the active relay's"
    " session, so a standby takes over (above --poll-interval and --ack-timeout).",
)
@db_dead_peer_option
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
@metrics_host_option
@metrics_port_option
def worker_relay(
    dc: str,
    topology_file: Path,
    batch_size: int,
    batch_bytes: int,
    ack_timeout: float,
    lock_silence: float,
    db_dead_peer_s: int,
    poll_interval: float,
    retention: float,
    metrics_host: str,
    metrics_port: int,
) -> None:
    """Publish this DC's outbox to its shard topics (one active relay per DC)."""
    from pipeline.db import ConnectionTimeouts
    from pipeline.kafka_config import settings_for
    from pipeline.shutdown import stop_on_signals
    from producer.relay import Relay, RelayConfig

    _, site = data_site(topology_file, dc)
    config = RelayConfig(
        dc=dc,
        database=site.database,
        kafka=settings_for(site, f"coopr-relay-{dc}"),
        batch_size=batch_size,
        batch_bytes=batch_bytes,
        ack_timeout_s=ack_timeout,
        lock_silence_s=lock_silence,
        timeouts=ConnectionTimeouts.detecting_in(db_dead_peer_s),
        poll_interval_s=poll_interval,
        retention_s=retention,
    )
    with Relay(config, stop_on_signals()) as relay:
        serve_while(relay.run, relay.health, host=metrics_host, port=metrics_port, dc=dc)


@worker.command("applier")
@click.option("--dc", required=True, help="The DC whose replica tables to keep up to date.")
@topology_option
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=5000, show_default=True)
@batch_bytes_option
@db_dead_peer_option
@metrics_host_option
@metrics_port_option
def worker_applier(
    dc: str,
    topology_file: Path,
    batch_size: int,
    batch_bytes: int,
    db_dead_peer_s: int,
    metrics_host: str,
    metrics_port: int,
) -> None:
    """Apply the mirrored shard topics this DC replicates to its Postgres."""
    from consumer.applier import Applier, ApplierConfig, replicated_topics
    from pipeline.db import ConnectionTimeouts
    from pipeline.kafka_config import settings_for
    from pipeline.shutdown import stop_on_signals

    topology, site = data_site(topology_file, dc)
    config = ApplierConfig(
        dc=dc,
        database=site.database,
        kafka=settings_for(site, f"coopr-applier-{dc}"),
        topics=replicated_topics(topology, dc),
        batch_size=batch_size,
        batch_bytes=batch_bytes,
        timeouts=ConnectionTimeouts.detecting_in(db_dead_peer_s),
    )
    with Applier(config, stop_on_signals()) as applier:
        serve_while(applier.run, applier.health, host=metrics_host, port=metrics_port, dc=dc)


@worker.command("controller")
@click.option("--dc", required=True, help="The DC whose controller to run.")
@topology_option
@click.option(
    "--interval",
    type=click.FloatRange(0.05, 60),
    default=1.0,
    show_default=True,
    help="Seconds between this DC's heartbeats.",
)
@click.option(
    "--failure-timeout",
    type=click.FloatRange(0.5, 3600),
    default=10.0,
    show_default=True,
    help="Seconds without a DC's heartbeat after which it is suspected.",
)
@click.option(
    "--lease",
    type=click.FloatRange(0.1, 3600),
    default=None,
    help="Seconds a lease runs past the heartbeat it rests on; below --failure-timeout."
    "  [default: half of --failure-timeout]",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(0, 600),
    default=2.0,
    show_default=True,
    help="Longest wait, in seconds, for this DC's applier to reach the end of a failed"
    " owner's topic before claiming its shard.",
)
@metrics_host_option
@metrics_port_option
def worker_controller(
    dc: str,
    topology_file: Path,
    interval: float,
    failure_timeout: float,
    lease: float | None,
    drain_timeout: float,
    metrics_host: str,
    metrics_port: int,
) -> None:
    """Watch every DC's heartbeats, hold this DC's leases and fail shards over
    (docs/ownership.md). One per DC is active; others wait as standbys."""
    from controller.worker import Controller, ControllerConfig
    from pipeline.kafka_config import settings_for
    from pipeline.shutdown import stop_on_signals

    if failure_timeout <= 2 * interval:
        raise click.UsageError("--failure-timeout must be more than twice --interval")
    lease_s = failure_timeout / 2 if lease is None else lease
    if lease_s >= failure_timeout:
        raise click.UsageError("--lease must be below --failure-timeout")
    topology = load_topology(topology_file)
    site = topology.dc(dc)
    if not site.witness:
        check_schema(dc, site.database)
    config = ControllerConfig(
        dc=dc,
        kafka=settings_for(site, f"coopr-controller-{dc}"),
        topology=topology,
        database=None if site.witness else site.database,
        interval_s=interval,
        failure_timeout_s=failure_timeout,
        lease_s=lease_s,
        drain_timeout_s=drain_timeout,
    )
    with Controller(config, stop_on_signals()) as controller:
        serve_while(controller.run, controller.health, host=metrics_host, port=metrics_port, dc=dc)
