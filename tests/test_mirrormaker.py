"""MirrorMaker 2's configuration as rendered from the topology."""

from __future__ import annotations

import re
import tomllib

import pytest

from pipeline.errors import ConfigError
from pipeline.mirrormaker import render_mm2_properties
from pipeline.stack import local_topology_toml
from pipeline.topology import parse_topology


def properties(text: str) -> dict[str, str]:
    pairs = (
        line.split(" = ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    return {k: v.replace("\\\\", "\\") for k, v in pairs}


#: How dc2's MirrorMaker reaches each cluster: its own directly, the others by their links.
BOOTSTRAP = {"dc1": "127.0.0.1:19291", "dc2": "127.0.0.1:19100", "dc3": "127.0.0.1:19311"}


def rendered(replicas: int = 1, target: str = "dc2") -> dict[str, str]:
    t = parse_topology(tomllib.loads(local_topology_toml(3, replicas=replicas)))
    return properties(render_mm2_properties(t, target, BOOTSTRAP))


def test_only_the_flows_into_the_target_with_exact_topic_names() -> None:
    props = rendered()
    flows = {
        k.removesuffix(".enabled") for k, v in props.items() if k.endswith(".enabled") and "->" in k
    }
    assert flows == {"dc1->dc2", "dc3->dc2"}
    assert props["clusters"] == "dc1, dc2, dc3"
    patterns = [re.compile(p) for p in props["dc1->dc2.topics"].split(", ")]

    def mirrors(topic: str) -> bool:
        return any(p.fullmatch(topic) for p in patterns)

    assert mirrors("coopr.heartbeat") and mirrors("coopr.ownership")
    assert [s for s in range(16) if mirrors(f"coopr.shard.{s:02d}")] == [0, 3, 6, 9, 12, 15]
    for never in (
        "coopr.dlq",
        "dc3.coopr.shard.00",
        "dc3.coopr.heartbeat",
        "coopr_shard_00",
        "coopr.shard.001",
    ):
        assert not mirrors(never), never


def test_single_broker_settings_and_lowered_refresh() -> None:
    props = rendered()
    assert all(props[k] == "1" for k in props if k.endswith("replication.factor"))
    assert props["refresh.topics.interval.seconds"] == "5"
    assert props["replication.policy.class"].endswith("DefaultReplicationPolicy")
    # MirrorMaker writes only into its target: offset syncs too (by default to the source).
    assert props["offset-syncs.topic.location"] == "target"


def test_each_cluster_is_reached_at_the_address_given() -> None:
    props = rendered()
    assert {dc: props[f"{dc}.bootstrap.servers"] for dc in BOOTSTRAP} == BOOTSTRAP


def test_a_cluster_without_an_address_is_an_error_naming_it() -> None:
    t = parse_topology(tomllib.loads(local_topology_toml(3)))
    with pytest.raises(ConfigError, match="dc3"):
        render_mm2_properties(t, "dc1", {"dc1": "a:1", "dc2": "b:2"})


def test_full_replication_mirrors_every_shard_into_the_target() -> None:
    props = rendered(replicas=2, target="dc1")
    assert props["dc3->dc1.topics"].count("coopr\\.shard\\.") == 16
