"""systemd units for the workers of each DC: a relay and an applier per data DC, a controller
per DC (witnesses run only that).

Every unit runs the installed ``coopr-pipeline`` as the ``coopr`` user, restarts on failure,
and stops by SIGTERM (the worker finishes its batch and exits) with a timeout well beyond a
batch. Secrets (``PGPASSWORD``, and the Kafka credentials once the pipeline is secured) come
from ``/etc/coopr-pipeline/<dc>.env``, which systemd reads as root before it drops to the
service user: the file can be ``root:root 0600``, and no secret is on a command line, where
``ps`` would show it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath

from pipeline.topology import Topology

__all__ = ["CONFIG_DIR", "WORKER_PORTS", "render_units"]

CONFIG_DIR = PurePosixPath("/etc/coopr-pipeline")

#: Port of each worker's /metrics and /healthz: one host may run a DC's three workers.
WORKER_PORTS: Mapping[str, int] = {"relay": 9401, "applier": 9402, "controller": 9403}

_WHAT = {
    "relay": "publishes {dc}'s outbox to its shard topics",
    "applier": "applies the shard topics {dc} replicates to its database",
    "controller": "holds {dc}'s leases, watches every DC's heartbeats, fails over",
}

#: Seconds systemd waits after SIGTERM: above a relay's acknowledgement timeout (5 s) and
#: lock silence (15 s), and a controller's drain, so a clean stop is never cut short.
_STOP_TIMEOUT_S = 60

_HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
CapabilityBoundingSet=
UMask=0077
"""


def render_units(topology: Topology, executable: str) -> dict[str, str]:
    """File name to unit text, for every worker of every DC; ``executable`` is the
    installed ``coopr-pipeline`` (an absolute path, as systemd requires)."""
    units = {}
    for dc in topology.dcs:
        kinds = ("controller",) if dc.witness else ("relay", "applier", "controller")
        for kind in kinds:
            units[f"coopr-pipeline-{kind}-{dc.name}.service"] = _unit(kind, dc.name, executable)
    return units


def _unit(kind: str, dc: str, executable: str) -> str:
    topology_file = CONFIG_DIR / "topology.toml"
    command = (
        f"{executable} --log-json worker {kind} --dc {dc} --topology {topology_file}"
        f" --metrics-host 0.0.0.0 --metrics-port {WORKER_PORTS[kind]}"
    )
    return f"""\
# Written by coopr-pipeline deploy render; edit the topology, not this file.
[Unit]
Description=coopr-pipeline {kind} of {dc}: {_WHAT[kind].format(dc=dc)}
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
User=coopr
Group=coopr
EnvironmentFile={CONFIG_DIR / f"{dc}.env"}
ExecStart={command}
Restart=on-failure
RestartSec=2
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec={_STOP_TIMEOUT_S}
{_HARDENING}
[Install]
WantedBy=multi-user.target
"""
