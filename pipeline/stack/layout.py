"""Ports and topology of a generated local stack.

DC ``i`` (0-based) of a stack with base port ``B`` listens on:

- ``B + 10*i``      Kafka clients (PLAINTEXT)
- ``B + 10*i + 1``  the KRaft controller
- ``B + 10*i + 5``  PostgreSQL

so ``--dcs 3`` with the default base 19090 uses 19090-19115. DCs are named ``dc1``..``dcN``.
"""

from __future__ import annotations

__all__ = ["DEFAULT_BASE_PORT", "local_topology_toml"]

DEFAULT_BASE_PORT = 19090


def local_topology_toml(
    dcs: int = 3, *, shard_count: int = 16, replicas: int = 1, base_port: int = DEFAULT_BASE_PORT
) -> str:
    """The topology file of a local stack of ``dcs`` data DCs on loopback."""
    lines = [
        "# Local multi-DC stack: every DC on 127.0.0.1 (see pipeline/stack/layout.py for ports).",
        f"shard_count = {shard_count}",
        f"replicas = {replicas}",
    ]
    for i in range(dcs):
        port = base_port + 10 * i
        lines += [
            "",
            "[[dc]]",
            f'name = "dc{i + 1}"',
            f'kafka = "127.0.0.1:{port}"',
            f'database = "postgresql://postgres@127.0.0.1:{port + 5}/coopr"',
        ]
    return "\n".join(lines) + "\n"
