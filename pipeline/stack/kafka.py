"""One single-node KRaft broker per DC (combined broker and controller) for the local stack."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.stack.layout import controller_port, link_port, listener_name, listener_port
from pipeline.stack.processes import KAFKA, ProcessRecord, process_name, run_to_completion, spawn
from pipeline.stack.runtime import deploy_dir, java, kafka_classpath
from pipeline.stack.security import (
    ADMIN_USER,
    BROKER_USER,
    StackSecurity,
    broker_cn,
    write_private,
)
from pipeline.topology import DataCenter, Topology

__all__ = [
    "JVM_OPTS",
    "RemoteListener",
    "broker_ports",
    "broker_properties",
    "java_argv",
    "new_cluster_id",
    "remote_listeners",
    "start_broker",
]

#: G1 with a short pause goal keeps mirror latency steady; the heap's ceiling is per process
#: (:func:`java_argv`).
JVM_OPTS = (
    "-Xms128m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    # Four JVMs share two cores: one GC thread each keeps them from crowding each other out.
    "-XX:ParallelGCThreads=1",
    "-XX:ConcGCThreads=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


def java_argv(main_class: str, *args: str, max_heap_mb: int = 512) -> list[str]:
    """``java`` with the stack's JVM options, a heap of at most ``max_heap_mb`` MB, the logging
    config and the Kafka classpath."""
    log4j = deploy_dir() / "kafka" / "log4j2.properties"
    return [
        java(),
        *JVM_OPTS,
        f"-Xmx{max_heap_mb}m",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        kafka_classpath(),
        main_class,
        *args,
    ]


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 random bytes as 22 characters of urlsafe base64.

    Never one that starts with ``-``, which command-line parsers take for an option; Kafka's
    own ``Uuid.randomUuid()`` skips those ids for the same reason.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(frozen=True, slots=True)
class RemoteListener:
    """A broker's listener for one remote reader DC: ``name`` (``TO_DC2``) on ``port``,
    advertised at ``advertised_port``, the port of the reader's link to this broker."""

    name: str
    port: int
    advertised_port: int


def remote_listeners(topology: Topology, dc: DataCenter) -> tuple[RemoteListener, ...]:
    """The listeners of ``dc``'s broker for every other DC of ``topology`` (see
    :mod:`pipeline.stack.links` for why each reader has its own)."""
    return tuple(
        RemoteListener(
            listener_name(reader.name),
            listener_port(topology, dc.name, reader.name),
            link_port(topology, dc.name, reader.name),
        )
        for reader in topology.dcs
        if reader.name != dc.name
    )


def broker_ports(dc: DataCenter, remote: Sequence[RemoteListener] = ()) -> tuple[int, ...]:
    """Every port ``dc``'s broker listens on: clients, controller, one per remote reader."""
    return (dc.kafka_port, controller_port(dc), *(r.port for r in remote))


def broker_properties(
    dc: DataCenter,
    data_dir: Path,
    remote: Sequence[RemoteListener] = (),
    security: StackSecurity | None = None,
) -> str:
    """``server.properties`` of ``dc``'s broker: a listener for the DC's own clients at the
    topology's address, the controller, and the ``remote`` listeners. With ``security`` the
    client and remote listeners are SASL_SSL (SCRAM-SHA-512), the controller's is TLS with
    client certificates, and the standard authorizer denies what no ACL allows."""
    clients = "PLAINTEXT" if security is None else "CLIENT"
    listeners = ",".join(
        [
            f"{clients}://127.0.0.1:{dc.kafka_port}",
            f"CONTROLLER://127.0.0.1:{controller_port(dc)}",
            *(f"{r.name}://127.0.0.1:{r.port}" for r in remote),
        ]
    )
    advertised = ",".join(
        [
            f"{clients}://127.0.0.1:{dc.kafka_port}",
            *(f"{r.name}://127.0.0.1:{r.advertised_port}" for r in remote),
        ]
    )
    sasl, tls = ("PLAINTEXT", "PLAINTEXT") if security is None else ("SASL_SSL", "SSL")
    protocols = ",".join(
        [f"{clients}:{sasl}", f"CONTROLLER:{tls}", *(f"{r.name}:{sasl}" for r in remote)]
    )
    return "\n".join(
        [
            f"# Local stack broker of {dc.name}, written by `coopr-pipeline stack up`.",
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port(dc)}",
            f"listeners={listeners}",
            f"advertised.listeners={advertised}",
            "controller.listener.names=CONTROLLER",
            f"inter.broker.listener.name={clients}",
            f"listener.security.protocol.map={protocols}",
            *(
                ()
                if security is None
                else _secured(dc, [clients, *(r.name for r in remote)], security)
            ),
            f"log.dirs={data_dir}",
            "num.partitions=1",
            "default.replication.factor=1",
            "offsets.topic.replication.factor=1",
            # 50 partitions by default: each costs a little CPU even when idle, times 3 DCs.
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # Topics are created on purpose by `stack up`; a typo must not make a new one.
            "auto.create.topics.enable=false",
            "",
        ]
    )


