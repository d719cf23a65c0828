"""Fixtures for the real local stack and unique names.

The ``stack`` fixture brings a 3-DC stack (Kafka in KRaft mode, MirrorMaker 2, PostgreSQL)
up once per test session on its own ports (``COOPR_TEST_BASE_PORT``, default 29090) in a
temporary run dir, and takes it down with its data at the end. Set ``COOPR_TEST_RUN_DIR``
to the run dir of a stack that is already up to reuse it instead (it is left running).

Every shard of ``stack`` stays with its initial owner at epoch 1 under static ownership
(endless leases): tests that run controllers, which fail shards over, use
``failover_stack`` instead, a second 3-DC stack with two replicas per shard
(``COOPR_TEST_FAILOVER_BASE_PORT``, default 28090; ``COOPR_TEST_FAILOVER_RUN_DIR`` to reuse
one). Its ownership moves from test to test, so its tests read who owns what first.
``pair_stack`` is two DCs without a witness (``COOPR_TEST_PAIR_BASE_PORT``, default 27090;
``COOPR_TEST_PAIR_RUN_DIR``), ``witness_stack`` two data DCs and a witness, secured (26090,
``COOPR_TEST_WITNESS_*``; a reused one must have been started with ``stack up --secure``).
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from psycopg2 import sql

from pipeline.db import connect
from pipeline.kafka_config import KafkaSettings
from pipeline.stack import down, local_topology_toml, status, up
from pipeline.stack.postgres import admin_dsn, create_database
from pipeline.stack.processes import StackState, stop
from pipeline.stack.security import StackSecurity, client_settings
from pipeline.stack.toxiproxy import Toxiproxy, start_toxiproxy
from pipeline.topology import DataCenter, Topology, load_topology
from tests.workers import free_port


@dataclass(frozen=True)
class RunningStack:
    """A healthy local stack: where it runs and what topology it runs."""

    run_dir: Path
    topology_file: Path
    topology: Topology

    @property
    def security(self) -> StackSecurity | None:
        """The TLS material and secrets of a secured stack (``witness_stack``), else None."""
        return StackSecurity.of(self.run_dir)

    def kafka(self, dc: str) -> KafkaSettings:
        """A client of ``dc``'s Kafka: the stack's administrator on a secured stack."""
        return client_settings(self.security, self.topology.dc(dc), "tests")

    def worker_env(self, kind: str, dc: str) -> dict[str, str] | None:
        """The environment ``dc``'s worker ``kind`` runs with: its credentials when secured."""
        security = self.security
        return None if security is None else security.worker_environ(kind, dc)

    def dc(self, name: str) -> DataCenter:
        return self.topology.dc(name)


_DEFAULT_PORTS = {"stack": 29090, "failover": 28090, "pair": 27090, "witness": 26090}


def _session_stack(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    replicas: int,
    dcs: int = 3,
    witnesses: int = 0,
    secure: bool = False,
) -> Iterator[RunningStack]:
    prefix = "COOPR_TEST_" + ("" if name == "stack" else name.upper() + "_")
    reuse = os.environ.get(prefix + "RUN_DIR")
    if reuse:
        run_dir = Path(reuse)
        state = StackState.load(run_dir)
        if state is None:
            pytest.fail(f"{prefix}RUN_DIR={reuse} holds no stack: run `stack up --run-dir {reuse}`")
        unhealthy = [r.name for r in status(run_dir) if not r.healthy]
        if unhealthy:
            pytest.fail(f"the stack in {reuse} is not healthy: {', '.join(unhealthy)}")
        yield RunningStack(run_dir, Path(state.topology), load_topology(state.topology))
        return
    run_dir = tmp_path_factory.mktemp(name)
    topology_file = run_dir / "topology.toml"
    base_port = int(os.environ.get(prefix + "BASE_PORT", _DEFAULT_PORTS[name]))
    topology_file.write_text(
        local_topology_toml(dcs, replicas=replicas, base_port=base_port, witnesses=witnesses)
    )
    try:
        up(run_dir, topology_file, secure=secure)
        state = StackState.load(run_dir)
        assert state is not None
        yield RunningStack(run_dir, Path(state.topology), load_topology(state.topology))
    finally:
        down(run_dir, wipe=True)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """3 DCs, one replica per shard, static ownership."""
    yield from _session_stack(tmp_path_factory, "stack", replicas=1)


@pytest.fixture(scope="session")
def failover_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """3 DCs, two replicas per shard, for tests that run controllers."""
    yield from _session_stack(tmp_path_factory, "failover", replicas=2)


@pytest.fixture(scope="session")
def pair_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """2 DCs and no witness: no majority without both, so failover is the operator's."""
    yield from _session_stack(tmp_path_factory, "pair", replicas=1, dcs=2)


@pytest.fixture(scope="session")
def witness_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """2 data DCs and a witness: a majority of three without either data DC; secured
    (``stack up --secure``: SASL_SSL with ACLs, PostgreSQL over TLS)."""
    yield from _session_stack(
        tmp_path_factory, "witness", replicas=1, dcs=3, witnesses=1, secure=True
    )


@pytest.fixture(scope="session")
def toxiproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Toxiproxy]:
    """A toxiproxy server for links a test can cut (see :mod:`pipeline.stack.toxiproxy`)."""
    port = free_port()
    record = start_toxiproxy(port, tmp_path_factory.mktemp("toxiproxy") / "toxiproxy.log")
    server = Toxiproxy(port)
    try:
        deadline = time.monotonic() + 10
        while not server.reachable():
            assert time.monotonic() < deadline, f"toxiproxy did not answer: see {record.log}"
            time.sleep(0.1)
        yield server
    finally:
        stop(record)


@pytest.fixture
def fresh_dsn(stack: RunningStack) -> Iterator[str]:
    """The DSN of a new, empty database on dc1's server, dropped after the test."""
    site = stack.dc("dc1")
    name = f"coopr_t_{uuid.uuid4().hex[:12]}"
    dsn = urlsplit(site.database)._replace(path=f"/{name}").geturl()
    create_database(dataclasses.replace(site, database=dsn))
    try:
        yield dsn
    finally:
        admin = connect(admin_dsn(site))
        try:
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        finally:
            admin.close()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory of names no other test uses: ``unique_name("g")`` -> ``g-test_x-1a2b3c4d``."""
    test = request.node.name.replace("[", "-").replace("]", "")[:40]

    def make(prefix: str) -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def make_topic(stack: RunningStack, unique_name: Callable[[str], str]) -> Callable[[str], str]:
    """Factory: create a one-partition topic with a unique name in a DC's cluster."""
    from pipeline.admin import TopicSpec, ensure_topics

    def make(dc: str) -> str:
        name = unique_name("test.topic")
        ensure_topics(stack.kafka(dc), [TopicSpec(name)])
        return name

    return make
