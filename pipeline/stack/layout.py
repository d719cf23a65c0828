"""Ports and topology of a local stack.

DC ``i`` (0-based, file order) of a stack whose DC ``i`` has its Kafka port at ``K_i``
(``B + 10*i`` in a generated topology of base port ``B``) listens on:

- ``K_i``                Kafka clients of the DC itself (PLAINTEXT, the topology's ``kafka``)
- ``K_i + 1``            the KRaft controller
- ``K_i + 5``            PostgreSQL (in a generated topology; a file may say otherwise)
- ``K_i + 100 + j``      the broker's listener for the DC ``j`` that reads it (``TO_<DC j>``)
- ``K_i + 200 + j``      the link ``i->j``: toxiproxy's proxy in front of that listener

and the stack's toxiproxy server has its API on ``K_0 + 99``. Reader ``j`` is at most 8 (nine
DCs), so each DC keeps to its own ten ports in every hundred: ``--dcs 3`` with the default
base 19090 uses 19090-19115 (DCs), 19189 (toxiproxy), 19191-19211 (listeners) and
19291-19311 (links); ``--dcs 9`` ends at 19377. DCs are named ``dc1``..``dcN``.
"""

from __future__ import annotations

from pipeline.errors import StackError
from pipeline.stack.processes import KAFKA, POSTGRES, TOXIPROXY, process_name
from pipeline.topology import DataCenter, Topology

__all__ = [
    "DEFAULT_BASE_PORT",
    "MAX_DCS",
    "check_layout",
    "controller_port",
    "link_port",
    "listener_name",
    "listener_port",
    "local_topology_toml",
    "toxiproxy_port",
]

DEFAULT_BASE_PORT = 19090
#: The layout gives each DC ten listener and ten link ports: at most nine DCs.
MAX_DCS = 9
_LISTENERS = 100
_LINKS = 200
_TOXIPROXY = 99


def controller_port(dc: DataCenter) -> int:
    """The KRaft controller port of ``dc``'s broker."""
    return dc.kafka_port + 1


def _index(topology: Topology, dc: str) -> int:
    return [d.name for d in topology.dcs].index(topology.dc(dc).name)


def listener_port(topology: Topology, source: str, reader: str) -> int:
    """The port of ``source``'s broker listener that DC ``reader`` reaches through a link."""
    return topology.dc(source).kafka_port + _LISTENERS + _index(topology, reader)


def link_port(topology: Topology, source: str, target: str) -> int:
    """The port of the link ``source->target``: what ``target``'s clients dial for ``source``."""
    return topology.dc(source).kafka_port + _LINKS + _index(topology, target)


def toxiproxy_port(topology: Topology) -> int:
    """The port of the stack's toxiproxy API."""
    return topology.dcs[0].kafka_port + _TOXIPROXY


def listener_name(reader: str) -> str:
    """Kafka's name of the listener for ``reader`` (``TO_DC2``): upper case, ``-`` as ``_``."""
    return "TO_" + reader.upper().replace("-", "_")


def check_layout(topology: Topology) -> None:
    """Raise :class:`StackError` when the topology is too large for the layout or two of the
    stack's ports coincide (DCs less than ten ports apart in a topology file)."""
    if len(topology.dcs) > MAX_DCS:
        raise StackError(
            f"the local stack runs at most {MAX_DCS} DCs; {topology.source} has {len(topology.dcs)}"
        )
    owners: dict[int, str] = {toxiproxy_port(topology): TOXIPROXY}
    for dc in topology.dcs:
        kafka = process_name(KAFKA, dc.name)
        wanted = [(dc.kafka_port, kafka), (controller_port(dc), kafka)]
        if not dc.witness:
            wanted.append((dc.database_port, process_name(POSTGRES, dc.name)))
        for other in topology.dcs:
            if other.name != dc.name:
                wanted.append((listener_port(topology, dc.name, other.name), kafka))
                wanted.append((link_port(topology, dc.name, other.name), TOXIPROXY))
        for port, what in wanted:
            if port in owners:
                raise StackError(
                    f"port {port} would serve both {owners[port]} and {what}: in "
                    f"{topology.source} put the DCs' Kafka ports at least 10 apart "
                    "(see pipeline/stack/layout.py)"
                )
            owners[port] = what


def local_topology_toml(
    dcs: int = 3,
    *,
    shard_count: int = 16,
    replicas: int = 1,
    base_port: int = DEFAULT_BASE_PORT,
    witnesses: int = 0,
) -> str:
    """The topology file of a local stack of ``dcs`` DCs on loopback, the last ``witnesses``
    of them witnesses (a broker and a controller, no database)."""
    lines = [
        "# Local multi-DC stack: every DC on 127.0.0.1 (see pipeline/stack/layout.py for ports).",
        f"shard_count = {shard_count}",
        f"replicas = {replicas}",
    ]
    for i in range(dcs):
        port = base_port + 10 * i
        lines += ["", "[[dc]]", f'name = "dc{i + 1}"', f'kafka = "127.0.0.1:{port}"']
        if i >= dcs - witnesses:
            lines.append("witness = true")
        else:
            lines.append(f'database = "postgresql://postgres@127.0.0.1:{port + 5}/coopr"')
    return "\n".join(lines) + "\n"
