"""MirrorMaker 2's configuration as rendered from the topology."""

from __future__ import annotations

import re
import tomllib

from pipeline.mirrormaker import render_mm2_properties
from pipeline.stack import local_topology_toml
from pipeline.topology import parse_topology


def properties(text: str) -> dict[str, str]:
    pairs = (
        line.split(" = ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    return {k: v.replace("\\\\", "\\") for k, v in pairs}


def rendered(replicas: int = 1) -> dict[str, str]:
    t = parse_topology(tomllib.loads(local_topology_toml(3, replicas=replicas)))
    return properties(render_mm2_properties(t))


def test_every_ordered_pair_is_a_flow_with_exact_topic_names() -> None:
    props = rendered()
    flows = {
        k.removesuffix(".enabled") for k, v in props.items() if k.endswith(".enabled") and "->" in k
    }
    assert flows == {
        f"{a}->{b}" for a in ("dc1", "dc2", "dc3") for b in ("dc1", "dc2", "dc3") if a != b
    }
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
    assert props["dc2.bootstrap.servers"] == "127.0.0.1:19100"


def test_full_replication_mirrors_every_shard_between_every_pair() -> None:
    props = rendered(replicas=2)
    assert props["dc3->dc1.topics"].count("coopr\\.shard\\.") == 16
