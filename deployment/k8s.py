"""Kubernetes manifests for one DC (each DC is a Kubernetes cluster of its own, with its own
Kafka run by Strimzi): the workers, their topology, and the Strimzi resources for its topics
and its MirrorMaker 2.

Per worker (relay, applier, controller; a witness runs only the controller): a Deployment of
two pods (one active, one standby: the relay's outbox lock, the applier's consumer group and
the controller's lease each let only one work), liveness and readiness probes on ``/healthz``,
requests and limits, a non-root read-only container, secrets from Secrets that are referenced
and never rendered; a PodDisruptionBudget keeping one pod through a node drain; a Service
for ``/metrics`` with Prometheus' scrape annotations. The topology is a ConfigMap. Topics are
``KafkaTopic`` resources (the local stack's list, replication factor 3); MirrorMaker 2 is a
``KafkaMirrorMaker2`` with the flows into this DC, as ``deploy render --target mm2`` gives.
Every principal of the DC's Kafka (:func:`pipeline.acls.cluster_principals`) is a
``KafkaUser`` with its ACLs; Kafka is reached over TLS with SCRAM-SHA-512 (docs/security.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from deployment.kafka import PRODUCTION_REPLICATION
from deployment.systemd import WORKER_PORTS
from pipeline.acls import Principal, Role, cluster_principals, mirrormaker_group, principal_name
from pipeline.admin import TopicSpec
from pipeline.mirrormaker import LATENCY_TUNING, flow_topics
from pipeline.stack.orchestrator import dc_topics
from pipeline.topology import DataCenter, Topology

__all__ = ["STRIMZI_API", "render_manifests"]

#: Strimzi's API version of the CRDs vendored in deploy/k8s/strimzi-crds (Strimzi 1.2.0).
STRIMZI_API = "kafka.strimzi.io/v1"

_APP = "coopr-pipeline"
_TOPOLOGY_DIR = "/etc/coopr-pipeline"

#: Per worker: CPU and memory asked for and allowed. The applier decodes and upserts in
#: batches of up to 16 MiB, so it gets the most memory.
_RESOURCES = {
    "relay": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
    "applier": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    "controller": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
}


def render_manifests(topology: Topology, dc: str, image: str) -> str:
    """Every manifest of ``dc``, as one multi-document YAML file, running ``image``."""
    site = topology.dc(dc)
    kinds: tuple[Role, ...] = (
        ("controller",) if site.witness else ("relay", "applier", "controller")
    )
    docs: list[dict[str, Any]] = [_topology_map(topology)]
    for kind in kinds:
        docs += [_deployment(kind, site, image), _budget(kind), _service(kind)]
    docs += [_topic(dc, spec) for spec in dc_topics(topology, site)]
    mirror_makers = {principal_name("mm2", other.name) for other in topology.dcs}
    docs += [_user(dc, p, p.user in mirror_makers) for p in cluster_principals(topology, dc)]
    docs.append(_mirror_maker(topology, dc))
    return yaml.safe_dump_all(docs, sort_keys=False)


def _labels(kind: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": _APP, "app.kubernetes.io/component": kind}


def _topology_map(topology: Topology) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{_APP}-topology", "labels": {"app.kubernetes.io/name": _APP}},
        "data": {"topology.toml": Path(topology.source).read_text()},
    }


def _shared_password(user: str) -> str:
    """The Secret (key ``password``) holding the password of ``user`` in every DC's cluster
    it belongs to: made by the operator, the same in each DC."""
    return f"{user}-password"


def _deployment(kind: Role, site: DataCenter, image: str) -> dict[str, Any]:
    dc = site.name
    port = WORKER_PORTS[kind]
    user = principal_name(kind, dc)
    probe = {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 10}
    mounts: list[dict[str, Any]] = [
        {"name": "topology", "mountPath": _TOPOLOGY_DIR, "readOnly": True}
    ]
    container = {
        "name": kind,
        "image": image,
        "args": [
            *("--log-json", "worker", kind, "--dc", dc),
            *("--topology", f"{_TOPOLOGY_DIR}/topology.toml"),
            *("--metrics-host", "0.0.0.0", "--metrics-port", str(port)),
        ],
        # PGPASSWORD from a Secret made by the operator.
        "envFrom": [{"secretRef": {"name": f"{_APP}-{dc}"}}],
        # The worker's own KafkaUser, whose password Strimzi generates into a Secret of the
        # user's name; env wins over envFrom, so no other Kafka password can take its place.
        "env": [
            {"name": "COOPR_KAFKA_USERNAME", "value": user},
            {
                "name": "COOPR_KAFKA_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": user, "key": "password"}},
            },
        ],
        "ports": [{"name": "metrics", "containerPort": port}],
        "livenessProbe": {**probe, "failureThreshold": 6},
        "readinessProbe": probe,
        "resources": _RESOURCES[kind],
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    volumes: list[dict[str, Any]] = [
        {"name": "topology", "configMap": {"name": f"{_APP}-topology"}}
    ]
    if site.kafka_ca is not None:
        # The topology's CA file is the DC's Strimzi cluster CA, one file at its path.
        mounts.append(
            {"name": "kafka-ca", "mountPath": site.kafka_ca, "subPath": "ca.crt", "readOnly": True}
        )
        volumes.append({"name": "kafka-ca", "secret": {"secretName": f"{dc}-cluster-ca-cert"}})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{_APP}-{kind}", "labels": _labels(kind)},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": _labels(kind)},
            "template": {
                "metadata": {"labels": _labels(kind)},
                "spec": {
                    # Above a batch, a relay's lock silence (15 s) and a controller's drain:
                    # SIGTERM lets the worker finish and store its offsets.
                    "terminationGracePeriodSeconds": 60,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def _budget(kind: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": f"{_APP}-{kind}", "labels": _labels(kind)},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": _labels(kind)}},
    }


def _service(kind: str) -> dict[str, Any]:
    port = WORKER_PORTS[kind]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"{_APP}-{kind}",
            "labels": _labels(kind),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(port),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {
            "selector": _labels(kind),
            "ports": [{"name": "metrics", "port": port, "targetPort": "metrics"}],
        },
    }


def _topic(dc: str, spec: TopicSpec) -> dict[str, Any]:
    return {
        "apiVersion": STRIMZI_API,
        "kind": "KafkaTopic",
        # Kubernetes names allow no upper case or underscore; the topic keeps its own name.
        "metadata": {
            "name": spec.name.replace("_", "-").lower(),
            "labels": {"strimzi.io/cluster": dc},
        },
        "spec": {
            "topicName": spec.name,
            "partitions": spec.partitions,
            "replicas": PRODUCTION_REPLICATION,
            "config": {"min.insync.replicas": 2, **spec.config},
        },
    }


def _user(dc: str, principal: Principal, shared: bool) -> dict[str, Any]:
    """``principal`` as a Strimzi ``KafkaUser`` of ``dc``'s cluster. Strimzi generates its
    password unless it is ``shared`` by several clusters (MirrorMaker 2 logs in to every
    cluster it mirrors with one password): then it is the operator's Secret."""
    authentication: dict[str, Any] = {"type": "scram-sha-512"}
    if shared:
        ref = {"name": _shared_password(principal.user), "key": "password"}
        authentication["password"] = {"valueFrom": {"secretKeyRef": ref}}
    acls = [
        {
            "resource": {"type": g.resource, "name": g.name, "patternType": g.pattern},
            "operations": list(g.operations),
            "host": "*",
        }
        for g in principal.grants
    ]
    return {
        "apiVersion": STRIMZI_API,
        "kind": "KafkaUser",
        "metadata": {"name": principal.user, "labels": {"strimzi.io/cluster": dc}},
        "spec": {
            "authentication": authentication,
            "authorization": {"type": "simple", "acls": acls},
        },
    }


