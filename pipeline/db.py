"""The DC's database: connections and versioned migrations.

Migrations are the files ``pipeline/migrations/NNNN_name.sql``, applied in order, each in
its own transaction together with its row in ``schema_migrations`` (version, name, sha256 of
the file); a session advisory lock makes concurrent ``migrate`` calls wait for each other
instead of racing. A landed migration is never edited: a change is a new file. So a database
whose recorded checksum differs from the shipped file, or that has a version this release
does not ship (a newer release migrated it), is refused before anything is applied.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import psycopg2
import psycopg2.extensions

from pipeline.errors import ConfigError, MigrationError, UnreachableError, first_line
from pipeline.ownership import seed_ownership
from pipeline.topology import Topology

__all__ = [
    "ConnectionTimeouts",
    "Migration",
    "check_migrations",
    "connect",
    "fetch_all",
    "migrate",
    "migrations",
    "prepare",
]

_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
# Any constant works; it only has to be the same in every process that migrates.
_MIGRATE_LOCK = 0x636F6F7072


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: its version number, name, SQL and the sha256 of its bytes (hex)."""

    version: int
    name: str
    sql: str
    checksum: str

    @property
    def filename(self) -> str:
        """The file's name: ``0003_coopr_state.sql``."""
        return f"{self.version:04d}_{self.name}.sql"


def migrations(source: Traversable | None = None) -> list[Migration]:
    """Every migration in ``source`` (default: the shipped ``pipeline/migrations``), in order."""
    folder = source if source is not None else files("pipeline") / "migrations"
    found = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        m = _NAME.fullmatch(entry.name)
        if m is None:
            raise ConfigError("migration files are named NNNN_name.sql", source=str(entry))
        body = entry.read_bytes()
        found.append(
            Migration(
                version=int(m.group(1)),
                name=m.group(2),
                sql=body.decode("utf-8"),
                checksum=hashlib.sha256(body).hexdigest(),
            )
        )
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


def fetch_all(
    dsn: str, sql: str, args: Sequence[object] | Mapping[str, object] = ()
) -> list[tuple[Any, ...]]:
    """Run one statement in its own connection and transaction; its rows ([] for none)."""
    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def _recorded(cur: psycopg2.extensions.cursor) -> dict[int, tuple[str, str | None]]:
    """Version -> (name, checksum) of each migration ``schema_migrations`` records; {} if none.

    The checksum is None in rows applied before checksums were recorded.
    """
    cur.execute("SELECT 1 WHERE to_regclass('schema_migrations') IS NOT NULL")
    if cur.fetchone() is None:
        return {}
    # to_jsonb reads the column where it exists and NULL where it does not yet, so that a
    # check of a database from before checksums need not add it.
    cur.execute("SELECT version, name, to_jsonb(m) ->> 'checksum' FROM schema_migrations m")
    return {version: (name, checksum) for version, name, checksum in cur.fetchall()}


def _pending(
    recorded: Mapping[int, tuple[str, str | None]], shipped: Sequence[Migration]
) -> list[Migration]:
    """The ``shipped`` migrations not yet applied; :class:`MigrationError` unless every
    recorded one is shipped, unchanged."""
    by_version = {m.version: m for m in shipped}
    unknown = sorted(set(recorded) - set(by_version))
    if unknown:
        version, (name, _) = unknown[-1], recorded[unknown[-1]]
        raise MigrationError(
            f"the database has migration {version:04d}_{name}.sql, which this release does not"
            " ship: a newer release migrated it; run that release or a newer one against it"
        )
    for version, (name, checksum) in sorted(recorded.items()):
        shipped_as = by_version[version]
        if name != shipped_as.name:
            changed = f"applied as {version:04d}_{name}.sql"
        elif checksum is not None and checksum != shipped_as.checksum:
            changed = f"sha256 {shipped_as.checksum[:12]}..., applied {checksum[:12]}..."
        else:
            continue
        raise MigrationError(
            f"migration {shipped_as.filename} is not the file applied to this database"
            f" ({changed}): a migration that has landed is never edited; restore it and add a"
            " new migration instead"
        )
    return [m for m in shipped if m.version not in recorded]


def check_migrations(
    conn: psycopg2.extensions.connection, shipped: Sequence[Migration] | None = None
) -> list[Migration]:
    """Verify the database's migrations against ``shipped`` (default: this release's) without
    changing anything; returns those it lacks. Read in the connection's transaction.

    Raises :class:`MigrationError` when a recorded migration is not shipped, or not unchanged.
    """
    with conn.cursor() as cur:
        return _pending(_recorded(cur), migrations() if shipped is None else shipped)


def migrate(dsn: str, dc: str, shipped: Sequence[Migration] | None = None) -> list[Migration]:
    """Apply the ``shipped`` migrations (default: this release's) the database lacks and bind
    it to ``dc``; returns those applied.

    Raises :class:`MigrationError`, having applied nothing, as :func:`check_migrations` does,
    and :class:`ConfigError` when the database already belongs to another DC.
    """
    shipped = migrations() if shipped is None else shipped
    conn = connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK,))
        conn.autocommit = False
        with conn, conn.cursor() as cur:
            # Created here, not by a migration: it is what records the migrations.
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text")
            recorded = _recorded(cur)
            pending = _pending(recorded, shipped)
            # Rows from before checksums: the file shipped now is taken for the one applied.
            for m in shipped:
                if m.version in recorded and recorded[m.version][1] is None:
                    cur.execute(
                        "UPDATE schema_migrations SET checksum = %s WHERE version = %s",
                        (m.checksum, m.version),
                    )
        for migration in pending:
            with conn, conn.cursor() as cur:
                cur.execute(migration.sql)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
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
    return pending


def prepare(topology: Topology, dc: str) -> list[Migration]:
    """Migrate ``dc``'s database and seed its shard ownership from the topology."""
    applied = migrate(topology.dc(dc).database, dc)
    conn = connect(topology.dc(dc).database)
    try:
        seed_ownership(conn, topology, dc)
    finally:
        conn.close()
    return applied
