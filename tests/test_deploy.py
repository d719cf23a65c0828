"""``deploy render``: each artifact checked by its own tool (systemd-analyze for units, sh for
the topic script) and against the local stack that runs with the same topology."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource

from deployment import STRIMZI_API, TARGETS, Installed, render, render_units
from pipeline.acls import Grant, cluster_principals, principal_name
from pipeline.stack.layout import local_topology_toml
from pipeline.topology import Topology, load_topology
from tests.cli_helpers import run_cli
from tests.conftest import RunningStack

_INSTALLED = str(Path(sys.executable).parent / "coopr-pipeline")
_HERE = Installed(executable=_INSTALLED)


_CA = "/etc/coopr-pipeline/kafka-ca.crt"


def _witness_topology(tmp_path: Path, *, secured: bool = False) -> Topology:
    """Two data DCs and a witness; ``secured``: every Kafka over SASL_SSL trusting :data:`_CA`."""
    path = tmp_path / "topology.toml"
    text = local_topology_toml(3, replicas=1, witnesses=1)
    if secured:
        text = text.replace(
            "\nkafka = ", f'\nkafka_security = "SASL_SSL"\nkafka_ca = "{_CA}"\nkafka = '
        )
    path.write_text(text)
    return load_topology(path)


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze is not on this machine")
    topology = _witness_topology(tmp_path)
    units = render(topology, "systemd", tmp_path / "units", _HERE)
    names = sorted(p.name for p in units)
    data = [dc.name for dc in topology.data_dcs]
    witness = [dc.name for dc in topology.dcs if dc.witness]
    assert names == sorted(
        [f"coopr-pipeline-{k}-{dc}.service" for dc in data for k in ("relay", "applier")]
        + [f"coopr-pipeline-controller-{dc}.service" for dc in data + witness]
    )
    done = subprocess.run(
        [verify, "verify", "--man=no", *map(str, units)], capture_output=True, text=True
    )
    # A warning (an unknown key, a bad value) is printed with status 0: none is allowed.
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")
    # The check can fail: a unit whose program is not there.
    broken = tmp_path / "broken" / units[0].name
    broken.parent.mkdir()
    broken.write_text(units[0].read_text().replace(_INSTALLED, "/nonexistent/coopr-pipeline"))
    refused = subprocess.run([verify, "verify", "--man=no", str(broken)], capture_output=True)
    assert refused.returncode != 0


def test_units_keep_secrets_off_the_command_line_and_stop_cleanly(tmp_path: Path) -> None:
    topology = _witness_topology(tmp_path)
    for name, text in render_units(topology, _INSTALLED).items():
        dc = name.removesuffix(".service").rsplit("-", 1)[1]
        assert f"EnvironmentFile=/etc/coopr-pipeline/{dc}.env" in text
        [command] = re.findall(r"^ExecStart=(.*)$", text, flags=re.M)
        assert f"--dc {dc} " in command and "password" not in command.lower()
        assert "KillSignal=SIGTERM" in text and "Restart=on-failure" in text
        assert int(re.findall(r"^TimeoutStopSec=(\d+)$", text, flags=re.M)[0]) >= 30
        assert "NoNewPrivileges=yes" in text and "ProtectSystem=strict" in text


def test_render_names_the_target_and_refuses_a_relative_executable(tmp_path: Path) -> None:
    f = Path("deploy/topology.local.toml")
    done = run_cli(f, "deploy", "render", "--target", "nope", "--out", str(tmp_path), expect=2)
    assert "'nope' is not one of 'k8s', 'kafka', 'mm2', 'systemd'" in done.stderr
    done = run_cli(
        f, "deploy", "render", "--target", "systemd", "--out", str(tmp_path),
        "--executable", "bin/coopr-pipeline", expect=2,
    )  # fmt: skip
    assert "absolute path" in done.stderr


@pytest.mark.stack
def test_mm2_configs_carry_the_flows_the_local_stack_runs(
    stack: RunningStack, tmp_path: Path
) -> None:
    files = render(stack.topology, "mm2", tmp_path, _HERE)
    assert sorted(p.name for p in files) == [
        f"mm2-{dc.name}.properties" for dc in stack.topology.dcs
    ]
    for path in files:
        running = (stack.run_dir / "mirrormaker" / path.name).read_text()
        rendered = path.read_text()

        def settings(text: str) -> dict[str, str]:
            pairs = (line.split(" = ", 1) for line in text.splitlines() if " = " in line)
            return {k: v for k, v in pairs if not k.endswith(".bootstrap.servers")}

        mine, theirs = settings(rendered), settings(running)
        factors = {k for k in theirs if k.endswith("replication.factor")}
        assert {k: mine[k] for k in factors} == dict.fromkeys(factors, "3")
        assert {k: v for k, v in mine.items() if k not in factors} == {
            k: v for k, v in theirs.items() if k not in factors
        }
        for dc in stack.topology.dcs:
            assert f"{dc.name}.bootstrap.servers = {dc.kafka}" in rendered


@pytest.mark.stack
def test_topic_scripts_create_the_topics_the_local_stack_has(
    stack: RunningStack, tmp_path: Path
) -> None:
    files = render(stack.topology, "kafka", tmp_path, _HERE)
    for path in files:
        if path.suffix == ".properties":
            assert "min.insync.replicas=2" in path.read_text()
            assert "unclean.leader.election.enable=false" in path.read_text()
            continue
        assert subprocess.run(["sh", "-n", str(path)]).returncode == 0
        dc = path.stem.removeprefix("topics-")
        wanted = {
            m[0]: dict(re.findall(r"--config ([\w.]+)=(\S+)", m[1]))
            for m in re.findall(r"--topic (\S+) (.*)$", path.read_text(), flags=re.M)
        }
        admin = AdminClient(stack.kafka(dc).admin())
        resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in wanted]
        for resource, future in admin.describe_configs(resources).items():
            have = {k: v.value for k, v in future.result(timeout=15).items()}
            # Replication settings are production's; everything else is what the stack runs.
            want = {k: v for k, v in wanted[resource.name].items() if k != "min.insync.replicas"}
            assert {k: have[k] for k in want} == want, resource.name


_CRDS = Path(__file__).parent.parent / "deploy" / "k8s" / "strimzi-crds"


def _closed(node: Any) -> Any:
    """``node`` with every object that lists its properties refusing any other, as the API
    server's strict field validation (kubectl's default) does; jsonschema would accept a
    misspelt field."""
    if isinstance(node, list):
        return [_closed(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _closed(v) for k, v in node.items()}
    open_ = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
    if node.get("type") == "object" and "properties" in node and not open_:
        node["additionalProperties"] = False
    return node


def _crd_schemas() -> dict[str, dict[str, Any]]:
    """Kind to the openAPIV3Schema of the vendored Strimzi CRDs' version the renderer uses."""
    schemas = {}
    for path in _CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        [version] = [v for v in crd["spec"]["versions"] if v["name"] == STRIMZI_API.split("/")[1]]
        schemas[crd["spec"]["names"]["kind"]] = _closed(version["schema"]["openAPIV3Schema"])
    return schemas


