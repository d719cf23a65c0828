"""The DC's database: connections and versioned migrations.

Migrations are the files ``pipeline/migrations/NNNN_name.sql``, applied in order, each in
its own transaction together with its row in ``schema_migrations``; a session advisory
lock makes concurrent ``migrate`` calls wait for each other instead of racing.
A released migration is never edited: a change is a new file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from pipeline.errors import ConfigError, UnreachableError
from pipeline.ownership import seed_ownership
from pipeline.topology import Topology

__all__ = ["Migration", "connect", "fetch_all", "migrate", "migrations", "prepare"]

_MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
# Any constant works; it only has to be the same in every process that migrates.
_MIGRATE_LOCK = 0x636F6F7072


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: its version number, name and SQL."""

    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every shipped migration, in version order."""
    found = []
    for path in sorted(_MIGRATIONS_DIR.glob("*.sql")):
        m = _NAME.fullmatch(path.name)
        if m is None:
            raise ConfigError("migration files are named NNNN_name.sql", source=str(path))
        found.append(Migration(int(m.group(1)), m.group(2), path.read_text(encoding="utf-8")))
    return found


def connect(dsn: str, *, connect_timeout_s: int = 5) -> psycopg2.extensions.connection:
    """Open a connection; :class:`UnreachableError` (without the password) if it fails."""
    try:
        return psycopg2.connect(dsn, connect_timeout=connect_timeout_s)
    except psycopg2.OperationalError as e:
        host = psycopg2.extensions.parse_dsn(dsn).get("host", "?")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreachableError(f"database at {host} is unreachable: {first}") from None


def fetch_all(dsn: str, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    """Run one statement in its own connection and transaction; its rows ([] for none)."""
    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def migrate(dsn: str, dc: str) -> list[Migration]:
    """Apply the migrations the database lacks and bind it to ``dc``; returns those applied.

    Raises :class:`ConfigError` when the database already belongs to another DC.
    """
    applied: list[Migration] = []
    conn = connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK,))
        conn.autocommit = False
        with conn, conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        for migration in migrations():
            with conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = %s", (migration.version,)
                )
                if cur.fetchone() is not None:
                    continue
                cur.execute(migration.sql)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                applied.append(migration)
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO local_dc (name) VALUES (%s) ON CONFLICT DO NOTHING", (dc,))
            cur.execute("SELECT name FROM local_dc")
            row = cur.fetchone()
            owner = row[0] if row else None
            if owner != dc:
                raise ConfigError(
                    f"this database belongs to DC {owner!r}, not {dc!r}: check the DSN",
                    field="database",
                )
    finally:
        # Closing the session releases the advisory lock.
        conn.close()
    return applied


def prepare(topology: Topology, dc: str) -> list[Migration]:
    """Migrate ``dc``'s database and seed its shard ownership from the topology."""
    applied = migrate(topology.dc(dc).database, dc)
    conn = connect(topology.dc(dc).database)
    try:
        seed_ownership(conn, topology, dc)
    finally:
        conn.close()
    return applied
