"""Benchmark of the single-object codec against bare fastavro on the same records.

Three records: an :class:`OperationCompleted` of a 10-node cluster whose create job ran 7
stages of 10 tasks (about 4 KiB encoded, the heavy case), the same of a 2-node cluster (about
1.2 KB, the size the other benchmarks use), and a :class:`Heartbeat` (under 100 bytes, where
the codec's fixed cost per message shows most). The cases run interleaved in
short rounds so that load from other processes hits all of them alike; each rate is the
best round's, for one thread on one core.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from pipeline.codec import HEADER_SIZE, Codec, default_codec
from pipeline.events import (
    Cluster,
    ClusterAction,
    ClusterStatus,
    Event,
    Heartbeat,
    Job,
    JobStatus,
    Node,
    OperationCompleted,
    TaskStatus,
)
from pipeline.schemas import catalog

__all__ = ["bench_codec", "sample_heartbeat", "sample_operation_completed"]

_ROUNDS = 15
_CALIBRATION_S = 0.01
_CREATE_STAGES = 7  # CREATE, CONFIRM, BOOTSTRAP, INSTALL, CONFIGURE, INITIALIZE, START
_T0 = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)


def sample_operation_completed(node_count: int = 10) -> OperationCompleted:
    """A completed create of a ``node_count``-node Hadoop cluster, one task per node and stage."""
    cluster_id = "00000042"
    job_id = f"{cluster_id}-003"
    stages = tuple(
        tuple(f"{job_id}-{stage * node_count + i}" for i in range(node_count))
        for stage in range(_CREATE_STAGES)
    )
    nodes = tuple(
        Node(
            id=f"{cluster_id}-node-{i:03d}",
            cluster_id=cluster_id,
            services=("base", "hadoop-hdfs-datanode", "hadoop-yarn-nodemanager"),
            hostname=f"analytics-{i}.dc1.example.com",
            ip_addresses={"access_v4": f"203.0.113.{i}", "bind_v4": f"10.0.0.{i}"},
            hardware_type="large",
            image_type="centos6",
        )
        for i in range(node_count)
    )
    return OperationCompleted(
        event_id="0b3c6f7e-2f1a-4c5e-9d1b-1a2b3c4d5e6f",
        shard=3,
        owner_dc="dc1",
        epoch=2,
        seq=12345,
        occurred_at=_T0,
        cluster=Cluster(
            id=cluster_id,
            name="analytics",
            description="Hadoop for the analytics team",
            tenant_id="acme",
            owner_id="alice",
            create_time=_T0 - timedelta(minutes=20),
            expire_time=_T0 + timedelta(days=30),
            template_name="hadoop-distributed",
            provider="openstack",
            node_ids=tuple(n.id for n in nodes),
            services=("base", "hadoop-hdfs-datanode", "hadoop-yarn-nodemanager"),
            latest_job_id=job_id,
            status=ClusterStatus.ACTIVE,
            config=json.dumps({"hadoop": {"core_site": {"fs.defaultFS": "hdfs://analytics-0"}}}),
        ),
        job=Job(
            id=job_id,
            cluster_id=cluster_id,
            action=ClusterAction.CLUSTER_CREATE,
            staged_task_ids=stages,
            current_stage=_CREATE_STAGES,
            task_statuses={t: TaskStatus.COMPLETE for stage in stages for t in stage},
            status=JobStatus.COMPLETE,
        ),
        nodes=nodes,
        cluster_deleted=False,
        server_id="coopr-server-1",
    )


def sample_heartbeat() -> Heartbeat:
    """A heartbeat of a controller that sees three DCs alive."""
    return Heartbeat(
        event_id="5f0d9d43-5d0e-4a55-9a43-8f5d3bd0b0a1",
        occurred_at=_T0,
        dc="dc1",
        controller_id="controller-dc1-7f3a",
        alive_dcs=("dc1", "dc2", "dc3"),
    )


def bench_codec(seconds: float = 3.0) -> dict[str, float]:
    """Measure the codec and bare fastavro for about ``seconds`` of wall time in total.

    Keys (rates are operations per second of one thread; overheads are fractions, 0.1 = 10%
    more time per message than bare fastavro; ``*_bytes`` are message sizes in bytes):

    - ``codec_encode_per_s`` / ``codec_decode_per_s``: ``encode_record`` / ``decode_record``
      of the 10-node :class:`OperationCompleted` (dicts, header, schema checks, trailing check);
    - ``fastavro_encode_per_s`` / ``fastavro_decode_per_s``: ``schemaless_writer`` /
      ``schemaless_reader`` of the same record and body;
    - ``encode_overhead`` / ``decode_overhead``: codec time over fastavro time, minus one;
      ``event_encode_overhead`` / ``event_decode_overhead``: the same with the dataclasses;
    - ``event_encode_per_s`` / ``event_decode_per_s``: ``encode`` / ``decode`` with the
      dataclasses, conversion included;
    - the same with the ``small_`` prefix for the 2-node :class:`OperationCompleted` and the
      ``heartbeat_`` prefix for the :class:`Heartbeat`.
    """
    codec = default_codec()
    results: dict[str, float] = {}
    cases: dict[str, Callable[[], object]] = {}
    samples: tuple[tuple[str, Event], ...] = (
        ("", sample_operation_completed()),
        ("small_", sample_operation_completed(node_count=2)),
        ("heartbeat_", sample_heartbeat()),
    )
    for prefix, event in samples:
        message = codec.encode(event)
        results[f"{prefix or 'operation_completed_'}message_bytes"] = float(len(message))
        cases.update(_cases(prefix, codec, event, message))
    rates = _measure(cases, seconds)
    results.update(rates)
    for prefix, _ in samples:
        for op in ("encode", "decode"):
            bare = rates[f"{prefix}fastavro_{op}_per_s"]
            for kind, rate in (("", "codec"), ("event_", "event")):
                results[f"{prefix}{kind}{op}_overhead"] = (
                    bare / rates[f"{prefix}{rate}_{op}_per_s"] - 1.0
                )
    return results


def _cases(
    prefix: str, codec: Codec, event: Event, message: bytes
) -> dict[str, Callable[[], object]]:
    name = event.RECORD_NAME
    record = event.to_record()
    parsed = catalog().latest(name).schema
    body = message[HEADER_SIZE:]

    def bare_encode() -> bytes:
        buf = BytesIO()
        schemaless_writer(buf, parsed, record)
        return buf.getvalue()

    def bare_decode() -> Any:
        return schemaless_reader(BytesIO(body), parsed, None)

    return {
        f"{prefix}codec_encode_per_s": lambda: codec.encode_record(name, record),
        f"{prefix}codec_decode_per_s": lambda: codec.decode_record(message),
        f"{prefix}fastavro_encode_per_s": bare_encode,
        f"{prefix}fastavro_decode_per_s": bare_decode,
        f"{prefix}event_encode_per_s": lambda: codec.encode(event),
        f"{prefix}event_decode_per_s": lambda: codec.decode(message),
    }


def _measure(cases: dict[str, Callable[[], object]], seconds: float) -> dict[str, float]:
    """Best rate of each case over interleaved rounds of about equal wall time.

    Other processes only ever slow a round down, so the fastest round is the closest estimate
    of the cost itself (the reasoning of :mod:`timeit`).
    """
    slice_s = seconds / (_ROUNDS * len(cases))
    batch: dict[str, int] = {}
    for key, fn in cases.items():
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < _CALIBRATION_S:
            fn()
            calls += 1
        batch[key] = max(1, int(slice_s * calls / elapsed))
    samples: dict[str, list[float]] = {key: [] for key in cases}
    for _ in range(_ROUNDS):
        for key, fn in cases.items():
            n = batch[key]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[key].append(n / (time.perf_counter() - start))
    return {key: max(rates) for key, rates in samples.items()}
