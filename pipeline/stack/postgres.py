"""One PostgreSQL instance per DC for the local stack, run as the ``postgres`` user when root.

PostgreSQL refuses to run as root, so as root the data directory belongs to ``postgres``.
That user must be able to reach it: when the run dir or a folder above it is closed to
others (``/root`` and ``mkdtemp`` folders are), the data lives in
``/var/tmp/coopr-pipeline-<hash>/`` instead and the run dir holds a link to it.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
from psycopg2 import sql

from pipeline.errors import DependencyMissingError
from pipeline.stack.processes import (
    POSTGRES,
    ProcessRecord,
    process_name,
    run_to_completion,
    spawn,
)
from pipeline.stack.runtime import pg_bindir
from pipeline.stack.security import StackSecurity, write_private
from pipeline.topology import DataCenter

__all__ = ["admin_dsn", "create_database", "data_dir", "remove_data", "start_postgres"]

_SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    # TCP only: a socket folder would need its own permissions and cleanup.
    "unix_socket_directories": "",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "log_min_messages": "warning",
}


def _server_user() -> str | None:
    """``postgres`` when running as root (initdb refuses root), else the current user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise DependencyMissingError(
            "running as root, PostgreSQL needs the `postgres` user: apt-get install postgresql"
        ) from None
    return "postgres"


def _reachable_by_others(path: Path) -> bool:
    path = path.resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def data_dir(run_dir: Path, dc: DataCenter) -> Path:
    """The data directory of ``dc``'s instance (see the module doc for where it lives)."""
    link = run_dir / "postgres" / dc.name
    if _server_user() is None or _reachable_by_others(run_dir):
        return link
    digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]
    target = Path("/var/tmp") / f"coopr-pipeline-{digest}" / dc.name
    if not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    return target


def remove_data(run_dir: Path, dc: DataCenter) -> None:
    """Delete ``dc``'s data directory, wherever :func:`data_dir` put it."""
    target = data_dir(run_dir, dc)
    shutil.rmtree(target, ignore_errors=True)
    link = run_dir / "postgres" / dc.name
    if link.is_symlink():
        link.unlink()


def _initdb(data: Path, dc: DataCenter, user: str | None, security: StackSecurity | None) -> None:
    """Create ``dc``'s cluster in ``data``: trusting local connections, or with ``security``
    the ``postgres`` password from the stack's secrets and TLS with scram-sha-256 only."""
    data.mkdir(parents=True, exist_ok=True)
    if user is not None:
        shutil.chown(data, user, user)
        shutil.chown(data.parent, user, user)
    argv = [str(pg_bindir() / "initdb"), "-D", str(data), "-U", "postgres"]
    argv += ["-E", "UTF8", "--locale=C", "--no-instructions"]
    if security is None:
        run_to_completion([*argv, "--auth=trust"], what=f"initdb for {dc.name}", user=user)
        return
    # initdb reads the password from a file the server's user can open, never an argument.
    pwfile = data.parent / f".pwfile-{dc.name}"
    write_private(pwfile, security.password(f"postgres-{dc.name}").encode())
    try:
        if user is not None:
            shutil.chown(pwfile, user, user)
        run_to_completion(
            [*argv, "--auth=scram-sha-256", f"--pwfile={pwfile}"],
            what=f"initdb for {dc.name}",
            user=user,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    # The server wants its key owned by its user and closed to others.
    for source, target in (
        (security.cert(dc.name), "server.crt"),
        (security.key(dc.name), "server.key"),
    ):
        write_private(data / target, source.read_bytes())
        if user is not None:
            shutil.chown(data / target, user, user)
    (data / "pg_hba.conf").write_text(
        "# TLS and scram-sha-256 only (stack up --secure).\n"
        "hostssl all all 127.0.0.1/32 scram-sha-256\n"
    )


def start_postgres(
    run_dir: Path, dc: DataCenter, log: Path, security: StackSecurity | None = None
) -> ProcessRecord:
    """initdb (first time only) and start ``dc``'s server on the port of its DSN; with
    ``security``, over TLS with passwords only."""
    bindir = pg_bindir()
    user = _server_user()
    data = data_dir(run_dir, dc)
    if not (data / "PG_VERSION").exists():
        _initdb(data, dc, user, security)
    settings = {**_SERVER_SETTINGS, "port": str(dc.database_port)}
    if security is not None:
        settings |= {
            "ssl": "on",
            "ssl_cert_file": "server.crt",
            "ssl_key_file": "server.key",
            "password_encryption": "scram-sha-256",
        }
    argv = [str(bindir / "postgres")]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    argv += ["-D", str(data)]
    # The log file is opened before the switch to `postgres`, so root may own it.
    name = process_name(POSTGRES, dc.name)
    return spawn(name, argv, log=log, ports=(dc.database_port,), user=user)


def admin_dsn(dc: DataCenter) -> str:
    """``dc``'s DSN with the ``postgres`` maintenance database, which always exists."""
    return urlsplit(dc.database)._replace(path="/postgres").geturl()


def create_database(dc: DataCenter) -> None:
    """Create the database named in ``dc``'s DSN when it does not exist yet."""
    name = urlsplit(dc.database).path.lstrip("/") or "postgres"
    conn = psycopg2.connect(admin_dsn(dc), connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
