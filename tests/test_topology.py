"""The topology file: validation that names the field, and the derived shard layout."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ConfigError
from pipeline.stack import local_topology_toml
from pipeline.stack.runtime import deploy_dir
from pipeline.topology import load_topology, parse_topology


def topology(dcs: int = 3, replicas: int = 1, shards: int = 16) -> dict[str, Any]:
    return tomllib.loads(local_topology_toml(dcs, shard_count=shards, replicas=replicas))


def test_shipped_local_topology_is_the_generated_one() -> None:
    shipped = load_topology(deploy_dir() / "topology.local.toml")
    assert shipped.dcs == parse_topology(topology()).dcs
    assert (shipped.shard_count, shipped.replicas) == (16, 1)


def test_owners_and_replicas_follow_the_ring() -> None:
    t = parse_topology(topology())
    assert [t.initial_owner(s) for s in range(4)] == ["dc1", "dc2", "dc3", "dc1"]
    assert t.replica_list(0) == ("dc2",)
    assert t.replica_list(2) == ("dc1",)
    assert t.dc_set(1) == ("dc2", "dc3")
    assert t.shards_of("dc1") == (0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15)
    assert t.owned_shards("dc1") == (0, 3, 6, 9, 12, 15)
    assert t.owned_shards("dc2") == (1, 4, 7, 10, 13)


def test_flows_carry_shards_whose_set_holds_both_ends() -> None:
    t = parse_topology(topology())
    assert t.flow_shards("dc1", "dc2") == (0, 3, 6, 9, 12, 15)
    # After a failover dc2 publishes shard 0 and dc1 replicates it: the reverse flow has it too.
    assert t.flow_shards("dc2", "dc1") == t.flow_shards("dc1", "dc2")
    assert t.replicated_by("dc2") == {"dc1": (0, 3, 6, 9, 12, 15), "dc3": (1, 4, 7, 10, 13)}


def test_two_replicas_put_every_shard_everywhere_in_three_dcs() -> None:
    t = parse_topology(topology(replicas=2))
    assert all(set(t.dc_set(s)) == {"dc1", "dc2", "dc3"} for s in range(t.shard_count))
    assert t.replica_list(0) == ("dc2", "dc3")


def test_witness_owns_nothing_but_is_a_dc() -> None:
    raw = topology()
    raw["dc"].append(
        {
            "name": "witness",
            "kafka": "127.0.0.1:19990",
            "database": "postgresql://x@127.0.0.1/x",
            "witness": True,
        }
    )
    t = parse_topology(raw)
    assert [dc.name for dc in t.data_dcs] == ["dc1", "dc2", "dc3"]
    assert t.shards_of("witness") == ()
    assert t.owned_shards("witness") == ()
    assert t.dc("witness").witness


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.update(shard_count=0), "shard_count"),
        (lambda r: r.update(shard_count="16"), "shard_count"),
        (lambda r: r.update(replicas=3), "replicas"),
        (lambda r: r.update(colour="blue"), "colour"),
        (lambda r: r["dc"][1].update(name="DC 2"), "dc[1].name"),
        (lambda r: r["dc"][2].update(name="dc1"), "dc[2].name"),
        (lambda r: r["dc"][0].update(kafka="localhost"), "dc[0].kafka"),
        (lambda r: r["dc"][0].update(database="mysql://x"), "dc[0].database"),
        (lambda r: r["dc"][0].update(witness="yes"), "dc[0].witness"),
        (lambda r: r["dc"][0].update(port=1), "dc[0].port"),
        (lambda r: r.update(dc=r["dc"][:1]), "dc"),
    ],
)
def test_a_wrong_setting_names_its_field(
    change: Callable[[dict[str, Any]], object], field: str
) -> None:
    raw = topology()
    change(raw)
    with pytest.raises(ConfigError) as caught:
        parse_topology(raw, source="t.toml")
    assert caught.value.field == field
    assert f"field {field!r}" in str(caught.value) and "t.toml" in str(caught.value)


def test_unreadable_or_broken_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_topology(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("shard_count = [")
    with pytest.raises(ConfigError, match=r"not valid TOML.*broken\.toml"):
        load_topology(broken)


def test_unknown_dc_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="dc1, dc2, dc3"):
        parse_topology(topology()).dc("dc9")
