"""``stack up``, ``status``, ``down``, ``kill-dc`` and ``start-dc``: the local stack as one unit.

``up`` starts the toxiproxy server of the links and, for every DC of the topology, a
PostgreSQL instance (not for witnesses) and a KRaft broker, waits until each answers, creates
the links that are missing, the database with its migrations and the DC's topics, then starts
one MirrorMaker 2 per target DC and waits until each has created its mirrored topics. Whatever
already runs is left alone, so ``up`` is safe to repeat; a process that died is started again.
``start_dc`` does the same for one DC; ``kill_dc`` SIGKILLs a DC's processes.
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

from pipeline.acls import principal_name
from pipeline.admin import TopicSpec, ensure_topics, list_topics
from pipeline.db import ConnectionTimeouts, connect, prepare
from pipeline.errors import PipelineError, PortInUseError, StackError
from pipeline.kafka_config import KafkaSettings
from pipeline.logging import get_logger
from pipeline.mirrormaker import flow_topics, render_mm2_properties
from pipeline.stack import postgres
from pipeline.stack.kafka import broker_ports, java_argv, remote_listeners, start_broker
from pipeline.stack.layout import check_layout, toxiproxy_port
from pipeline.stack.links import check_links, ensure_links, links
from pipeline.stack.processes import (
    DC_COMPONENTS,
    KAFKA,
    MIRRORMAKER,
    POSTGRES,
    TOXIPROXY,
    ProcessRecord,
    StackState,
    is_running,
    kill,
    port_is_free,
    process_name,
    recorded_workers,
    role_of,
    spawn,
    stop,
)
from pipeline.stack.runtime import java, kafka_classpath, pg_bindir, toxiproxy
from pipeline.stack.security import (
    StackSecurity,
    client_settings,
    create_acls,
    secure_topology_toml,
)
from pipeline.stack.toxiproxy import Toxiproxy, start_toxiproxy
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

__all__ = ["ProcessStatus", "dc_topics", "down", "kill_dc", "start_dc", "status", "up"]

log = get_logger(__name__)

#: The topology a secured stack runs, in its run dir.
SECURE_TOPOLOGY = "topology.secure.toml"
#: Heap ceiling of each MirrorMaker 2 process (MB).
MIRRORMAKER_HEAP_MB = 192
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


def _expected_mirrors(topology: Topology, target: str) -> set[str]:
    """The mirrored topics ``target``'s MirrorMaker 2 must have created in its cluster."""
    return {
        mirrored(source.name, t)
        for source in topology.dcs
        if source.name != target
        for t in flow_topics(topology, source.name, target)
    }


def _kafka(dc: DataCenter, security: StackSecurity | None) -> KafkaSettings:
    # Probes expect refused connections while a broker starts: librdkafka need not print them.
    return client_settings(security, dc, "coopr-pipeline-stack", log_level=0)


def _check_kafka(dc: DataCenter, security: StackSecurity | None) -> str:
    try:
        list_topics(_kafka(dc, security), timeout_s=2.0)
    except PipelineError as e:
        return f"unreachable: {e}"
    return "healthy"


def _check_postgres(dc: DataCenter) -> str:
    try:
        connect(postgres.admin_dsn(dc), timeouts=ConnectionTimeouts(connect_s=2)).close()
    except PipelineError as e:
        return f"unreachable: {e}"
    return "healthy"


def _check_mirrors(topology: Topology, target: str, security: StackSecurity | None) -> str:
    try:
        found = list_topics(_kafka(topology.dc(target), security), timeout_s=2.0)
    except PipelineError as e:
        return f"cannot check {target}: {e}"
    missing = _expected_mirrors(topology, target) - found
    if missing:
        return f"{len(missing)} mirrored topics missing in {target}, e.g. {sorted(missing)[0]}"
    return "healthy"


