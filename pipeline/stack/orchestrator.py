"""``stack up``, ``stack status`` and ``stack down``: the local multi-DC stack as one unit.

For every DC of the topology ``up`` starts a PostgreSQL instance (not for witnesses) and a
KRaft broker, waits until each answers, creates the database and applies the migrations,
creates the DC's topics, then starts one MirrorMaker 2 process for every flow and waits until
each flow has created its mirrored topics. Whatever already runs is left alone, so ``up`` is
safe to repeat; a process that died is started again.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pipeline.admin import TopicSpec, ensure_topics, list_topics
from pipeline.db import ConnectionTimeouts, connect, prepare
from pipeline.errors import PipelineError, PortInUseError, StackError
from pipeline.kafka_config import KafkaSettings
from pipeline.logging import get_logger
from pipeline.mirrormaker import flow_topics, render_mm2_properties
from pipeline.stack import postgres
from pipeline.stack.kafka import java_argv, start_broker
from pipeline.stack.processes import (
    KAFKA,
    MIRRORMAKER,
    POSTGRES,
    ProcessRecord,
    StackState,
    is_running,
    port_is_free,
    process_name,
    role_of,
    spawn,
    stop,
)
from pipeline.stack.runtime import java, kafka_classpath, pg_bindir
from pipeline.topics import (
    DLQ_TOPIC,
    HEARTBEAT_TOPIC,
    OWNERSHIP_TOPIC,
    PROBE_TOPIC,
    SHARD_MAX_MESSAGE_BYTES,
    mirrored,
    shard_topic,
)
from pipeline.topology import DataCenter, Topology, load_topology

__all__ = ["ProcessStatus", "dc_topics", "down", "status", "up"]

log = get_logger(__name__)

#: Longest wait for the brokers and databases to answer after start (s).
START_TIMEOUT_S = 120.0
#: Longest wait for MirrorMaker 2 to create every mirrored topic (s).
MIRROR_TIMEOUT_S = 180.0


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """One line of ``stack status``."""

    name: str
    pid: int | None
    ports: tuple[int, ...]
    health: str
    log: str

    @property
    def healthy(self) -> bool:
        return self.health == "healthy"


def dc_topics(topology: Topology, dc: DataCenter) -> list[TopicSpec]:
    """The local topics of ``dc``: its DC set's shard topics, heartbeat, ownership, probe, DLQ."""
    shard_config = {"max.message.bytes": str(SHARD_MAX_MESSAGE_BYTES)}
    specs = [TopicSpec(shard_topic(s), config=shard_config) for s in topology.shards_of(dc.name)]
    hour = {"retention.ms": str(3_600_000)}
    specs.append(TopicSpec(HEARTBEAT_TOPIC, config=hour))
    specs.append(TopicSpec(PROBE_TOPIC, config=hour))
    specs.append(TopicSpec(OWNERSHIP_TOPIC, config={"cleanup.policy": "compact"}))
    specs.append(TopicSpec(DLQ_TOPIC))
    return specs


def _expected_mirrors(topology: Topology) -> dict[str, set[str]]:
    """For each DC, the mirrored topics MirrorMaker 2 must have created in its cluster."""
    return {
        target.name: {
            mirrored(source.name, t)
            for source in topology.dcs
            if source.name != target.name
            for t in flow_topics(topology, source.name, target.name)
        }
        for target in topology.dcs
    }


def _kafka(dc: DataCenter) -> KafkaSettings:
    # Probes expect refused connections while a broker starts: librdkafka need not print them.
    return KafkaSettings(bootstrap_servers=dc.kafka, client_id="coopr-pipeline-stack", log_level=0)


def _check_kafka(dc: DataCenter) -> str:
    try:
        list_topics(_kafka(dc), timeout_s=2.0)
    except PipelineError as e:
        return f"unreachable: {e}"
    return "healthy"


def _check_postgres(dc: DataCenter) -> str:
    try:
        connect(postgres.admin_dsn(dc), timeouts=ConnectionTimeouts(connect_s=2)).close()
    except PipelineError as e:
        return f"unreachable: {e}"
    return "healthy"


