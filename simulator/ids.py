"""Coopr's IDs: each DC's space of cluster numbers, and job and task IDs derived from them.

Cluster IDs are ``%08d`` numbers; each DC allocates from its own space (:func:`id_space`).
Job ID = ``<clusterId>-<jobNum %03d>``, task ID = ``<jobId>-<taskNum %03d>`` (task numbers
count from 1 across the whole job, in stage order).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConfigError
from pipeline.events import Cluster
from pipeline.topology import Topology

__all__ = ["IdSpace", "format_cluster_id", "id_space", "job_id", "next_job_number", "task_id"]


@dataclass(frozen=True, slots=True)
class IdSpace:
    """The cluster numbers a DC hands out: ``start``, ``start + increment``, ..."""

    start: int
    increment: int

    def contains(self, number: int) -> bool:
        """Whether ``number`` is one of this space's IDs."""
        return number >= self.start and (number - self.start) % self.increment == 0


def id_space(topology: Topology, dc: str) -> IdSpace:
    """DC ``dc``'s ID space: data DC i (0-based, file order) of n starts at i+1, steps by n.

    Witness DCs create no clusters: :class:`ConfigError` for them and for unknown DCs.
    """
    names = [d.name for d in topology.data_dcs]
    if dc not in names:
        topology.dc(dc)  # raises for an unknown DC, naming the known ones
        raise ConfigError(f"DC {dc!r} is a witness: it runs no Coopr server", field="dc")
    return IdSpace(start=names.index(dc) + 1, increment=len(names))


def format_cluster_id(number: int) -> str:
    """Coopr's cluster ID of ``number``: zero-padded to 8 digits."""
    return f"{number:08d}"


def job_id(cluster_id: str, job_number: int) -> str:
    """Coopr's job ID: ``<clusterId>-<jobNum %03d>``."""
    return f"{cluster_id}-{job_number:03d}"


def task_id(job: str, task_number: int) -> str:
    """Coopr's task ID: ``<jobId>-<taskNum %03d>``, i.e. ``<clusterId>-<jobNum>-<taskNum>``."""
    return f"{job}-{task_number:03d}"


def next_job_number(cluster: Cluster) -> int:
    """The number of the cluster's next job (one more than its latest job's)."""
    return int(cluster.latest_job_id.rsplit("-", 1)[1]) + 1