def _checks(topology: Topology, security: StackSecurity | None) -> dict[str, Callable[[], str]]:
    checks: dict[str, Callable[[], str]] = {TOXIPROXY: partial(check_links, topology)}
    for dc in topology.dcs:
        if not dc.witness:
            checks[process_name(POSTGRES, dc.name)] = partial(_check_postgres, dc)
        checks[process_name(KAFKA, dc.name)] = partial(_check_kafka, dc, security)
        checks[process_name(MIRRORMAKER, dc.name)] = partial(
            _check_mirrors, topology, dc.name, security
        )
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


def _check_ports(topology: Topology, state: StackState, dcs: Iterable[DataCenter]) -> None:
    """Fail before anything starts when a port the stack still has to open is taken."""
    wanted: list[tuple[str, int]] = []
    for dc in dcs:
        if not dc.witness:
            wanted.append((process_name(POSTGRES, dc.name), dc.database_port))
        kafka = process_name(KAFKA, dc.name)
        wanted += [(kafka, port) for port in broker_ports(dc, remote_listeners(topology, dc))]
    # A running toxiproxy holds the links' ports itself; a new one needs them all.
    wanted.append((TOXIPROXY, toxiproxy_port(topology)))
    wanted += [(TOXIPROXY, link.port) for link in links(topology)]
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
    topology: Topology,
    dcs: Iterable[DataCenter],
    run_dir: Path,
    logs: Path,
    security: StackSecurity | None,
) -> list[tuple[str, Callable[[], ProcessRecord]]]:
    """How to start the toxiproxy and each DC's PostgreSQL (not for witnesses) and broker."""
    api = toxiproxy_port(topology)
    starts: list[tuple[str, Callable[[], ProcessRecord]]] = [
        (TOXIPROXY, partial(start_toxiproxy, api, logs / f"{TOXIPROXY}.log"))
    ]
    for dc in dcs:
        if not dc.witness:
            pg = process_name(POSTGRES, dc.name)
            start_pg = partial(postgres.start_postgres, run_dir, dc, logs / f"{pg}.log", security)
            starts.append((pg, start_pg))
        kafka = process_name(KAFKA, dc.name)
        users = () if security is None else security.cluster_users(topology, dc.name)
        start = partial(
            start_broker,
            dc,
            run_dir / "kafka" / dc.name,
            logs / f"{kafka}.log",
            remote_listeners(topology, dc),
            security,
            users,
        )
        starts.append((kafka, start))
    return starts


def _prepare_dcs(
    topology: Topology, dcs: Iterable[DataCenter], security: StackSecurity | None
) -> None:
    """Create and migrate the data DCs' databases, and the DCs' local topics and ACLs."""
    for dc in dcs:
        if not dc.witness:
            postgres.create_database(dc)
            applied = prepare(topology, dc.name)
            log.info("database ready", dc=dc.name, migrations_applied=[m.version for m in applied])
        created = ensure_topics(_kafka(dc, security), dc_topics(topology, dc))
        log.info("topics ready", dc=dc.name, created=len(created))
        if security is not None:
            acls = create_acls(_kafka(dc, security), topology, dc)
            log.info("ACLs ready", dc=dc.name, bindings=acls)


def _mirrormaker_bootstrap(topology: Topology, target: str) -> dict[str, str]:
    """How ``target``'s MirrorMaker reaches each cluster: its own directly, others by link."""
    into = {link.source: link.address for link in links(topology, target) if link.target == target}
    return {dc.name: into.get(dc.name, dc.kafka) for dc in topology.dcs}


def _start_mirrormaker(name: str, target: str, config: Path, logs: Path) -> ProcessRecord:
    return spawn(
        name,
        # One DC's incoming flows: well under a broker's heap (bench stack measures memory).
        java_argv(
            "org.apache.kafka.connect.mirror.MirrorMaker",
            str(config),
            "--clusters",
            target,
            max_heap_mb=MIRRORMAKER_HEAP_MB,
        ),
        log=logs / f"{name}.log",
        ports=(),
    )


