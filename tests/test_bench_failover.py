"""``bench failover``: the refused window computed from a probe's timeline (quick), and one run
on the real stack (``failover_stack``) whose figures are present and within the targets'
reach."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from bench.failover import longest_refusal
from tests.conftest import RunningStack


def test_the_refused_window_runs_from_the_first_refusal_to_the_next_accepted_write() -> None:
    timeline = [(0.0, True), (1.0, False), (1.02, False), (1.3, True), (2.0, False), (2.1, True)]
    assert longest_refusal(timeline) == pytest.approx(0.3)


def test_a_refusal_no_write_ends_lasts_until_the_last_attempt() -> None:
    assert longest_refusal([(0.0, True), (5.0, False), (5.5, False)]) == pytest.approx(0.5)
    assert longest_refusal([(1.0, False), (3.0, False)]) == pytest.approx(2.0)


def test_nothing_refused_is_a_zero_window() -> None:
    assert longest_refusal([]) == 0.0
    assert longest_refusal([(0.0, True), (0.02, True)]) == 0.0


TIMEOUT_S = 5.0


@pytest.mark.stack
@pytest.mark.slow
def test_one_failover_run_reports_its_figures(failover_stack: RunningStack) -> None:
    from cli.app import main

    result = CliRunner().invoke(
        main,
        [
            *("bench", "failover", "--runs", "1", "--failure-timeout", str(TIMEOUT_S)),
            *("--rate", "10", "--run-dir", str(failover_stack.run_dir)),
        ],
        standalone_mode=False,
    )
    assert result.exception is None, result.output
    figures = result.return_value
    print(result.output)
    assert figures["runs"] == 1
    # The takeover waits out T, so it cannot be faster; the target is T + 2 s.
    assert TIMEOUT_S < figures["failover_first_write_max_s"] < TIMEOUT_S + 15
    assert figures["failover_first_write_max_s"] <= figures["failover_all_shards_max_s"]
    assert figures["orphans_max"] >= 0 and math.isfinite(figures["expected_loss_p50"])
    assert 0 < figures["mirror_delay_p50_ms"] < 30_000
    # A planned move refuses writes for a relay round trip and two mirror delays at least.
    assert 0 < figures["move_refused_max_ms"] < 10_000
    assert "failover time (kill to first write accepted by the new owner)" in result.output
