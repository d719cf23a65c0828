"""What the stand-in Coopr server provisions: services, cluster templates, providers, tenants,
and how often each kind of job runs and fails.

Figures are this simulator's choices, shaped after Coopr's own catalogue (``design.md``,
"Coopr's own model"); nothing outside :mod:`simulator` depends on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.events import ClusterAction, ProvisionerAction

__all__ = [
    "DEFAULT_FAILURE_P",
    "FAILURE_P",
    "FAILURE_REASONS",
    "HARDWARE",
    "IMAGES",
    "OPERATIONS",
    "PROVIDERS",
    "PURPOSES",
    "RETRY_P",
    "SERVICES",
    "TEMPLATES",
    "TENANTS",
    "THIRD_ATTEMPT_P",
    "Service",
    "Template",
    "placement",
]

_A = ProvisionerAction


@dataclass(frozen=True, slots=True)
class Service:
    """A service: where it runs, its start tier, whether it has INITIALIZE and a daemon."""

    placement: str  # "all", "master" (node 0), "workers" (the others), "quorum" (first 1 or 3)
    tier: int
    initializes: bool
    daemon: bool


SERVICES: Mapping[str, Service] = {
    "base": Service("all", 0, False, False),
    "hosts": Service("all", 0, False, False),
    "zookeeper-server": Service("quorum", 0, True, True),
    "mysql-server": Service("master", 0, True, True),
    "cassandra": Service("all", 0, True, True),
    "mongodb-server": Service("all", 0, True, True),
    "hadoop-hdfs-namenode": Service("master", 1, True, True),
    "hadoop-hdfs-datanode": Service("workers", 2, False, True),
    "hadoop-yarn-resourcemanager": Service("master", 2, False, True),
    "hadoop-yarn-nodemanager": Service("workers", 3, False, True),
    "apache-httpd": Service("workers", 1, False, True),
    "php": Service("workers", 0, False, False),
    "memcached": Service("workers", 1, False, True),
    "haproxy": Service("master", 2, False, True),
    "hbase-master": Service("master", 3, True, True),
    "hbase-regionserver": Service("workers", 4, False, True),
    "hive-metastore": Service("master", 4, True, True),
    "spark-history-server": Service("master", 4, False, True),
}


@dataclass(frozen=True, slots=True)
class Template:
    """A cluster template: its services and the groups of services ADD_SERVICES can add."""

    services: tuple[str, ...]
    addable: tuple[tuple[str, ...], ...]


_HADOOP = ("base", "hosts", "hadoop-hdfs-namenode", "hadoop-hdfs-datanode")
_YARN = ("hadoop-yarn-resourcemanager", "hadoop-yarn-nodemanager")
_HBASE = ("zookeeper-server", "hbase-master", "hbase-regionserver")
TEMPLATES: Mapping[str, Template] = {
    "hadoop-distributed": Template(
        (*_HADOOP, *_YARN),
        (
            ("zookeeper-server",),
            _HBASE,
            ("hive-metastore", "mysql-server"),
            ("spark-history-server",),
        ),
    ),
    "hadoop-hbase-distributed": Template(
        (*_HADOOP, *_YARN, *_HBASE), (("hive-metastore", "mysql-server"),)
    ),
    "lamp-multi": Template(
        ("base", "hosts", "mysql-server", "apache-httpd", "php", "haproxy"), (("memcached",),)
    ),
    "cassandra-ring": Template(("base", "hosts", "cassandra"), ()),
    "mongodb-replica-set": Template(("base", "hosts", "mongodb-server"), ()),
}
PROVIDERS = ("aws", "google", "openstack", "rackspace", "joyent", "digitalocean")
HARDWARE = ("small", "medium", "large", "xlarge")
IMAGES = ("centos6", "centos7", "ubuntu12", "ubuntu14", "rhel6")
TENANTS: Mapping[str, tuple[str, ...]] = {
    "acme": ("admin", "wile", "roadrunner"),
    "globex": ("admin", "hank", "mindy"),
    "initech": ("admin", "peter", "milton", "samir"),
    "hooli": ("admin", "gavin", "richard"),
    "umbrella": ("admin", "alice"),
}
PURPOSES = ("analytics", "etl", "reporting", "search", "web", "staging", "dev", "qa", "ml")

# (action, weight) of the jobs on a live cluster; creates are chosen separately.
OPERATIONS: tuple[tuple[ClusterAction, int], ...] = (
    (ClusterAction.CLUSTER_CONFIGURE, 25),
    (ClusterAction.CLUSTER_CONFIGURE_WITH_RESTART, 15),
    (ClusterAction.ADD_SERVICES, 15),
    (ClusterAction.RESTART_SERVICES, 20),
    (ClusterAction.STOP_SERVICES, 4),
    (ClusterAction.START_SERVICES, 6),
    (ClusterAction.CLUSTER_DELETE, 15),
)
# Probability that a job ends FAILED, by action (creates touch providers and fail most).
FAILURE_P: Mapping[ClusterAction, float] = {ClusterAction.CLUSTER_CREATE: 0.06}
DEFAULT_FAILURE_P = 0.04
RETRY_P = 0.04  # probability that a task needs a second attempt
THIRD_ATTEMPT_P = 0.2  # of those, probability that it needs a third

FAILURE_REASONS: Mapping[ProvisionerAction, str] = {
    _A.CREATE: "provider {provider} refused the request: quota exceeded for {hardware}",
    _A.CONFIRM: "{host} did not answer on SSH within 600 seconds",
    _A.BOOTSTRAP: "bootstrap of {host} failed: package mirror unreachable",
    _A.INSTALL: "installing {service} on {host} failed: package manager exited with 1",
    _A.CONFIGURE: "configuring {service} on {host} failed: template error in site config",
    _A.INITIALIZE: "initializing {service} on {host} failed: exit status 2",
    _A.START: "{service} on {host} did not start: port already in use",
    _A.STOP: "{service} on {host} did not stop within 120 seconds",
    _A.DELETE: "provider {provider} could not delete {host}: API timeout",
}


def placement(service: str, n: int) -> range:
    """Indexes of the nodes, among ``n``, that run ``service``."""
    match SERVICES[service].placement:
        case "all":
            return range(n)
        case "master":
            return range(1)
        case "workers":
            return range(1, n) if n > 1 else range(1)
        case _:
            return range(3 if n >= 3 else 1)