def _cluster(site: DataCenter, user: str) -> dict[str, Any]:
    """How MirrorMaker 2 reaches ``site``'s Kafka: at its topology address (the cluster's
    TLS listener), trusting the CA Strimzi made for that cluster, logged in as ``user``."""
    return {
        "alias": site.name,
        "bootstrapServers": site.kafka,
        "tls": {
            "trustedCertificates": [
                {"secretName": f"{site.name}-cluster-ca-cert", "pattern": "*.crt"}
            ]
        },
        "authentication": {
            "type": "scram-sha-512",
            "username": user,
            "passwordSecret": {"secretName": _shared_password(user), "password": "password"},
        },
    }


def _mirror_maker(topology: Topology, target: str) -> dict[str, Any]:
    rf = PRODUCTION_REPLICATION
    user = principal_name("mm2", target)
    mirrors = []
    for source in topology.dcs:
        if source.name == target:
            continue
        topics = flow_topics(topology, source.name, target)
        mirrors.append(
            {
                "source": _cluster(source, user),
                "sourceConnector": {
                    "tasksMax": 1,
                    "config": {
                        "replication.factor": rf,
                        "offset-syncs.topic.replication.factor": rf,
                        "offset-syncs.topic.location": "target",
                        "sync.topic.acls.enabled": "false",
                        "refresh.topics.interval.seconds": 5,
                        **{
                            f"producer.override.{k.removeprefix('producer.')}": v
                            for k, v in LATENCY_TUNING.items()
                        },
                    },
                },
                # Whole names only: a copy is never mirrored again, dead letters never leave.
                "topicsPattern": "|".join(t.replace(".", "\\.") for t in topics),
            }
        )
    return {
        "apiVersion": STRIMZI_API,
        "kind": "KafkaMirrorMaker2",
        "metadata": {"name": f"{_APP}-into-{target}", "labels": {"app.kubernetes.io/name": _APP}},
        "spec": {
            "replicas": 1,
            "target": {
                **_cluster(topology.dc(target), user),
                "groupId": mirrormaker_group(target),
                "configStorageTopic": f"mm2-{target}.configs",
                "offsetStorageTopic": f"mm2-{target}.offsets",
                "statusStorageTopic": f"mm2-{target}.status",
                "config": {
                    "config.storage.replication.factor": rf,
                    "offset.storage.replication.factor": rf,
                    "status.storage.replication.factor": rf,
                },
            },
            # No heartbeat or checkpoint connector: the applier keeps its offsets in Postgres.
            "mirrors": mirrors,
        },
    }
