"""The principals and ACLs of each DC's Kafka (pipeline.acls), checked against the shard
layout, the MirrorMaker 2 flows and the topics the workers use. Pure: no stack."""

from __future__ import annotations

import tomllib

import pytest

from consumer.applier import ApplierConfig, replicated_topics
from pipeline.acls import Grant, Principal, cluster_principals, principal_name
from pipeline.kafka_config import KafkaSettings
from pipeline.mirrormaker import flow_topics
from pipeline.stack import local_topology_toml
from pipeline.topics import DLQ_TOPIC, MIRRORED_TOPICS, SHARD_PREFIX, mirrored, shard_topic
from pipeline.topology import Topology, parse_topology

#: Read-only operations: what a principal that only reads may hold.
_READ_ONLY = {"Read", "Describe", "DescribeConfigs"}


@pytest.fixture(
    params=[
        pytest.param((3, 1, 0), id="3-dcs"),
        # Four data DCs with one replica: a DC set is two DCs, so each DC carries only some
        # shards and each flow only some of them.
        pytest.param((5, 1, 1), id="4-dcs-and-a-witness"),
        pytest.param((4, 2, 1), id="3-dcs-2-replicas-and-a-witness"),
    ]
)
def topology(request: pytest.FixtureRequest) -> Topology:
    dcs, replicas, witnesses = request.param
    return parse_topology(
        tomllib.loads(local_topology_toml(dcs, replicas=replicas, witnesses=witnesses))
    )


def _principals(topology: Topology, dc: str) -> dict[str, Principal]:
    principals = cluster_principals(topology, dc)
    names = [p.user for p in principals]
    # Strimzi names each KafkaUser after its principal: one per name in a cluster.
    assert len(set(names)) == len(names), names
    return {p.user: p for p in principals}


def _topics(grants: tuple[Grant, ...]) -> dict[str, frozenset[str]]:
    """Topic named exactly to the operations granted on it."""
    assert all(g.pattern == "literal" for g in grants if g.resource == "topic")
    return {g.name: frozenset(g.operations) for g in grants if g.resource == "topic"}


def test_a_relay_writes_exactly_the_shard_topics_of_its_dc_set(topology: Topology) -> None:
    for site in topology.data_dcs:
        relay = _principals(topology, site.name)[principal_name("relay", site.name)]
        mine = {
            shard_topic(s) for s in range(topology.shard_count) if site.name in topology.dc_set(s)
        }
        assert _topics(relay.grants) == dict.fromkeys(mine, frozenset({"Write", "Describe"}))
        assert all(g.resource == "topic" for g in relay.grants)
    if len(topology.data_dcs) > topology.replicas + 1:
        # The layout leaves some shards outside dc1's DC set: its relay may not touch them.
        relay = _principals(topology, "dc1")[principal_name("relay", "dc1")]
        assert len(_topics(relay.grants)) < topology.shard_count


def test_an_applier_reads_the_copies_mirrored_into_its_dc_and_writes_only_dead_letters(
    topology: Topology,
) -> None:
    for site in topology.data_dcs:
        d = site.name
        applier = _principals(topology, d)[principal_name("applier", d)]
        copies = {
            mirrored(source.name, topic)
            for source in topology.dcs
            if source.name != d
            for topic in flow_topics(topology, source.name, d)
            if topic.startswith(SHARD_PREFIX)
        }
        assert copies == set(replicated_topics(topology, d))
        assert _topics(applier.grants) == {
            **dict.fromkeys(copies, frozenset({"Read", "Describe"})),
            DLQ_TOPIC: frozenset({"Write", "Describe"}),
        }
        group = ApplierConfig(d, "", KafkaSettings("", ""), topics=()).group_id
        assert [g for g in applier.grants if g.resource == "group"] == [
            Grant("group", group, ("Read", "Describe"))
        ]


def test_a_controller_writes_its_dcs_control_topics_and_reads_every_others(
    topology: Topology,
) -> None:
    for site in topology.dcs:
        controller = _principals(topology, site.name)[principal_name("controller", site.name)]
        topics = _topics(controller.grants)
        written = {t for t, ops in topics.items() if "Write" in ops}
        assert written == set(MIRRORED_TOPICS)
        heard = {mirrored(o.name, t) for o in topology.dcs if o != site for t in MIRRORED_TOPICS}
        assert set(topics) - written == heard


def test_mirror_maker_reads_exactly_its_flow_in_each_source(topology: Topology) -> None:
    for source in topology.dcs:
        principals = _principals(topology, source.name)
        for target in topology.dcs:
            if target == source:
                continue
            reader = principals[principal_name("mm2", target.name)]
            topics = _topics(reader.grants)
            assert set(topics) == set(flow_topics(topology, source.name, target.name))
            assert all(ops <= _READ_ONLY for ops in topics.values())
            assert all(g.resource == "topic" for g in reader.grants)


def test_mirror_maker_creates_every_copy_in_its_target_and_no_local_topic(
    topology: Topology,
) -> None:
    for target in topology.dcs:
        writer = _principals(topology, target.name)[principal_name("mm2", target.name)]
        prefixes = [g for g in writer.grants if g.resource == "topic" and g.pattern == "prefix"]
        copies = {
            mirrored(s.name, t)
            for s in topology.dcs
            if s != target
            for t in flow_topics(topology, s.name, target.name)
        }
        for copy in copies:
            assert any(copy.startswith(g.name) and "Create" in g.operations for g in prefixes)
        local = [shard_topic(s) for s in range(topology.shard_count)] + [
            *MIRRORED_TOPICS,
            DLQ_TOPIC,
        ]
        granted = [g for g in writer.grants if g.resource == "topic"]
        assert not [t for t in local for g in granted if t.startswith(g.name)]


def test_a_witness_has_no_relay_or_applier(topology: Topology) -> None:
    for witness in (dc for dc in topology.dcs if dc.witness):
        for role in ("relay", "applier"):
            user = principal_name(role, witness.name)
            assert all(user not in _principals(topology, dc.name) for dc in topology.dcs)


def test_only_the_read_only_operator_is_granted_every_topic_or_group(
    topology: Topology,
) -> None:
    operator = principal_name("operator")
    for dc in topology.dcs:
        principals = _principals(topology, dc.name)
        for principal in principals.values():
            wide = [
                g
                for g in principal.grants
                if g.name == "*" or (g.pattern == "prefix" and g.name in ("", "coopr."))
            ]
            assert not wide or principal.user == operator, principal
        assert all(set(g.operations) <= _READ_ONLY for g in principals[operator].grants)