def _check_mirrors(topology: Topology) -> str:
    for target, expected in _expected_mirrors(topology).items():
        try:
            missing = expected - list_topics(_kafka(topology.dc(target)), timeout_s=2.0)
        except PipelineError as e:
            return f"cannot check {target}: {e}"
        if missing:
            return f"{len(missing)} mirrored topics missing in {target}, e.g. {sorted(missing)[0]}"
    return "healthy"


def _checks(topology: Topology) -> dict[str, Callable[[], str]]:
    checks: dict[str, Callable[[], str]] = {}
    for dc in topology.dcs:
        if not dc.witness:
            checks[process_name(POSTGRES, dc.name)] = partial(_check_postgres, dc)
        checks[process_name(KAFKA, dc.name)] = partial(_check_kafka, dc)
    checks[MIRRORMAKER] = partial(_check_mirrors, topology)
    return checks


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_healthy(
    state: StackState, names: Iterable[str], checks: dict[str, Callable[[], str]], timeout_s: float
) -> None:
    """Wait until every named process answers; a process that exits fails at once with its log."""
    pending = set(names)
    deadline = time.monotonic() + timeout_s
    last: dict[str, str] = {}
    while pending:
        for name in sorted(pending):
            record = state.processes[name]
            if not is_running(record):
                raise StackError(
                    f"{name} exited during start; last lines of {record.log}:\n{_tail(record.log)}"
                )
            last[name] = checks[name]()
            if last[name] == "healthy":
                log.info("healthy", process=name, pid=record.pid)
                pending.discard(name)
        if pending and time.monotonic() >= deadline:
            detail = "; ".join(f"{n}: {last.get(n, '?')}" for n in sorted(pending))
            logs = Path(state.processes[next(iter(pending))].log).parent
            raise StackError(f"not healthy after {timeout_s:g} s: {detail} (logs in {logs})")
        if pending:
            time.sleep(0.5)


def _check_ports(topology: Topology, state: StackState) -> None:
    """Fail before anything starts when a port the stack still has to open is taken."""
    wanted: list[tuple[str, int]] = []
    for dc in topology.dcs:
        if not dc.witness:
            wanted.append((process_name(POSTGRES, dc.name), dc.database_port))
        kafka = process_name(KAFKA, dc.name)
        wanted += [(kafka, dc.kafka_port), (kafka, dc.kafka_port + 1)]
    for name, port in wanted:
        record = state.processes.get(name)
        if (record is None or not is_running(record)) and not port_is_free(port):
            raise PortInUseError(port, name)


def _state_for(run_dir: Path, topology_path: Path) -> StackState:
    """The saved state of ``run_dir`` if it runs ``topology_path``, else a fresh one.

    Raises :class:`StackError` while processes of another topology still run there.
    """
    state = StackState.load(run_dir)
    if state is not None and state.topology != str(topology_path):
        if any(is_running(p) for p in state.processes.values()):
            raise StackError(
                f"the stack in {run_dir} runs topology {state.topology}; "
                f"run `coopr-pipeline stack down --run-dir {run_dir}` before using {topology_path}"
            )
        state = None
    return state if state is not None else StackState(topology=str(topology_path))


def _server_starts(
    topology: Topology, run_dir: Path, logs: Path
) -> list[tuple[str, Callable[[], ProcessRecord]]]:
    """How to start each DC's PostgreSQL (not for witnesses) and broker, by process name."""
    starts: list[tuple[str, Callable[[], ProcessRecord]]] = []
    for dc in topology.dcs:
        if not dc.witness:
            pg = process_name(POSTGRES, dc.name)
            starts.append((pg, partial(postgres.start_postgres, run_dir, dc, logs / f"{pg}.log")))
        kafka = process_name(KAFKA, dc.name)
        kafka_dir = run_dir / "kafka" / dc.name
        starts.append((kafka, partial(start_broker, dc, kafka_dir, logs / f"{kafka}.log")))
    return starts


def _prepare_dcs(topology: Topology) -> None:
    """Create and migrate every data DC's database, and every DC's local topics."""
    for dc in topology.dcs:
        if not dc.witness:
            postgres.create_database(dc)
            applied = prepare(topology, dc.name)
            log.info("database ready", dc=dc.name, migrations_applied=[m.version for m in applied])
        created = ensure_topics(_kafka(dc), dc_topics(topology, dc))
        log.info("topics ready", dc=dc.name, created=len(created))


