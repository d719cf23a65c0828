"""Secrets from the environment, and kept out of every log line (pure: no stack)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.logging import hide_secrets
from pipeline.secrets import is_secret_key, load_secret, redact


def test_a_file_variable_gives_the_secret_and_both_set_names_both_not_the_value(
    tmp_path: Path,
) -> None:
    path = tmp_path / "kafka-password"
    path.write_text("file-secret-4711\n")
    env = {"COOPR_KAFKA_PASSWORD_FILE": str(path)}
    assert load_secret("COOPR_KAFKA_PASSWORD", env) == "file-secret-4711"
    assert load_secret("COOPR_KAFKA_PASSWORD", {"COOPR_KAFKA_PASSWORD": "plain-4711"}) == (
        "plain-4711"
    )
    assert load_secret("COOPR_KAFKA_PASSWORD", {}) is None
    with pytest.raises(ConfigError) as both:
        load_secret("COOPR_KAFKA_PASSWORD", {**env, "COOPR_KAFKA_PASSWORD": "plain-4711"})
    assert "COOPR_KAFKA_PASSWORD and COOPR_KAFKA_PASSWORD_FILE" in str(both.value)
    assert "4711" not in str(both.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_secret("X", {"X_FILE": str(tmp_path / "missing")})


def test_loaded_secrets_are_taken_out_of_any_text() -> None:
    secret = load_secret("S", {"S": "hunter2-and-more"})
    assert secret is not None
    text = f"connect failed: SASL auth as coopr with {secret} refused"
    assert redact(text) == "connect failed: SASL auth as coopr with *** refused"
    assert redact("nothing secret here") == "nothing secret here"


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("sasl.password", True),
        ("ssl.key.password", True),
        ("api_token", True),
        ("client-secret", True),
        ("password_file", False),
        ("passwords_checked", False),
        ("topic", False),
    ],
)
def test_secret_keys_are_known_by_name(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_the_log_processor_hides_secret_fields_and_known_values_nested_too() -> None:
    load_secret("T", {"T": "s3cr3t-value-99"})
    event = {
        "event": "connecting",
        "sasl.password": "anything",
        "config": {"bootstrap.servers": "b:9092", "sasl.password": "x", "note": "s3cr3t-value-99"},
        "exception": "Traceback ...\nError: bad password s3cr3t-value-99",
        "attempts": [1, "s3cr3t-value-99"],
        "port": 9092,
    }
    out = hide_secrets(None, "info", dict(event))
    assert out["sasl.password"] == "***"
    assert out["config"] == {"bootstrap.servers": "b:9092", "sasl.password": "***", "note": "***"}
    assert out["exception"].endswith("bad password ***")
    assert out["attempts"] == [1, "***"] and out["port"] == 9092
    assert "s3cr3t" not in json.dumps(out)


def test_a_worker_process_never_logs_the_database_password() -> None:
    """The configured logging of a real process: PGPASSWORD in a message and an exception."""
    code = (
        "import os\n"
        "from pipeline.logging import configure_logging, get_logger\n"
        "configure_logging('info', json=True)\n"
        "log = get_logger('t')\n"
        "pw = os.environ['PGPASSWORD']\n"
        "log.info('dsn', dsn=f'postgresql://u:{pw}@h/db', password=pw)\n"
        "try:\n"
        "    raise RuntimeError(f'auth failed for {pw}')\n"
        "except RuntimeError:\n"
        "    log.exception('failed')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PGPASSWORD": "pg-pass-31337"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line["event"] for line in lines] == ["dsn", "failed"]
    assert "31337" not in done.stderr and "***" in done.stderr
