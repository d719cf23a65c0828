"""The command line without a stack: worker options, the metrics endpoint, tables and figures."""

from __future__ import annotations

import json
import math
import urllib.request
from typing import Any

import click
import pytest

from cli import main
from cli.render import table
from cli.worker import serve_while, worker
from pipeline.observability import ObservabilityServer
from pipeline.stats import percentile
from tests.workers import free_port


def _healthy() -> tuple[bool, dict[str, Any]]:
    return True, {"state": "running"}


@pytest.mark.parametrize("name", sorted(worker.commands))
def test_every_worker_takes_metrics_host_defaulting_to_loopback(name: str) -> None:
    command = worker.commands[name]
    options = {p.name: p for p in command.params if isinstance(p, click.Option)}
    assert "metrics_host" in options
    assert options["metrics_host"].default == "127.0.0.1"
    assert "--metrics-host" in options["metrics_host"].opts


def test_metrics_and_health_listen_on_loopback_by_default() -> None:
    with ObservabilityServer(_healthy) as server:
        assert server.host == "127.0.0.1"


def test_serve_while_serves_health_on_the_given_host_and_port_while_running() -> None:
    port = free_port()
    seen: list[dict[str, Any]] = []

    def run() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            seen.append(json.loads(r.read()))

    serve_while(run, _healthy, host="127.0.0.1", port=port, dc="dc1")
    assert seen == [{"state": "running"}]


def test_the_console_script_names_every_command_group() -> None:
    assert set(main.commands) == {
        *("bench", "db", "demo", "deploy", "dlq", "lag", "ownership", "replay", "simulate"),
        *("stack", "status", "topics", "worker"),
    }


def test_tables_align_columns_two_spaces_apart_without_trailing_blanks() -> None:
    assert table(["DC", "ROLE"], [["dc1", "owns 6 shards"], ["dc10", ""]]) == (
        "DC    ROLE\ndc1   owns 6 shards\ndc10"
    )


def test_percentile_interpolates_like_postgres_percentile_cont() -> None:
    # SELECT percentile_cont(q) WITHIN GROUP (ORDER BY v) FROM generate_series(1, 100) v
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 0.5) == pytest.approx(50.5)
    assert percentile(values, 0.99) == pytest.approx(99.01)
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError):
        percentile(values, 1.5)


def test_a_manual_failover_is_refused_without_yes_before_anything_is_asked() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(
        main,
        ["ownership", "failover", "--from", "dc2", "--topology", "deploy/topology.local.toml"],
    )
    assert result.exit_code == 2
    assert "add --yes to confirm" in result.output
