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

from pipeline.errors import ConfigError, UnreachableError, first_line
from pipeline.ownership import seed_ownership
from pipeline.topology import Topology

__all__ = [
    "ConnectionTimeouts",
    "Migration",
    "connect",
    "fetch_all",
    "migrate",
    "migrations",
    "prepare",
]

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


@dataclass(frozen=True, slots=True)
class ConnectionTimeouts:
    """How soon either end of a database connection notices the other is gone (seconds).

    TCP keepalives and ``tcp_user_timeout`` are set on both ends: in libpq, so a client
    notices a dead server or network, and in the server session (``options``), so the server
    ends the session of a dead client host and releases what it held (the relay's advisory
    lock): about ``keepalive_idle_s + keepalive_interval_s * keepalive_count`` when idle,
    ``user_timeout_s`` when data goes unacknowledged. The defaults detect a dead peer in
    12 s either way. Neither helps when something between the two ends keeps TCP alive (a proxy, a
    pooler): sessions that hold a lock also set :func:`connect`'s ``idle_session_timeout_s``.
    """

    connect_s: int = 5
    keepalive_idle_s: int = 6
    keepalive_interval_s: int = 2
    keepalive_count: int = 3
    user_timeout_s: int = 12

    @classmethod
    def detecting_in(cls, seconds: int) -> ConnectionTimeouts:
        """Timeouts that notice a dead peer in about ``seconds`` (at least 3), idle or not:
        half of it idle, then three probes over the other half."""
        interval = max(1, seconds // 6)
        return cls(
            keepalive_idle_s=max(1, seconds - 3 * interval),
            keepalive_interval_s=interval,
            user_timeout_s=seconds,
        )


def connect(
    dsn: str,
    *,
    timeouts: ConnectionTimeouts = ConnectionTimeouts(),
    idle_session_timeout_s: float | None = None,
) -> psycopg2.extensions.connection:
    """Open a connection; :class:`UnreachableError` (without the password) if it fails.

    With ``idle_session_timeout_s`` the server ends the session once no statement has
    arrived for that long (PostgreSQL 14+): the owner of the session must run one more often.
    """
    server = {
        "tcp_keepalives_idle": timeouts.keepalive_idle_s,
        "tcp_keepalives_interval": timeouts.keepalive_interval_s,
        "tcp_keepalives_count": timeouts.keepalive_count,
        "tcp_user_timeout": timeouts.user_timeout_s * 1000,
    }
    if idle_session_timeout_s is not None:
        server["idle_session_timeout"] = int(idle_session_timeout_s * 1000)
    try:
        # Options the DSN sets itself (a search_path, say) are kept.
        given = psycopg2.extensions.parse_dsn(dsn).get("options", "")
    except psycopg2.ProgrammingError:
        # psycopg2's message quotes the DSN, password and all.
        raise ConfigError("the database DSN is not valid libpq syntax", field="database") from None
    try:
        return psycopg2.connect(
            dsn,
            connect_timeout=timeouts.connect_s,
            keepalives=1,
            keepalives_idle=timeouts.keepalive_idle_s,
            keepalives_interval=timeouts.keepalive_interval_s,
            keepalives_count=timeouts.keepalive_count,
            tcp_user_timeout=timeouts.user_timeout_s * 1000,
            options=" ".join([given, *(f"-c {key}={value}" for key, value in server.items())]),
        )
    except psycopg2.OperationalError as e:
        host = psycopg2.extensions.parse_dsn(dsn).get("host", "?")
        raise UnreachableError(f"database at {host} is unreachable: {first_line(e)}") from None


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