class _Starter:
    """Starts the processes of one ``up`` or ``start-dc`` and records each as it starts."""

    def __init__(self, run_dir: Path, topology: Topology, state: StackState):
        self.run_dir = run_dir
        self.topology = topology
        self.state = state
        self.logs = run_dir / "logs"
        self.security = StackSecurity.of(run_dir)
        self.checks = _checks(topology, self.security)
        self._saving = threading.Lock()

    def ensure(self, name: str, start: Callable[[], ProcessRecord]) -> None:
        record = self.state.processes.get(name)
        if record is not None and is_running(record):
            log.info("already running", process=name, pid=record.pid)
            return
        log.info("starting", process=name)
        started = start()
        with self._saving:
            self.state.processes[name] = started
            self.state.save(self.run_dir)

    def retire(self) -> None:
        """Stop and forget processes this topology does not have (the single MirrorMaker of
        earlier releases, a DC no longer in the file)."""
        for name in [n for n in self.state.processes if n not in self.checks]:
            log.info("stopping a process the stack no longer has", process=name)
            stop(self.state.processes.pop(name))
            self.state.save(self.run_dir)

    def servers(self, dcs: tuple[DataCenter, ...]) -> None:
        """The toxiproxy with every link, and the DCs' databases and brokers, until each
        answers."""
        starts = _server_starts(self.topology, dcs, self.run_dir, self.logs, self.security)
        # initdb and the Kafka storage format take seconds each: run them side by side.
        with ThreadPoolExecutor(max_workers=len(starts)) as pool:
            for future in [pool.submit(self.ensure, name, start) for name, start in starts]:
                future.result()
        # The links can be made once the toxiproxy answers; it counts as healthy with them.
        api = Toxiproxy(toxiproxy_port(self.topology))
        answers = {TOXIPROXY: lambda: "healthy" if api.reachable() else "no answer"}
        _wait_healthy(self.state, [TOXIPROXY], answers, START_TIMEOUT_S)
        ensure_links(self.topology)
        _wait_healthy(self.state, [name for name, _ in starts], self.checks, START_TIMEOUT_S)

    def mirrormakers(self, dcs: tuple[DataCenter, ...]) -> None:
        """One MirrorMaker 2 into each of ``dcs``, until each has its mirrored topics; one that
        runs an older configuration is restarted."""
        names = []
        for dc in dcs:
            name = process_name(MIRRORMAKER, dc.name)
            config = self.run_dir / "mirrormaker" / f"mm2-{dc.name}.properties"
            bootstrap = _mirrormaker_bootstrap(self.topology, dc.name)
            credentials = (
                None
                if self.security is None
                else self.security.properties_file(principal_name("mm2", dc.name))
            )
            rendered = render_mm2_properties(
                self.topology, dc.name, bootstrap, credentials=credentials
            )
            current = self.state.processes.get(name)
            if (
                current is not None
                and is_running(current)
                and (not config.exists() or config.read_text() != rendered)
            ):
                log.info("restarting for a changed configuration", process=name)
                stop(current)
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(rendered)
            self.ensure(name, partial(_start_mirrormaker, name, dc.name, config, self.logs))
            names.append(name)
        _wait_healthy(self.state, names, self.checks, MIRROR_TIMEOUT_S)


def _bring_up(
    run_dir: Path, topology: Topology, state: StackState, dcs: tuple[DataCenter, ...]
) -> None:
    java(), kafka_classpath(), pg_bindir(), toxiproxy()  # each names what is missing, first
    starter = _Starter(run_dir, topology, state)
    starter.retire()
    _check_ports(topology, state, dcs)
    starter.servers(dcs)
    _prepare_dcs(topology, dcs, starter.security)
    starter.mirrormakers(dcs)