def _problems(doc: dict[str, Any], schemas: dict[str, dict[str, Any]]) -> list[str]:
    if doc["apiVersion"] == STRIMZI_API:
        validator = jsonschema.Draft7Validator(schemas[doc["kind"]])
        return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as e:
        return [str(e)]
    return []


def test_k8s_manifests_pass_the_kubernetes_and_strimzi_schemas(tmp_path: Path) -> None:
    topology = _witness_topology(tmp_path)
    schemas = _crd_schemas()
    files = render(topology, "k8s", tmp_path / "k8s", _HERE)
    assert sorted(p.name for p in files) == sorted(f"k8s-{dc.name}.yaml" for dc in topology.dcs)
    for path in files:
        docs = list(yaml.safe_load_all(path.read_text()))
        kinds = Counter(d["kind"] for d in docs)
        workers = 1 if path.stem.removeprefix("k8s-") == "dc3" else 3
        assert kinds["Deployment"] == kinds["PodDisruptionBudget"] == workers
        assert kinds["KafkaMirrorMaker2"] == kinds["ConfigMap"] == 1 and kinds["KafkaTopic"] > 3
        principals = cluster_principals(topology, path.stem.removeprefix("k8s-"))
        assert kinds["KafkaUser"] == len(principals)
        for doc in docs:
            assert _problems(doc, schemas) == [], doc["metadata"]["name"]
    # The checks can fail: a Deployment with a misspelt field, a MirrorMaker without a target,
    # a user with a misspelt field or an operation spelt as kafka-acls.sh spells it.
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    assert _problems(deployment, schemas)
    mm2 = next(d for d in docs if d["kind"] == "KafkaMirrorMaker2")
    del mm2["spec"]["target"]["alias"]
    assert _problems(mm2, schemas)
    user = next(d for d in docs if d["kind"] == "KafkaUser")
    [acl, *_] = user["spec"]["authorization"]["acls"]
    acl["resource"]["pattern"] = acl["resource"].pop("patternType")
    assert _problems(user, schemas)
    acl["resource"]["patternType"] = acl["resource"].pop("pattern")
    acl["operations"] = ["WRITE"]
    assert _problems(user, schemas)


