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
from typing import Any

from pipeline.errors import PortInUseError, StackError
from pipeline.logging import get_logger

__all__ = [
    "KAFKA",
    "MIRRORMAKER",
    "POSTGRES",
    "TOXIPROXY",
    "ProcessRecord",
    "StackState",
    "forget_worker",
    "is_running",
    "kill",
    "port_is_free",
    "process_name",
    "process_tree",
    "record_worker",
    "recorded_workers",
    "role_of",
    "run_to_completion",
    "spawn",
    "stop",
]

log = get_logger(__name__)

#: Roles of the stack's processes; a DC's process is named ``<role>-<dc>`` (:func:`process_name`).
POSTGRES = "postgres"
KAFKA = "kafka"
#: MirrorMaker 2 of a target DC (``mirrormaker-dc2`` writes into dc2).
MIRRORMAKER = "mirrormaker"
#: The components of a DC that ``stack kill-dc --only`` kills alone.
DC_COMPONENTS = (MIRRORMAKER, KAFKA, POSTGRES)
#: The one toxiproxy server of the whole stack (every link), named by its role alone.
TOXIPROXY = "toxiproxy"
#: Output kept in an error message when a command fails (characters, from the end).
_OUTPUT_TAIL = 800


def process_name(role: str, dc: str) -> str:
    """The name DC ``dc``'s process of ``role`` is recorded, logged and shown under:
    ``kafka-dc1``; its log is ``logs/<name>.log``."""
    return f"{role}-{dc}"


def role_of(name: str) -> str:
    """The role part of a process name (``kafka`` of ``kafka-dc1``, ``toxiproxy`` of itself)."""
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

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ProcessRecord:
        """The record saved as ``dataclasses.asdict`` in JSON (ports come back as a list)."""
        return cls(**{**raw, "ports": tuple(raw["ports"])})


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
            name: ProcessRecord.from_json(rec) for name, rec in raw.get("processes", {}).items()
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


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (a zombie, state Z, only waits for its
    parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def is_running(record: ProcessRecord) -> bool:
    """True while ``record.pid`` is alive and still runs ``record.program``."""
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes()
    except OSError:
        return False
    return _alive(record.pid) and record.program.encode() in cmdline


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


def process_tree(roots: set[int]) -> set[int]:
    """``roots`` and every live descendant of them, from ``/proc``.

    Descendants, not process groups: PostgreSQL's backends call setsid() and leave the group.
    """
    parent: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        parent[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])

    def in_tree(pid: int) -> bool:
        while pid > 1:
            if pid in roots:
                return True
            pid = parent.get(pid, 0)
        return False

    return {pid for pid in parent if in_tree(pid)}


def kill(record: ProcessRecord, *, timeout_s: float = 10.0) -> bool:
    """SIGKILL ``record``'s process, its group and every descendant, as a dying machine
    would, and wait up to ``timeout_s`` s until all are gone. False if it was not running."""
    if not is_running(record):
        return False
    tree = process_tree({record.pid})
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # Wait until each is gone, not only dead: PostgreSQL refuses to start while the pid in
    # its lock file exists, and a zombie does until its parent reaps it (this process, which
    # reaps it here, or init after a CLI command exits). A zombie whose parent still runs (a
    # demo worker, reaped by the demo when it ends) holds nothing the DC's restart needs.
    deadline = time.monotonic() + timeout_s
    while True:
        for pid in tree:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        left = [pid for pid in tree if _awaited(pid)]
        if not left:
            return True
        if time.monotonic() >= deadline:
            if any(_alive(pid) for pid in left):
                raise StackError(f"{record.name} (pid {record.pid}) still runs after SIGKILL")
            log.warning("killed processes not reaped yet", process=record.name, pids=left)
            return True
        time.sleep(0.05)


def _awaited(pid: int) -> bool:
    """Whether :func:`kill` still waits for ``pid``: alive, or a zombie that this process or
    init is about to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state, ppid = stat.rsplit(")", 1)[-1].split()[:2]
    return state != "Z" or int(ppid) in (1, os.getpid())


# Workers that a command such as ``demo`` starts against the stack are recorded one file each
# (``<run-dir>/workers/<name>.json``), not in ``stack.json``: ``stack up`` rewrites that file
# from what it loaded at its start, and would drop a worker recorded meanwhile.
def _workers_dir(run_dir: Path) -> Path:
    return run_dir / "workers"


def record_worker(run_dir: Path, dc: str, record: ProcessRecord) -> None:
    """Remember ``record`` as a worker of DC ``dc``, so that ``stack kill-dc`` kills it too."""
    folder = _workers_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{record.name}.json").write_text(json.dumps({"dc": dc, **asdict(record)}))


def forget_worker(run_dir: Path, name: str) -> None:
    """Drop the worker ``name`` from the record (it has stopped)."""
    (_workers_dir(run_dir) / f"{name}.json").unlink(missing_ok=True)


def recorded_workers(run_dir: Path, dc: str) -> list[ProcessRecord]:
    """The recorded workers of DC ``dc`` (running or not: :func:`is_running` tells)."""
    records = []
    for path in sorted(_workers_dir(run_dir).glob("*.json")):
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a file being written or removed right now
        if raw.pop("dc") == dc:
            records.append(ProcessRecord.from_json(raw))
    return records
