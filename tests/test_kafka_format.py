"""Formatting a broker's log dir: the random KRaft cluster id must never look like an option."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from pipeline.stack import kafka
from pipeline.stack.kafka import new_cluster_id, start_broker
from pipeline.stack.processes import ProcessRecord
from pipeline.topology import DataCenter

_URLSAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
#: The first 6 bits 111110 are base64's 62nd character, which urlsafe base64 writes as '-'.
_DASH_FIRST = uuid.UUID(bytes=b"\xf8" + bytes(15))


def test_cluster_ids_never_start_with_a_dash_and_are_16_bytes_of_urlsafe_base64() -> None:
    # One id in 64 would start with '-' if nothing prevented it: 20,000 all but prove it.
    for _ in range(20_000):
        cluster_id = new_cluster_id()
        assert not cluster_id.startswith("-"), cluster_id
        assert len(cluster_id) == 22 and set(cluster_id) <= _URLSAFE, cluster_id
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_a_log_dir_is_formatted_even_when_the_first_random_id_starts_with_a_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert base64.urlsafe_b64encode(_DASH_FIRST.bytes).startswith(b"-")
    random_uuid = uuid.uuid4
    drawn = iter([_DASH_FIRST])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(drawn, None) or random_uuid())
    spawned: list[str] = []

    def no_broker(name: str, argv: Sequence[str], **_: object) -> ProcessRecord:
        spawned.append(name)
        return ProcessRecord(name=name, pid=0, ports=(), log="", program=argv[-1])

    # Only the real storage tool runs; starting the broker itself is another test's business.
    monkeypatch.setattr(kafka, "spawn", no_broker)
    dc = DataCenter("dc1", "127.0.0.1:49990", "postgresql://postgres@127.0.0.1:49995/coopr")

    start_broker(dc, tmp_path, tmp_path / "kafka-dc1.log")

    meta = dict(
        line.split("=", 1)
        for line in (tmp_path / "data" / "meta.properties").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert len(meta["cluster.id"]) == 22 and not meta["cluster.id"].startswith("-")
    assert spawned == ["kafka-dc1"]