def up(run_dir: Path, topology_path: Path, *, secure: bool = False) -> list[ProcessStatus]:
    """Start whatever of the stack is not running yet and wait until all of it is healthy.

    With ``secure`` the stack runs ``topology_path`` secured (:mod:`pipeline.stack.security`):
    the topology it runs is written to ``<run_dir>/topology.secure.toml``.
    """
    run_dir = run_dir.resolve()
    topology_path = topology_path.resolve()
    topology = load_topology(topology_path)
    check_layout(topology)
    run_dir.mkdir(parents=True, exist_ok=True)
    if secure:
        security = StackSecurity(run_dir)
        security.ensure(topology)
        topology_path = run_dir / SECURE_TOPOLOGY
        topology_path.write_text(secure_topology_toml(topology, security))
        topology = load_topology(topology_path)
    _bring_up(run_dir, topology, _state_for(run_dir, topology_path), topology.dcs)
    return status(run_dir)


def _running_state(run_dir: Path) -> tuple[StackState, Topology]:
    state = StackState.load(run_dir)
    if state is None:
        raise StackError(f"no stack in {run_dir}: run `coopr-pipeline stack up` first")
    return state, load_topology(state.topology)


def start_dc(run_dir: Path, dc: str) -> list[ProcessStatus]:
    """Start what of ``dc`` is not running (database, broker, MirrorMaker, and the links'
    toxiproxy if it is down) as ``up`` would, and wait until that is healthy."""
    run_dir = run_dir.resolve()
    state, topology = _running_state(run_dir)
    _bring_up(run_dir, topology, state, (topology.dc(dc),))
    return status(run_dir)


def kill_dc(run_dir: Path, dc: str, only: str | None = None) -> list[str]:
    """SIGKILL ``dc``'s MirrorMaker, broker and database with all their children, and every
    recorded worker of ``dc`` (the demo's), as when a DC loses power; returns what was killed.
    With ``only`` (one of :data:`DC_COMPONENTS`), that one component and nothing else: the
    failure of a single part, for drills. ``start_dc`` starts it again.

    The links stay: behind them the dead DC is unreachable, as behind a real WAN.
    """
    if only is not None and only not in DC_COMPONENTS:
        raise StackError(f"only: {only!r} is none of {', '.join(DC_COMPONENTS)}")
    run_dir = run_dir.resolve()
    state, topology = _running_state(run_dir)
    topology.dc(dc)
    roles = DC_COMPONENTS if only is None else (only,)
    records = [
        state.processes[name]
        for name in (process_name(role, dc) for role in roles)
        if name in state.processes
    ]
    if only is None:
        records += recorded_workers(run_dir, dc)
    # All at once, as power fails: no part gets to notice another's death first.
    with ThreadPoolExecutor(max_workers=max(1, len(records))) as pool:
        killed = list(pool.map(kill, records))
    return [r.name for r, was_running in zip(records, killed, strict=True) if was_running]


def status(run_dir: Path) -> list[ProcessStatus]:
    """Every process the stack in ``run_dir`` started, with its health."""
    state = StackState.load(run_dir.resolve())
    if state is None:
        return []
    checks = _checks(load_topology(state.topology), StackSecurity.of(run_dir.resolve()))
    rows = []
    for name, record in state.processes.items():
        running = is_running(record)
        health = (checks[name]() if name in checks else "unknown") if running else "stopped"
        rows.append(
            ProcessStatus(name, record.pid if running else None, record.ports, health, record.log)
        )
    return rows


def down(run_dir: Path, *, wipe: bool = False) -> list[str]:
    """Stop every process of the stack (MirrorMakers first, then brokers, databases and the
    links' toxiproxy); returns their names.

    With ``wipe`` the brokers' logs, the databases and the run dir's files are deleted too.
    """
    run_dir = run_dir.resolve()
    state = StackState.load(run_dir)
    if state is None:
        return []
    records = list(state.processes.values())
    stopped = []
    for group in (
        [r for r in records if role_of(r.name) == MIRRORMAKER],
        [r for r in records if role_of(r.name) == KAFKA],
        [r for r in records if role_of(r.name) == POSTGRES],
        [r for r in records if r.name == TOXIPROXY],
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
        for child in (
            *("kafka", "postgres", "mirrormaker", "workers", "logs", "stack.json"),
            *("tls", "secrets", SECURE_TOPOLOGY),
        ):
            path = run_dir / child
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return stopped
