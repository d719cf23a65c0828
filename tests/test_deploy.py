"""``deploy render``: each artifact checked by its own tool (systemd-analyze for units, sh for
the topic script) and against the local stack that runs with the same topology."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource

from deployment import STRIMZI_API, Installed, render, render_units
from pipeline.stack.layout import local_topology_toml
from pipeline.topology import Topology, load_topology
from tests.cli_helpers import run_cli
from tests.conftest import RunningStack

_INSTALLED = str(Path(sys.executable).parent / "coopr-pipeline")
_HERE = Installed(executable=_INSTALLED)


def _witness_topology(tmp_path: Path) -> Topology:
    path = tmp_path / "topology.toml"
    path.write_text(local_topology_toml(3, replicas=1, witnesses=1))
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


def _crd_schemas() -> dict[str, dict[str, Any]]:
    """Kind to the openAPIV3Schema of the vendored Strimzi CRDs' version the renderer uses."""
    schemas = {}
    for path in _CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        [version] = [v for v in crd["spec"]["versions"] if v["name"] == STRIMZI_API.split("/")[1]]
        schemas[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
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
        for doc in docs:
            assert _problems(doc, schemas) == [], doc["metadata"]["name"]
    # The checks can fail: a Deployment with a misspelt field, a MirrorMaker without a target.
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    assert _problems(deployment, schemas)
    mm2 = next(d for d in docs if d["kind"] == "KafkaMirrorMaker2")
    del mm2["spec"]["target"]["alias"]
    assert _problems(mm2, schemas)


def test_k8s_workers_run_the_image_as_its_user_with_secrets_by_reference(tmp_path: Path) -> None:
    topology = _witness_topology(tmp_path)
    image = (Path(__file__).parent.parent / "deploy" / "Containerfile").read_text()
    [entrypoint] = re.findall(r"^ENTRYPOINT \[\"(.*)\"\]$", image, flags=re.M)
    [user] = re.findall(r"^USER (\d+)$", image, flags=re.M)
    assert entrypoint == Installed().executable
    text = render(topology, "k8s", tmp_path, Installed(image="registry.example/coopr:1"))[0]
    for doc in yaml.safe_load_all(text.read_text()):
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": int(user)}
        [container] = pod["containers"]
        assert container["image"] == "registry.example/coopr:1"
        assert container["envFrom"] == [{"secretRef": {"name": "coopr-pipeline-dc1"}}]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert pod["terminationGracePeriodSeconds"] >= 30
    assert "kind: Secret\n" not in text.read_text()
