"""Running the operator's commands as an operator does (a subprocess, its exit status, stdout
and stderr), and a pipeline (relays and appliers) on the session's stack while they run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import RunningStack
from tests.workers import WorkerProcess


def run_cli(
    topology_file: Path,
    *args: str,
    timeout_s: float = 180,
    expect: int | None = 0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``coopr-pipeline ARGS --topology F`` in an environment of ``env`` (default: this
    process's); asserts the exit status (unless ``expect`` is None) and that no traceback was
    printed, whatever the status."""
    done = subprocess.run(
        [sys.executable, "-m", "cli", "--log-json", *args, "--topology", str(topology_file)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
    )
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    if expect is not None:
        assert done.returncode == expect, (
            f"exit {done.returncode}, not {expect}: {done.stderr[-3000:]}"
        )
    return done


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` that is a JSON object (progress or log lines are skipped)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@contextmanager
def pipeline(
    stack: RunningStack, relays: list[str], appliers: list[str]
) -> Iterator[dict[str, WorkerProcess]]:
    """Relays and appliers (``worker relay|applier --dc DC``) running on ``stack``, keyed
    ``relay-dc1``, ``applier-dc2``; stopped by SIGTERM at the end (killed if they hang)."""
    started: dict[str, WorkerProcess] = {}
    try:
        for dc in relays:
            started[f"relay-{dc}"] = WorkerProcess(
                stack.topology_file,
                *("worker", "relay", "--dc", dc, "--poll-interval", "0.2"),
                env=stack.worker_env("relay", dc),
            )
        for dc in appliers:
            started[f"applier-{dc}"] = WorkerProcess(
                stack.topology_file,
                *("worker", "applier", "--dc", dc),
                env=stack.worker_env("applier", dc),
            )
        yield started
    finally:
        for worker in started.values():
            worker.ask_to_stop()  # all at once: each takes up to a second to stop
        for worker in started.values():
            try:
                worker.proc.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
