"""What a benchmark ran on: the machine's facts and the versions of every part measured, so
that figures from two results files can be told apart by more than their date."""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import confluent_kafka
import fastavro
import psycopg2

from bench.procfs import proc_field
from pipeline.db import fetch_all
from pipeline.errors import PipelineError
from pipeline.stack.runtime import kafka_classpath
from pipeline.topology import Topology

__all__ = ["machine", "versions"]


def machine() -> dict[str, Any]:
    """CPU count and model, memory (MiB), kernel, and the load average (1 min) at the start:
    a loaded machine explains low figures."""
    mem_kb = proc_field("/proc/meminfo", "MemTotal")
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": proc_field("/proc/cpuinfo", "model name") or platform.processor() or None,
        "memory_mb": int(mem_kb.split()[0]) // 1024 if mem_kb else None,
        "kernel": platform.release(),
        "load_average_1m": os.getloadavg()[0],
    }


def _kafka_jar_version() -> str | None:
    """The version in the name of the broker's jar (``kafka_2.13-4.1.1.jar``: 4.1.1)."""
    try:
        lib = Path(kafka_classpath().removesuffix("/*"))
    except PipelineError:
        return None
    for jar in sorted(lib.glob("kafka_2.13-*.jar")):
        if m := re.fullmatch(r"kafka_[\d.]+-(.+)\.jar", jar.name):
            return m.group(1)
    return None


def _postgres_version(topology: Topology | None) -> str | None:
    """``server_version`` of the first data DC's PostgreSQL, None without a stack."""
    if topology is None or not topology.data_dcs:
        return None
    try:
        rows = fetch_all(topology.data_dcs[0].database, "SHOW server_version")
    except PipelineError:
        return None
    return str(rows[0][0]) if rows else None


def versions(topology: Topology | None) -> dict[str, str | None]:
    """Python, the client libraries, the Kafka jars and (with a running stack) PostgreSQL."""
    return {
        "python": platform.python_version(),
        "confluent_kafka": metadata.version("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
        "fastavro": fastavro.__version__,
        "psycopg2": str(getattr(psycopg2, "__version__", "")).split()[0] or None,
        "kafka": _kafka_jar_version(),
        "postgres": _postgres_version(topology),
    }