def _secured(dc: DataCenter, sasl_listeners: Sequence[str], security: StackSecurity) -> list[str]:
    """The TLS, SCRAM and authorizer settings of a secured broker (docs/security.md)."""
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required"
    broker = f'{scram} username="{BROKER_USER}" password="{security.password(BROKER_USER)}";'
    jaas = [
        # The client listener is also the inter-broker one, so it carries the broker's login.
        f"listener.name.{name.lower()}.scram-sha-512.sasl.jaas.config="
        + (broker if i == 0 else f"{scram};")
        for i, name in enumerate(sasl_listeners)
    ]
    return [
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        *jaas,
        "ssl.keystore.type=PKCS12",
        f"ssl.keystore.location={security.keystore(dc.name)}",
        f"ssl.keystore.password={security.password('keystore')}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={security.ca_file}",
        # Only the broker itself talks to its controller: by its certificate.
        "listener.name.controller.ssl.client.auth=required",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        f"super.users=User:{BROKER_USER};User:{ADMIN_USER};User:CN={broker_cn(dc.name)}",
    ]


def _format(
    dc: DataCenter, config: Path, security: StackSecurity | None, users: Sequence[str]
) -> None:
    """Format ``dc``'s log dir; with ``security``, with the SCRAM credentials of ``users``."""
    # The ``=`` form keeps the id one argument whatever it starts with.
    args = ["format", f"--cluster-id={new_cluster_id()}", "--config", str(config)]
    if security is None:
        run_to_completion(
            java_argv("kafka.tools.StorageTool", *args),
            what=f"formatting the Kafka log dir of {dc.name}",
        )
        return
    for user in users:
        args += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={security.password(user)}]"]
    # The passwords go in a Java argument file, never on a command line others can read.
    argfile = config.parent / "format.args"
    write_private(argfile, "\n".join(["kafka.tools.StorageTool", *args]).encode())
    try:
        argv = java_argv("kafka.tools.StorageTool")
        argv[-1] = f"@{argfile}"
        run_to_completion(argv, what=f"formatting the Kafka log dir of {dc.name}")
    finally:
        argfile.unlink(missing_ok=True)


def start_broker(
    dc: DataCenter,
    root: Path,
    log: Path,
    remote: Sequence[RemoteListener] = (),
    security: StackSecurity | None = None,
    users: Sequence[str] = (),
) -> ProcessRecord:
    """Format (first time only) and start the broker of ``dc``, its files under ``root``;
    with ``security``, secured, the SCRAM ``users`` created at the format."""
    data = root / "data"
    config = root / "server.properties"
    root.mkdir(parents=True, exist_ok=True)
    # It may hold passwords: readable by its owner only.
    write_private(config, broker_properties(dc, data, remote, security).encode())
    if not (data / "meta.properties").exists():
        _format(dc, config, security, users)
    return spawn(
        process_name(KAFKA, dc.name),
        java_argv("kafka.Kafka", str(config)),
        log=log,
        ports=broker_ports(dc, remote),
    )
