"""Migrations against a throwaway database on the stack's dc1 Postgres: a landed migration that
was edited since, or a database a newer release migrated, is refused, naming the file."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import pipeline.db
from cli import main
from pipeline.db import check_migrations, connect, fetch_all, migrate, migrations
from pipeline.errors import MigrationError
from tests.conftest import RunningStack

pytestmark = pytest.mark.stack

DC = "dc1"
SHIPPED = Path(pipeline.db.__file__).with_name("migrations")


def copy_of_shipped(folder: Path) -> Path:
    """A copy of the shipped migration files to edit, as a developer's checkout would."""
    shutil.copytree(SHIPPED, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def tables(dsn: str) -> set[str]:
    rows = fetch_all(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {name for (name,) in rows}


def test_an_edited_landed_migration_is_refused_naming_the_file_and_nothing_is_applied(
    fresh_dsn: str, tmp_path: Path
) -> None:
    assert [m.filename for m in migrate(fresh_dsn, DC)] == [
        m.filename for m in migrations()
    ] and len(migrations()) >= 3
    edited = copy_of_shipped(tmp_path / "migrations")
    with (edited / "0003_coopr_state.sql").open("a") as f:
        f.write("\n-- a column renamed after it landed\n")
    (edited / "0099_later_change.sql").write_text("CREATE TABLE later_change (id int);\n")

    with pytest.raises(MigrationError) as refused:
        migrate(fresh_dsn, DC, migrations(edited))

    assert "0003_coopr_state.sql" in str(refused.value)
    assert "new migration" in str(refused.value)
    assert "later_change" not in tables(fresh_dsn)
    conn = connect(fresh_dsn)
    try:
        with pytest.raises(MigrationError, match=r"0003_coopr_state\.sql"):
            check_migrations(conn, migrations(edited))
        assert check_migrations(conn) == []
    finally:
        conn.close()


def test_db_check_and_db_migrate_exit_1_naming_an_edited_file(
    stack: RunningStack, fresh_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology = tmp_path / "topology.toml"
    topology.write_text(stack.topology_file.read_text().replace(stack.dc(DC).database, fresh_dsn))
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(main, [*args, "--dc", DC, "--topology", str(topology)])
        return result.exit_code, result.output

    assert run("db", "check")[0] == 1  # nothing applied yet
    assert run("db", "migrate")[0] == 0
    code, output = run("db", "check")
    assert code == 0, output
    assert f"all {len(migrations())} migrations applied" in output

    edited = copy_of_shipped(tmp_path / "migrations")
    with (edited / "0003_coopr_state.sql").open("a") as f:
        f.write("\n-- tidied up after it landed\n")
    shipped = pipeline.db.migrations
    monkeypatch.setattr(pipeline.db, "migrations", lambda source=None: shipped(source or edited))

    for command in ("check", "migrate"):
        code, output = run("db", command)
        assert code == 1, output
        assert "0003_coopr_state.sql" in output and "new migration" in output, output


def test_a_database_a_newer_release_migrated_is_refused_naming_the_version(
    fresh_dsn: str, tmp_path: Path
) -> None:
    newer = copy_of_shipped(tmp_path / "migrations")
    (newer / "0099_from_a_newer_release.sql").write_text("CREATE TABLE newer_thing (id int);\n")
    migrate(fresh_dsn, DC, migrations(newer))

    with pytest.raises(MigrationError, match=r"0099_from_a_newer_release\.sql.*newer release"):
        migrate(fresh_dsn, DC)
    conn = connect(fresh_dsn)
    try:
        with pytest.raises(MigrationError, match=r"0099"):
            check_migrations(conn)
    finally:
        conn.close()


def test_migrations_applied_before_checksums_get_theirs_on_first_sight(
    fresh_dsn: str, tmp_path: Path
) -> None:
    migrate(fresh_dsn, DC)
    # As a release from before checksums left it.
    fetch_all(fresh_dsn, "ALTER TABLE schema_migrations DROP COLUMN checksum")
    conn = connect(fresh_dsn)
    try:
        assert check_migrations(conn) == []
    finally:
        conn.close()
    assert (
        fetch_all(
            fresh_dsn,
            "SELECT 1 FROM information_schema.columns"
            " WHERE table_name = 'schema_migrations' AND column_name = 'checksum'",
        )
        == []
    ), "a check changed the database"

    assert migrate(fresh_dsn, DC) == []

    recorded = dict(fetch_all(fresh_dsn, "SELECT version, checksum FROM schema_migrations"))
    assert recorded == {
        int(path.name[:4]): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in SHIPPED.glob("*.sql")
    }
    edited = copy_of_shipped(tmp_path / "migrations")
    with (edited / "0001_local_dc.sql").open("a") as f:
        f.write("\n-- edited\n")
    with pytest.raises(MigrationError, match=r"0001_local_dc\.sql"):
        migrate(fresh_dsn, DC, migrations(edited))


@pytest.mark.parametrize("role", ["relay", "applier"])
def test_a_worker_refuses_to_start_on_a_database_migrated_with_another_file(
    stack: RunningStack, fresh_dsn: str, tmp_path: Path, role: str
) -> None:
    migrate(fresh_dsn, DC)
    conn = connect(fresh_dsn)
    with conn, conn.cursor() as cur:  # as if it had been migrated with an edited 0003
        cur.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 3")
    conn.close()
    topology = tmp_path / "topology.toml"
    topology.write_text(stack.topology_file.read_text().replace(stack.dc(DC).database, fresh_dsn))

    result = CliRunner().invoke(
        main, ["worker", role, "--dc", DC, "--topology", str(topology), "--metrics-port", "0"]
    )

    assert result.exit_code == 1
    assert "0003_coopr_state.sql" in result.output