def test_k8s_workers_run_the_image_as_its_user_with_secrets_by_reference(tmp_path: Path) -> None:
    topology = _witness_topology(tmp_path)
    image = (Path(__file__).parent.parent / "deploy" / "Containerfile").read_text()
    [entrypoint] = re.findall(r"^ENTRYPOINT \[\"(.*)\"\]$", image, flags=re.M)
    [user] = re.findall(r"^USER (\d+)$", image, flags=re.M)
    assert entrypoint == Installed().executable
    text = render(topology, "k8s", tmp_path, Installed(image="registry.example/coopr:1"))[0]
    docs = list(yaml.safe_load_all(text.read_text()))
    users = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "KafkaUser"}
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": int(user)}
        [container] = pod["containers"]
        assert container["image"] == "registry.example/coopr:1"
        assert container["envFrom"] == [{"secretRef": {"name": "coopr-pipeline-dc1"}}]
        # The worker logs in as its own KafkaUser, with the password Strimzi generated for it
        # into the Secret named like the user.
        kafka_user = f"coopr-{container['name']}-dc1"
        assert container["env"] == [
            {"name": "COOPR_KAFKA_USERNAME", "value": kafka_user},
            {
                "name": "COOPR_KAFKA_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": kafka_user, "key": "password"}},
            },
        ]
        assert users[kafka_user]["authentication"] == {"type": "scram-sha-512"}
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert pod["terminationGracePeriodSeconds"] >= 30
    assert "kind: Secret\n" not in text.read_text()


def _k8s_files(tmp_path: Path) -> tuple[Topology, dict[str, list[dict[str, Any]]]]:
    """The witness topology and, per DC, the documents of its rendered manifests."""
    topology = _witness_topology(tmp_path)
    files = render(topology, "k8s", tmp_path / "k8s", _HERE)
    return topology, {
        p.stem.removeprefix("k8s-"): list(yaml.safe_load_all(p.read_text())) for p in files
    }


def _users(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "KafkaUser"}


def _grants(user: dict[str, Any]) -> list[Grant]:
    acls = user["spec"]["authorization"]["acls"]
    assert {a["host"] for a in acls} == {"*"}
    return [
        Grant(r["type"], r["name"], tuple(a["operations"]), r["patternType"])
        for a in acls
        for r in [a["resource"]]
    ]


def test_k8s_users_grant_each_principal_its_acls_and_no_more(tmp_path: Path) -> None:
    topology, files = _k8s_files(tmp_path)
    for dc, docs in files.items():
        users = _users(docs)
        assert {u["metadata"]["labels"]["strimzi.io/cluster"] for u in users.values()} == {dc}
        assert {name: _grants(u) for name, u in users.items()} == {
            p.user: list(p.grants) for p in cluster_principals(topology, dc)
        }
    # A stolen relay credential of dc1 writes dc1's shard topics (those its manifests create)
    # and nothing else, and logs in to no other DC's Kafka.
    shards = {
        d["spec"]["topicName"]
        for d in files["dc1"]
        if d["kind"] == "KafkaTopic" and d["spec"]["topicName"].startswith("coopr.shard.")
    }
    relay = _grants(_users(files["dc1"])["coopr-relay-dc1"])
    assert {(g.resource, g.pattern) for g in relay} == {("topic", "literal")}
    assert {g.name for g in relay} == {g.name for g in relay if "Write" in g.operations} == shards
    assert all("coopr-relay-dc1" not in _users(docs) for dc, docs in files.items() if dc != "dc1")


