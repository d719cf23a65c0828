"""Start, watch and stop the stack's long-running processes, and remember them.

Each process runs in its own session (so a signal reaches its children too), writes its
output to ``<run-dir>/logs/<name>.log``, and is recorded with its pid and ports in
``<run-dir>/stack.json``. A recorded pid counts as ours only while the process with that pid
still runs the same program, so a pid reused by the system is never signalled.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.errors import PortInUseError, StackError

__all__ = [
    "KAFKA",
    "MIRRORMAKER",
    "POSTGRES",
    "ProcessRecord",
    "StackState",
    "is_running",
    "port_is_free",
    "process_name",
    "role_of",
    "run_to_completion",
    "spawn",
    "stop",
]

#: Roles of the stack's processes; a DC's process is named ``<role>-<dc>`` (:func:`process_name`).
POSTGRES = "postgres"
KAFKA = "kafka"
#: The one MirrorMaker 2 process of the whole stack, named by its role alone.
MIRRORMAKER = "mirrormaker"
#: Output kept in an error message when a command fails (characters, from the end).
_OUTPUT_TAIL = 800


def process_name(role: str, dc: str) -> str:
    """The name DC ``dc``'s process of ``role`` is recorded, logged and shown under:
    ``kafka-dc1``; its log is ``logs/<name>.log``."""
    return f"{role}-{dc}"


def role_of(name: str) -> str:
    """The role part of a process name (``kafka`` of ``kafka-dc1``, ``mirrormaker`` of itself)."""
    return name.split("-", 1)[0]


def run_to_completion(argv: Sequence[str], *, what: str, user: str | None = None) -> str:
    """Run a short command (as ``user`` if given) and return its stdout and stderr.

    Raises :class:`StackError` saying that ``what`` failed, with the end of the output, when
    the command exits non-zero or cannot be started.
    """
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, user=user, check=False)
    except OSError as e:
        raise StackError(f"{what} failed: {e}") from None
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise StackError(f"{what} failed: {output[-_OUTPUT_TAIL:]}")
    return output


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """One started process: its name, pid, ports, log file and the program it runs."""

    name: str
    pid: int
    ports: tuple[int, ...]
    log: str
    program: str


@dataclass(slots=True)
class StackState:
    """What ``stack up`` started, kept in ``<run-dir>/stack.json``."""

    topology: str
    processes: dict[str, ProcessRecord] = field(default_factory=dict)

    @staticmethod
    def path(run_dir: Path) -> Path:
        return run_dir / "stack.json"

    @classmethod
    def load(cls, run_dir: Path) -> StackState | None:
        """The saved state, or ``None`` when the run dir has none."""
        try:
            raw = json.loads(cls.path(run_dir).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise StackError(f"cannot read {cls.path(run_dir)}: {e}") from None
        procs = {
            name: ProcessRecord(**{**rec, "ports": tuple(rec["ports"])})
            for name, rec in raw.get("processes", {}).items()
        }
        return cls(topology=raw["topology"], processes=procs)

    def save(self, run_dir: Path) -> None:
        tmp = self.path(run_dir).with_suffix(".tmp")
        body = {
            "topology": self.topology,
            "processes": {n: asdict(p) for n, p in self.processes.items()},
        }
        tmp.write_text(json.dumps(body, indent=2))
        tmp.replace(self.path(run_dir))


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` (checked by binding it).

    SO_REUSEADDR, as the servers themselves set it, so that connections of a stopped server
    still in TIME_WAIT do not count as a listener.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def is_running(record: ProcessRecord) -> bool:
    """True while ``record.pid`` is alive and still runs ``record.program``."""
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{record.pid}/stat").read_text()
    except OSError:
        return False
    # A zombie (state Z) has exited; it only waits for its parent to reap it.
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return record.program.encode() in cmdline


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    ports: Sequence[int],
    env: Mapping[str, str] | None = None,
    user: str | None = None,
) -> ProcessRecord:
    """Start ``argv`` detached from this process, output appended to ``log``.

    Every port must be free first, else :class:`PortInUseError` names it.
    """
    for port in ports:
        if not port_is_free(port):
            raise PortInUseError(port, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            user=user,
        )
    record = ProcessRecord(
        name=name, pid=proc.pid, ports=tuple(ports), log=str(log), program=argv[-1]
    )
    # Right after the fork the child's cmdline can still be empty (mid-exec); until it shows
    # the program, is_running would take the new process for a dead one.
    deadline = time.monotonic() + 5.0
    while not is_running(record) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return record


def stop(
    record: ProcessRecord, *, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30.0
) -> None:
    """Signal the process group of ``record`` and wait up to ``timeout_s`` s, then SIGKILL it."""
    if not is_running(record):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_running(record):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, signal.SIGKILL)
    for _ in range(50):
        if not is_running(record):
            return
        time.sleep(0.1)
    raise StackError(f"{record.name} (pid {record.pid}) did not stop, even after SIGKILL")
