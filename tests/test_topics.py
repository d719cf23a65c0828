"""Topic names and the one DC-name rule they and the topology share."""

from __future__ import annotations

import pytest

from pipeline.errors import TopicNameError
from pipeline.topics import is_dc_name, mirrored, parse_mirrored_shard, shard_topic


@pytest.mark.parametrize("name", ["dc1", "us-east-1", "a", "a" * 31])
def test_dc_names_that_the_rule_accepts(name: str) -> None:
    assert is_dc_name(name)
    assert parse_mirrored_shard(mirrored(name, shard_topic(7))).source_dc == name


@pytest.mark.parametrize("name", ["", "DC1", "1dc", "dc_1", "dc.1", "a" * 32])
def test_dc_names_that_the_rule_refuses_are_no_mirror_prefix(name: str) -> None:
    assert not is_dc_name(name)
    with pytest.raises(TopicNameError, match="is not a DC name"):
        mirrored(name, shard_topic(7))
