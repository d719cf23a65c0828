"""Reading ``/proc``: the machine's facts and a process's memory."""

from __future__ import annotations

from pathlib import Path

__all__ = ["proc_field", "status_kb"]


def proc_field(path: str | Path, key: str) -> str | None:
    """The value of the first ``key: value`` line of a /proc file, None where there is none
    (or the file is gone, as a process's is once it exits)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            return value.strip()
    return None


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``: resident now, ``VmHWM``: its
    peak), 0 for a process that is gone."""
    value = proc_field(f"/proc/{pid}/status", key)
    return int(value.split()[0]) if value else 0