def test_k8s_mirror_maker_logs_in_to_each_cluster_as_its_user(tmp_path: Path) -> None:
    topology, files = _k8s_files(tmp_path)
    for target, docs in files.items():
        [mm2] = [d["spec"] for d in docs if d["kind"] == "KafkaMirrorMaker2"]
        user = principal_name("mm2", target)
        for cluster in (mm2["target"], *(m["source"] for m in mm2["mirrors"])):
            alias = cluster["alias"]
            assert cluster["bootstrapServers"] == topology.dc(alias).kafka
            assert cluster["tls"] == {
                "trustedCertificates": [
                    {"secretName": f"{alias}-cluster-ca-cert", "pattern": "*.crt"}
                ]
            }
            secret = f"{user}-password"
            assert cluster["authentication"] == {
                "type": "scram-sha-512",
                "username": user,
                "passwordSecret": {"secretName": secret, "password": "password"},
            }
            # The same user in that DC's cluster, its password from a Secret of the same name
            # (the operator's, one value in every DC): one password logs in everywhere.
            there = _users(files[alias])[user]["spec"]["authentication"]
            assert there == {
                "type": "scram-sha-512",
                "password": {"valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}}},
            }
        # In each source it may read exactly the topics its pattern mirrors from there.
        for mirror in mm2["mirrors"]:
            source = files[mirror["source"]["alias"]]
            topics = {d["spec"]["topicName"] for d in source if d["kind"] == "KafkaTopic"}
            read = {g.name for g in _grants(_users(source)[user]) if "Read" in g.operations}
            assert read == {t for t in topics if re.fullmatch(mirror["topicsPattern"], t)}


def test_rendered_files_hold_no_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    topology = _witness_topology(tmp_path, secured=True)
    secret = f"pw-{uuid.uuid4().hex}"
    for name in ("PGPASSWORD", "COOPR_KAFKA_PASSWORD", "COOPR_KAFKA_DC1_PASSWORD"):
        monkeypatch.setenv(name, secret)
    for target in TARGETS:
        out = tmp_path / target
        run_cli(Path(topology.source), "deploy", "render", "--target", target, "--out", str(out))
        for path in out.iterdir():
            assert secret not in path.read_text(), path.name


def test_a_secured_topology_renders_logins_and_trust_by_reference(tmp_path: Path) -> None:
    topology = _witness_topology(tmp_path, secured=True)
    [mm2] = [p for p in render(topology, "mm2", tmp_path / "mm2", _HERE) if "dc2" in p.name]
    config = dict(line.split(" = ", 1) for line in mm2.read_text().splitlines() if " = " in line)
    assert config["config.providers"] == "file"
    for dc in topology.dcs:
        assert config[f"{dc.name}.security.protocol"] == "SASL_SSL"
        assert config[f"{dc.name}.ssl.truststore.location"] == _CA
        login = config[f"{dc.name}.sasl.jaas.config"]
        assert 'username="coopr-mm2-dc2"' in login
        assert "${file:/etc/coopr-pipeline/mm2-dc2.properties:password}" in login
    schemas = _crd_schemas()
    [k8s] = [p for p in render(topology, "k8s", tmp_path / "k8s", _HERE) if "dc1" in p.name]
    deployments = [d for d in yaml.safe_load_all(k8s.read_text()) if d["kind"] == "Deployment"]
    assert len(deployments) == 3
    for doc in deployments:
        assert _problems(doc, schemas) == [], doc["metadata"]["name"]
        pod = doc["spec"]["template"]["spec"]
        [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == _CA]
        [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == "dc1-cluster-ca-cert"