def up(run_dir: Path, topology_path: Path) -> list[ProcessStatus]:
    """Start whatever of the stack is not running yet and wait until all of it is healthy."""
    run_dir = run_dir.resolve()
    topology_path = topology_path.resolve()
    topology = load_topology(topology_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    java(), kafka_classpath(), pg_bindir()  # each names what is missing, before anything starts
    state = _state_for(run_dir, topology_path)
    logs = run_dir / "logs"
    _check_ports(topology, state)

    saving = threading.Lock()

    def ensure(name: str, start: Callable[[], ProcessRecord]) -> None:
        record = state.processes.get(name)
        if record is not None and is_running(record):
            log.info("already running", process=name, pid=record.pid)
            return
        log.info("starting", process=name)
        started = start()
        with saving:
            state.processes[name] = started
            state.save(run_dir)

    starts = _server_starts(topology, run_dir, logs)
    # initdb and the Kafka storage format take seconds each: run them side by side.
    with ThreadPoolExecutor(max_workers=len(starts)) as pool:
        for future in [pool.submit(ensure, name, start) for name, start in starts]:
            future.result()
    checks = _checks(topology)
    _wait_healthy(state, [n for n in checks if n != MIRRORMAKER], checks, START_TIMEOUT_S)

    _prepare_dcs(topology)

    mm2_config = run_dir / "mirrormaker" / "mm2.properties"
    rendered = render_mm2_properties(topology)
    current = state.processes.get(MIRRORMAKER)
    if (
        current is not None
        and is_running(current)
        and (not mm2_config.exists() or mm2_config.read_text() != rendered)
    ):
        log.info("restarting for a changed configuration", process=MIRRORMAKER)
        stop(current)
    mm2_config.parent.mkdir(parents=True, exist_ok=True)
    mm2_config.write_text(rendered)
    ensure(MIRRORMAKER, lambda: _start_mirrormaker(mm2_config, logs / "mirrormaker.log"))
    _wait_healthy(state, [MIRRORMAKER], checks, MIRROR_TIMEOUT_S)
    return status(run_dir)


def _start_mirrormaker(config: Path, log_file: Path) -> ProcessRecord:
    return spawn(
        MIRRORMAKER,
        java_argv("org.apache.kafka.connect.mirror.MirrorMaker", str(config)),
        log=log_file,
        ports=(),
    )


def status(run_dir: Path) -> list[ProcessStatus]:
    """Every process the stack in ``run_dir`` started, with its health."""
    state = StackState.load(run_dir.resolve())
    if state is None:
        return []
    checks = _checks(load_topology(state.topology))
    rows = []
    for name, record in state.processes.items():
        running = is_running(record)
        health = (checks[name]() if name in checks else "unknown") if running else "stopped"
        rows.append(
            ProcessStatus(name, record.pid if running else None, record.ports, health, record.log)
        )
    return rows


def down(run_dir: Path, *, wipe: bool = False) -> list[str]:
    """Stop every process of the stack (MirrorMaker first, databases last); returns their names.

    With ``wipe`` the brokers' logs, the databases and the run dir's files are deleted too.
    """
    run_dir = run_dir.resolve()
    state = StackState.load(run_dir)
    if state is None:
        return []
    records = list(state.processes.values())
    stopped = []
    for group in (
        [r for r in records if r.name == MIRRORMAKER],
        [r for r in records if role_of(r.name) == KAFKA],
        [r for r in records if role_of(r.name) == POSTGRES],
    ):
        # PostgreSQL's SIGINT is its fast shutdown; SIGTERM would wait for every client.
        with ThreadPoolExecutor(max_workers=max(1, len(group))) as pool:
            list(
                pool.map(
                    lambda r: stop(
                        r, sig=signal.SIGINT if role_of(r.name) == POSTGRES else signal.SIGTERM
                    ),
                    group,
                )
            )
        stopped += [r.name for r in group]
    if wipe:
        topology = load_topology(state.topology) if Path(state.topology).exists() else None
        for dc in topology.dcs if topology else ():
            postgres.remove_data(run_dir, dc)
        for child in ("kafka", "postgres", "mirrormaker", "logs", "stack.json"):
            path = run_dir / child
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return stopped
