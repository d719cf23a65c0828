"""A password in a DSN never shows: not in reprs, topology errors or `stack status`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli import main
from pipeline.dsn import redact_dsn
from pipeline.errors import ConfigError
from pipeline.stack import local_topology_toml
from pipeline.stack.processes import ProcessRecord, StackState
from pipeline.topology import parse_topology

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (f"postgresql://coopr:{SECRET}@db:5432/coopr", "postgresql://coopr:***@db:5432/coopr"),
        (
            f"postgres://coopr:{SECRET}@h1:5432,h2:5433/coopr",
            "postgres://coopr:***@h1:5432,h2:5433/coopr",
        ),
        (
            f"postgresql://coopr@db/coopr?sslmode=require&password={SECRET}&application_name=x",
            "postgresql://coopr@db/coopr?sslmode=require&password=***&application_name=x",
        ),
        (f"postgresql://db/coopr?PASSWORD={SECRET}", "postgresql://db/coopr?PASSWORD=***"),
        # Unescaped '@' and '/' in the password: hidden whole, not cut at the first one.
        (f"postgresql://coopr:a@b/{SECRET}@db/coopr", "postgresql://coopr:***@db/coopr"),
        (
            f"host=db user=coopr password={SECRET} dbname=coopr",
            "host=db user=coopr password=*** dbname=coopr",
        ),
        (
            f"host=db password = '{SECRET} with \\' quote' dbname=coopr",
            "host=db password = *** dbname=coopr",
        ),
        (f"host=db sslpassword={SECRET}", "host=db sslpassword=***"),
        # Nothing secret: left exactly as written.
        (
            "postgresql://postgres@127.0.0.1:19095/coopr",
            "postgresql://postgres@127.0.0.1:19095/coopr",
        ),
        ("host=db user=coopr dbname=coopr", "host=db user=coopr dbname=coopr"),
    ],
)
def test_redact_dsn_hides_the_password_and_keeps_the_rest(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


def toml_with_passwords() -> str:
    """A local 3-DC topology whose DSNs hold :data:`SECRET`."""
    return local_topology_toml(3, base_port=49090).replace("postgres@", f"postgres:{SECRET}@")


def topology_with_passwords() -> dict[str, Any]:
    return tomllib.loads(toml_with_passwords())


def test_a_dcs_repr_shows_its_dsn_without_the_password() -> None:
    topology = parse_topology(topology_with_passwords())
    dc1 = topology.dc("dc1")

    assert SECRET not in repr(dc1) and SECRET not in repr(topology) and SECRET not in str(dc1)
    assert "postgresql://postgres:***@127.0.0.1:49095/coopr" in repr(dc1)
    assert SECRET in dc1.database  # still what it connects with


def test_a_topology_error_quotes_the_dsn_without_the_password() -> None:
    raw = topology_with_passwords()
    raw["dc"][1]["database"] = f"mysql://coopr:{SECRET}@db/coopr"

    with pytest.raises(ConfigError) as caught:
        parse_topology(raw, source="t.toml")

    assert caught.value.field == "dc[1].database"
    assert SECRET not in str(caught.value)
    assert "mysql://coopr:***@db/coopr" in str(caught.value)


def stack_status(tmp_path: Path, fmt: str) -> str:
    """``stack status`` of a recorded stack whose DSNs hold passwords (its process stopped)."""
    topology_file = tmp_path / "topology.toml"
    topology_file.write_text(toml_with_passwords())
    state = StackState(str(topology_file))
    state.processes["postgres-dc1"] = ProcessRecord(
        name="postgres-dc1", pid=0, ports=(49095,), log="postgres-dc1.log", program="postgres"
    )
    state.save(tmp_path)
    result = CliRunner().invoke(
        main, ["stack", "status", "--format", fmt, "--run-dir", str(tmp_path)]
    )
    assert result.exit_code == 1, result.output  # the process is stopped
    return result.output


def test_stack_status_json_gives_every_dsn_without_its_password(tmp_path: Path) -> None:
    output = stack_status(tmp_path, "json")

    assert SECRET not in output
    assert [dc["database"] for dc in json.loads(output)["dcs"]] == [
        f"postgresql://postgres:***@127.0.0.1:{port}/coopr" for port in (49095, 49105, 49115)
    ]


def test_stack_status_table_shows_no_password(tmp_path: Path) -> None:
    output = stack_status(tmp_path, "table")

    assert SECRET not in output
    assert "postgresql://postgres:***@127.0.0.1:49095/coopr" in output
