"""The alert rules and dashboard in deploy/: valid for promtool, tested, and naming only the
metrics, labels and runbook sections that exist.

Pure: no stack. promtool comes with Debian's ``prometheus`` package, which ``make setup``
installs (deploy/scripts/install-system-deps.sh); the tests that run it skip only without it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

import consumer.applier
import controller.worker
import producer.relay

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "coopr-pipeline.json"
DOC = ROOT / "docs" / "observability.md"

#: The modules whose metrics the workers (relay, applier, controller) serve on /metrics.
WORKER_MODULES: tuple[ModuleType, ...] = (producer.relay, consumer.applier, controller.worker)

#: Exposed series of each metric type, after its family name (prometheus_client's naming).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
#: Labels Prometheus adds (scrape targets) or histograms carry, beside the workers' own.
_OTHER_LABELS = {"le", "job", "instance"}

_METRIC = re.compile(r"\bcoopr_[a-z0-9_]+\b")
_BY = re.compile(r"\bby \(([^)]*)\)")
_ALERT = re.compile(r"^\s*- alert: (\w+)\s*$", re.M)
_RUNBOOK = re.compile(r"runbook_url: docs/observability\.md#(\S+)")
_NOT_FIRING = re.compile(r"alertname: (\w+)\n\s*exp_alerts: \[\]")
_FIRING = re.compile(r"alertname: (\w+)\n\s*exp_alerts:\n\s*- exp_labels:")

promtool_missing = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian: apt-get install prometheus; `make setup` does)",
)


def worker_metrics() -> list[MetricWrapperBase]:
    return [
        value
        for module in WORKER_MODULES
        for value in vars(module).values()
        if isinstance(value, MetricWrapperBase)
    ]


def series(metric: MetricWrapperBase) -> set[str]:
    """The series names a metric is served as: its family name with its type's suffixes."""
    return {metric._name + suffix for suffix in _SUFFIXES[str(metric._type)]}


def exposed_names() -> set[str]:
    """Every series name the workers can serve."""
    return {name for metric in worker_metrics() for name in series(metric)}


def worker_labels() -> set[str]:
    return {label for metric in worker_metrics() for label in metric._labelnames}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_queries() -> list[str]:
    return [t["expr"] for p in panels(dashboard()) for t in p.get("targets", [])]


def dashboard_queries() -> list[str]:
    """The panels' queries and the variables' (Grafana's ``label_values(metric, label)``)."""
    queries = panel_queries()
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def promql(query: str) -> str:
    """A dashboard query with Grafana's variables replaced, as Prometheus would receive it."""
    for variable, value in (("$__rate_interval", "1m"), ("$__range", "1h"), ("$dc", ".*")):
        query = query.replace(variable, value)
    return query


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@promtool_missing
def test_alert_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr


@promtool_missing
def test_alert_rules_pass_their_unit_tests() -> None:
    done = promtool("test", "rules", str(ALERT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_and_a_not_firing_case() -> None:
    alerts = _ALERT.findall(ALERTS.read_text())
    tests = ALERT_TESTS.read_text()
    assert len(alerts) >= 8
    assert len(set(alerts)) == len(alerts), "alert names repeat"
    assert set(_FIRING.findall(tests)) >= set(alerts), "alerts without a firing case"
    assert set(_NOT_FIRING.findall(tests)) >= set(alerts), "alerts without a not-firing case"


def test_every_alert_has_for_severity_summary_description_and_a_runbook_section() -> None:
    text = ALERTS.read_text()
    rules = re.split(r"^\s*- alert: ", text, flags=re.M)[1:]
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in DOC.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in rules:
        name = rule.split()[0]
        for field in ("for:", "severity:", "summary:", "description:"):
            assert f"\n        {field}" in rule or f"\n          {field}" in rule, (name, field)
        assert "$labels.dc" in rule, f"{name} does not name the DC"
        runbook = _RUNBOOK.findall(rule)
        assert runbook == [name.lower()], f"{name}: runbook_url {runbook}"
        assert runbook[0] in headings, f"{name}: no section #{runbook[0]} in {DOC.name}"


def test_the_dashboard_parses_and_every_panel_has_a_query() -> None:
    board = dashboard()
    names = [var["name"] for var in board["templating"]["list"]]
    assert names[:2] == ["datasource", "dc"]
    assert board["templating"]["list"][0]["type"] == "datasource"
    shown = [p for p in panels(board) if p["type"] != "row"]
    assert len(shown) >= 10
    for panel in shown:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['title']!r} has no query"
        for target in targets:
            assert target["expr"].strip(), f"panel {panel['title']!r} has an empty query"
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [p["id"] for p in panels(board)]
    assert len(set(ids)) == len(ids), "panel ids repeat"


@promtool_missing
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query, with Grafana's variables filled in, as a recording rule."""
    rules = "groups:\n  - name: dashboard\n    rules:\n" + "".join(
        f"      - record: dashboard:query_{i}\n        expr: {json.dumps(promql(q))}\n"
        for i, q in enumerate(panel_queries())
    )
    (tmp_path / "dashboard.rules.yml").write_text(rules)
    done = promtool("check", "rules", "dashboard.rules.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alerts_and_dashboard_name_only_metrics_the_workers_serve() -> None:
    """A renamed or removed metric breaks this test, not the alerts in production."""
    exposed = exposed_names()
    assert "coopr_applier_replication_delay_seconds_bucket" in exposed
    referenced = {
        "alerts.yml": set(_METRIC.findall(ALERTS.read_text())),
        "alerts.test.yml": set(_METRIC.findall(ALERT_TESTS.read_text())),
        DASHBOARD.name: {m for q in dashboard_queries() for m in _METRIC.findall(q)},
    }
    for where, names in referenced.items():
        assert names, where
        assert names <= exposed, f"{where} names metrics no worker serves: {names - exposed}"


def test_alerts_and_dashboard_group_by_labels_the_metrics_carry() -> None:
    known = worker_labels() | _OTHER_LABELS
    queries = [*dashboard_queries(), ALERTS.read_text()]
    groups = [group for q in queries for group in _BY.findall(q)]
    used = {label.strip() for group in groups for label in group.split(",")}
    assert "source_dc" in used
    assert used <= known, f"labels no metric carries: {used - known}"


def test_the_dashboard_and_the_doc_cover_every_worker_metric() -> None:
    shown = {m for q in dashboard_queries() for m in _METRIC.findall(q)}
    doc = DOC.read_text()
    for metric in worker_metrics():
        family = metric._name
        assert series(metric) & shown, f"{family} is on no dashboard panel"
        named = family + ("_total" if metric._type == "counter" else "")
        assert f"`{named}`" in doc, f"{named} is not described in {DOC.name}"


@promtool_missing
def test_the_example_scrape_config_passes_promtool_check() -> None:
    done = promtool("check", "config", str(ALERTS.parent / "prometheus.example.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
