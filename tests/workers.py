"""Workers (`coopr-pipeline worker ...`, `simulate`) as subprocesses, as operators run them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProcess:
    """One CLI process; its log (JSON lines) goes to a file, never to a pipe that could fill."""

    def __init__(self, topology_file: Path, *args: str, env: Mapping[str, str] | None = None):
        self.port = free_port()
        self.killed = False
        self.log = Path(tempfile.mkstemp(prefix="coopr-worker-", suffix=".log")[1])
        extra = ["--metrics-port", str(self.port)] if args[0] == "worker" else []
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cli",
                    "--log-json",
                    *args,
                    "--topology",
                    str(topology_file),
                    *extra,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    def health(self) -> dict[str, Any] | None:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as e:  # 503: unhealthy, still a health report
            return dict(json.loads(e.read()))
        except OSError:
            return None

    def metric(self, name: str) -> float | None:
        """The value of one sample of /metrics (``name`` with its labels), if present."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.rsplit(" ", 1)[1])
        return None

    def wait_health(self, key: str, value: object, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (h := self.health()) is not None and h.get(key) == value:
                return
            assert self.proc.poll() is None, f"worker exited: {self.log.read_text()[-2000:]}"
            time.sleep(0.1)
        raise AssertionError(f"{key} != {value!r} after {timeout_s} s: {self.health()}")

    def kill(self) -> None:
        self.killed = True
        self.proc.kill()
        self.proc.wait(10)

    def ask_to_stop(self) -> None:
        """SIGTERM, unless it has exited already."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def terminate(self, timeout_s: float = 60) -> int:
        self.ask_to_stop()
        return self.proc.wait(timeout_s)

    def output(self) -> str:
        return self.log.read_text()


def terminate_all(
    workers: Iterable[WorkerProcess], timeout_s: float = 60
) -> list[tuple[WorkerProcess, int]]:
    """SIGTERM every worker at once, then wait for each (``timeout_s`` s at most): each takes
    up to a second to stop (a last heartbeat, leaving its consumer group), which need not be
    waited out one worker after the other. Each worker with its exit status."""
    started = list(workers)
    for worker in started:
        worker.ask_to_stop()
    return [(worker, worker.proc.wait(timeout_s)) for worker in started]
