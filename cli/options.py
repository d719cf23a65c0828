"""Options several commands share: where the stack runs, the topology, the metrics endpoint."""

from __future__ import annotations

import os
from pathlib import Path

import click

from pipeline.stack.runtime import REPO_ROOT, deploy_dir

__all__ = [
    "batch_bytes_option",
    "db_dead_peer_option",
    "default_run_dir",
    "format_option",
    "metrics_host_option",
    "metrics_port_option",
    "run_dir_option",
    "timeout_option",
    "topology_option",
]


def default_run_dir() -> Path:
    """``$COOPR_RUN_DIR``, else ``.stack`` in the checkout."""
    return Path(os.environ.get("COOPR_RUN_DIR", REPO_ROOT / ".stack"))


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

metrics_port_option = click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port of /metrics and /healthz (0: any free port, logged at start).",
)

# Loopback by default: the endpoints have no authentication, so exposing them is a choice.
metrics_host_option = click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address /metrics and /healthz listen on (0.0.0.0: every interface).",
)

batch_bytes_option = click.option(
    "--batch-bytes",
    type=click.IntRange(1024, 1024**3),
    default=16 * 1024 * 1024,
    show_default=True,
    help="Bytes of events per batch, about (at least one event).",
)

db_dead_peer_option = click.option(
    "--db-dead-peer",
    "db_dead_peer_s",
    type=click.IntRange(4, 3600),
    default=12,
    show_default=True,
    help="Seconds after which either end of a silent database connection counts the other as"
    " gone (TCP keepalives and user timeout, on the client and in the server session).",
)

format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output: a table, or JSON (one object per line for streams).",
)

timeout_option = click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(0.5, 600),
    default=10.0,
    show_default=True,
    help="Seconds a broker or database may take to answer before the command gives up.",
)
