"""Where the external programs of the local stack are: Java, the Kafka jars, PostgreSQL.

``make setup`` installs them (the Kafka jars through Maven into ``.cache/kafka/lib``,
PostgreSQL from Debian's packages); this module only finds them and says exactly what is
missing. Overrides: ``COOPR_KAFKA_LIB`` (folder of jars), ``COOPR_PG_BINDIR`` (folder with
``initdb`` and ``postgres``), ``COOPR_TOXIPROXY`` (the toxiproxy server), ``JAVA_HOME``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from pipeline.errors import DependencyMissingError, StackError
from pipeline.stack.processes import run_to_completion

__all__ = ["REPO_ROOT", "deploy_dir", "java", "kafka_classpath", "pg_bindir", "toxiproxy"]

#: The checkout the package is installed from (editable install).
REPO_ROOT = Path(__file__).resolve().parents[2]


def deploy_dir() -> Path:
    """The ``deploy/`` folder with the Kafka, MirrorMaker 2 and logging templates."""
    return REPO_ROOT / "deploy"


def java() -> str:
    """Path of a Java 17+ ``java``; :class:`DependencyMissingError` if there is none."""
    home = os.environ.get("JAVA_HOME")
    candidate = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not candidate or not Path(candidate).exists():
        raise DependencyMissingError(
            "Java 17 or newer is needed to run Kafka: install it (Debian: apt-get install "
            "openjdk-17-jre-headless) or set JAVA_HOME"
        )
    try:
        out = run_to_completion([candidate, "-version"], what=f"{candidate} -version")
    except StackError as e:
        raise DependencyMissingError(str(e)) from None
    m = re.search(r'version "(\d+)', out)
    if m is None or int(m.group(1)) < 17:
        found = m.group(1) if m else "unknown"
        raise DependencyMissingError(f"{candidate} is Java {found}; Kafka 4 needs Java 17+")
    return candidate


def kafka_classpath() -> str:
    """The classpath of the Kafka runtime that ``make setup`` fetched with Maven."""
    lib = Path(os.environ.get("COOPR_KAFKA_LIB", REPO_ROOT / ".cache" / "kafka" / "lib"))
    if not any(lib.glob("kafka_2.13-*.jar")):
        raise DependencyMissingError(
            f"the Kafka jars are not in {lib}: run `make setup` (Maven fetches them from "
            "deploy/kafka/pom.xml) or set COOPR_KAFKA_LIB"
        )
    return f"{lib}/*"


def pg_bindir() -> Path:
    """Folder of the newest installed PostgreSQL server binaries (``initdb``, ``postgres``)."""
    override = os.environ.get("COOPR_PG_BINDIR")
    candidates = [Path(override)] if override else []
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    if (found := shutil.which("initdb")) is not None:
        candidates.append(Path(found).resolve().parent)
    for c in candidates:
        if (c / "initdb").exists() and (c / "postgres").exists():
            return c
    raise DependencyMissingError(
        "PostgreSQL server binaries (initdb, postgres) were not found: run `make setup` "
        "(Debian: apt-get install postgresql) or set COOPR_PG_BINDIR"
    )


def toxiproxy() -> str:
    """Path of the toxiproxy server that ``make setup`` built with Go into ``.cache/toxiproxy``."""
    override = os.environ.get("COOPR_TOXIPROXY")
    candidates = [Path(override)] if override else []
    candidates.append(REPO_ROOT / ".cache" / "toxiproxy" / "server")
    if (found := shutil.which("toxiproxy-server")) is not None:
        candidates.append(Path(found))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    raise DependencyMissingError(
        "the toxiproxy server was not found: run `make setup` (Go builds it from the Go module"
        " proxy into .cache/toxiproxy) or set COOPR_TOXIPROXY"
    )
