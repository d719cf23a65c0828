"""shard_of: pinned values, agreement with an independent CRC-32, input validation."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import PipelineError, ShardingError
from pipeline.shards import shard_of


def crc32_reference(data: bytes) -> int:
    """CRC-32/IEEE bit by bit (reflected polynomial 0xEDB88320), independent of zlib."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_reference_crc_matches_the_standard_check_value() -> None:
    # The CRC-32 "check" value of the catalogue of parametrised CRC algorithms.
    assert crc32_reference(b"123456789") == 0xCBF43926
    assert zlib.crc32(b"123456789") == 0xCBF43926


# Pinned forever: changing any of these moves clusters to other shards in every DC.
# CRC-32 values: 00000001 -> 3071262101, 00000042 -> 1248471339, 00001000 -> 2025122406,
# 01000017 -> 3774882389, "é" (c3 a9) -> 235179326.
PINNED = [
    ("00000001", 16, 5),
    ("00000042", 16, 11),
    ("00001000", 16, 6),
    ("01000017", 16, 5),
    ("00000042", 7, 3),
    ("00000042", 1000, 339),
    ("é", 16, 14),
    ("00000042", 1, 0),
]


@pytest.mark.parametrize(("cluster_id", "count", "shard"), PINNED)
def test_pinned_shards(cluster_id: str, count: int, shard: int) -> None:
    assert shard_of(cluster_id, count) == shard


@pytest.mark.parametrize(
    ("cluster_id", "crc"),
    [("00000001", 3071262101), ("00000042", 1248471339), ("é", 235179326)],
)
def test_pinned_crcs_match_the_reference(cluster_id: str, crc: int) -> None:
    assert crc32_reference(cluster_id.encode("utf-8")) == crc


@given(st.text(st.characters(codec="utf-8"), min_size=1), st.integers(1, 10_000))
def test_shard_is_the_reference_crc_modulo_the_count(cluster_id: str, count: int) -> None:
    shard = shard_of(cluster_id, count)
    assert 0 <= shard < count
    assert shard == crc32_reference(cluster_id.encode("utf-8")) % count


@pytest.mark.parametrize(
    ("cluster_id", "count"),
    [("", 16), ("00000042", 0), ("00000042", -3), ("00000042", True), ("\ud800", 16)],
)
def test_bad_input_raises_the_projects_error(cluster_id: str, count: int) -> None:
    with pytest.raises(ShardingError) as info:
        shard_of(cluster_id, count)
    assert isinstance(info.value, PipelineError)
    assert isinstance(info.value, ValueError)
