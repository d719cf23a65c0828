"""Shipped schemas: layout, fingerprints (checked against the spec's algorithm), compatibility."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import IncompatibleSchemaError, SchemaError
from pipeline.schemas import (
    NAMESPACE,
    SCHEMA_DIR_ENV,
    SchemaVersion,
    catalog,
    check_full_compatibility,
    check_shipped_schemas,
    load_schemas,
    parse_version,
    schema_dir,
)

RECORDS = ("Heartbeat", "OperationCompleted", "OwnershipChange", "RestartCheckpoint")
SHARD_ENVELOPE = ["event_id", "shard", "owner_dc", "epoch", "seq", "occurred_at"]


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO as the Avro specification writes it out ("Schema Fingerprints")."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def raw(record: str, version: int) -> dict[str, Any]:
    return copy.deepcopy(dict(catalog().versions(record)[version - 1].raw))


def version_of(schema: dict[str, Any], version: int) -> SchemaVersion:
    return parse_version(
        schema, record=schema["name"], version=version, path=Path(f"v{version}.avsc")
    )


def test_every_record_is_shipped_with_its_versions() -> None:
    schemas = catalog()
    assert schemas.records() == RECORDS
    assert [v.version for v in schemas.versions("OperationCompleted")] == [1, 2]
    assert schemas.latest("OperationCompleted").version == 2
    for v in schemas:
        assert v.path == schema_dir() / v.record / f"v{v.version}.avsc"
        assert v.raw["namespace"] == NAMESPACE
        assert schemas.by_fingerprint(v.fingerprint) is v
    assert schemas.by_fingerprint(b"\0" * 8) is None
    with pytest.raises(SchemaError, match="no schema for record 'Nope'"):
        schemas.versions("Nope")


def test_envelopes() -> None:
    for record in ("OperationCompleted", "RestartCheckpoint"):
        names = [f["name"] for f in catalog().latest(record).raw["fields"]]
        assert names[:6] == SHARD_ENVELOPE
    for record in ("Heartbeat", "OwnershipChange"):
        names = [f["name"] for f in catalog().latest(record).raw["fields"]]
        assert names[:2] == ["event_id", "occurred_at"]
    for v in catalog():
        occurred_at = next(f for f in v.raw["fields"] if f["name"] == "occurred_at")
        assert occurred_at["type"] == {"type": "long", "logicalType": "timestamp-millis"}


def test_v2_only_adds_server_id_with_a_default() -> None:
    v1, v2 = raw("OperationCompleted", 1), raw("OperationCompleted", 2)
    added = v2["fields"].pop()
    assert v1 == v2
    assert added["name"] == "server_id"
    assert added["type"] == ["null", "string"]
    assert added["default"] is None


def test_reference_crc64_matches_known_fingerprints() -> None:
    # "int": fingerprint 0x7275d51a3f395c8f, written little-endian in a message header.
    assert crc64_avro(b'"int"') == 0x7275D51A3F395C8F
    assert crc64_avro(b'"int"').to_bytes(8, "little").hex() == "8f5c393f1ad57572"


@pytest.mark.parametrize("version", list(catalog()), ids=lambda v: v.label)
def test_fingerprint_is_crc64_avro_of_the_canonical_form(version: SchemaVersion) -> None:
    expected = crc64_avro(version.canonical_form.encode("utf-8")).to_bytes(8, "little")
    assert version.fingerprint == expected
    # The canonical form keeps no docs or logical types: they never change a fingerprint.
    assert "doc" not in version.canonical_form
    assert "logicalType" not in version.canonical_form
    assert version.canonical_form.startswith(f'{{"name":"{NAMESPACE}.{version.record}"')


def test_shipped_schemas_follow_the_rules() -> None:
    # Every pair of versions checked: OperationCompleted v1-v2, Heartbeat v1-v2.
    assert check_shipped_schemas() == 2


def test_v1_and_v2_are_fully_compatible() -> None:
    v1, v2 = catalog().versions("OperationCompleted")
    check_full_compatibility(v1, v2)
    check_full_compatibility(v2, v1)


def _breaks(newer: dict[str, Any]) -> IncompatibleSchemaError:
    older = catalog().latest("OperationCompleted")
    with pytest.raises(IncompatibleSchemaError) as info:
        check_full_compatibility(older, version_of(newer, 3))
    return info.value


def test_new_field_without_default_breaks_backward_reads() -> None:
    newer = raw("OperationCompleted", 2)
    newer["fields"].append({"name": "region", "type": "string", "doc": "x"})
    error = _breaks(newer)
    assert "field region is missing from the writer and has no default" in str(error)
    assert "OperationCompleted v3 cannot read OperationCompleted v2 data" in str(error)


def test_removed_field_without_default_breaks_forward_reads() -> None:
    newer = raw("OperationCompleted", 2)
    newer["fields"] = [f for f in newer["fields"] if f["name"] != "seq"]
    error = _breaks(newer)
    assert error.problems == (
        "OperationCompleted v2 cannot read OperationCompleted v3 data: field seq is missing "
        "from the writer and has no default",
    )


def test_changed_type_of_a_nested_field_is_named() -> None:
    newer = raw("OperationCompleted", 2)
    node = next(f for f in newer["fields"] if f["name"] == "nodes")["type"]["items"]
    next(f for f in node["fields"] if f["name"] == "hardware_type")["type"] = "int"
    error = _breaks(newer)
    assert "field nodes[].hardware_type: type changed from string to int" in str(error)
    assert "field nodes[].hardware_type: type changed from int to string" in str(error)


def test_widening_is_backward_but_not_forward_compatible() -> None:
    newer = raw("OperationCompleted", 2)
    next(f for f in newer["fields"] if f["name"] == "shard")["type"] = "long"
    error = _breaks(newer)
    assert error.problems == (
        "OperationCompleted v2 cannot read OperationCompleted v3 data: field shard: type "
        "changed from long to int",
    )


def test_new_enum_symbol_breaks_old_readers() -> None:
    newer = raw("OperationCompleted", 2)
    cluster = next(f for f in newer["fields"] if f["name"] == "cluster")["type"]
    status = next(f for f in cluster["fields"] if f["name"] == "status")["type"]
    status["symbols"].append("ARCHIVED")
    error = _breaks(newer)
    assert "field cluster.status: enum" in str(error)
    assert "['ARCHIVED'] unknown to the reader" in str(error)


def test_changed_logical_type_breaks() -> None:
    newer = raw("OperationCompleted", 2)
    next(f for f in newer["fields"] if f["name"] == "occurred_at")["type"] = "long"
    error = _breaks(newer)
    assert "field occurred_at: logical type changed from timestamp-millis to None" in str(error)


def test_default_must_match_the_first_union_branch() -> None:
    newer = raw("OperationCompleted", 2)
    newer["fields"][-1]["type"] = ["string", "null"]
    with pytest.raises(SchemaError, match="field server_id: default None is not a string"):
        version_of(newer, 3)


def write_tree(root: Path, files: dict[str, Any]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return root


def test_load_from_a_directory_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(tmp_path, {"Heartbeat/v1.avsc": raw("Heartbeat", 1), "README.md": "docs"})
    assert load_schemas(tmp_path).records() == ("Heartbeat",)
    monkeypatch.setenv(SCHEMA_DIR_ENV, str(tmp_path))
    assert schema_dir() == tmp_path
    assert load_schemas().records() == ("Heartbeat",)


def test_a_breaking_shipped_version_fails_the_check(tmp_path: Path) -> None:
    v3 = raw("OperationCompleted", 2)
    v3["fields"].append({"name": "region", "type": "string", "doc": "x"})
    write_tree(
        tmp_path,
        {
            "OperationCompleted/v1.avsc": raw("OperationCompleted", 1),
            "OperationCompleted/v2.avsc": raw("OperationCompleted", 2),
            "OperationCompleted/v3.avsc": v3,
        },
    )
    with pytest.raises(IncompatibleSchemaError, match="field region"):
        check_shipped_schemas(load_schemas(tmp_path))


def test_a_missing_doc_fails_the_check(tmp_path: Path) -> None:
    schema = raw("Heartbeat", 1)
    del schema["fields"][2]["doc"]
    write_tree(tmp_path, {"Heartbeat/v1.avsc": schema})
    with pytest.raises(SchemaError, match="no doc for field dc"):
        check_shipped_schemas(load_schemas(tmp_path))


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"Heartbeat/v1.json": {}}, "is not named v<N>.avsc"),
        ({"Heartbeat/v2.avsc": raw("Heartbeat", 1)}, r"versions of Heartbeat are \[2\]"),
        ({"Heartbeat/v1.avsc": "{nope"}, "cannot read"),
        ({"Heartbeat/v1.avsc": "[]"}, "must hold a JSON object"),
        (
            {
                "Heartbeat/v1.avsc": {
                    "type": "record",
                    "name": "Heartbeat",
                    "fields": [{"name": "a", "type": "Nope"}],
                }
            },
            "not a valid Avro",
        ),
        ({"Other/v1.avsc": raw("Heartbeat", 1)}, "must define the record 'Other'"),
        (
            {"Heartbeat/v1.avsc": {**raw("Heartbeat", 1), "namespace": "x"}},
            "must have the namespace",
        ),
        (
            {"Heartbeat/v1.avsc": raw("Heartbeat", 1), "Heartbeat/v2.avsc": raw("Heartbeat", 1)},
            "same parsing canonical form",
        ),
        ({}, "holds no"),
    ],
)
def test_bad_schema_directories(tmp_path: Path, files: dict[str, Any], message: str) -> None:
    write_tree(tmp_path, files)
    with pytest.raises(SchemaError, match=message):
        load_schemas(tmp_path)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=f"does not exist \\(set {SCHEMA_DIR_ENV}\\)"):
        load_schemas(tmp_path / "absent")


def test_heartbeat_v2_only_adds_the_protocols_fields_with_defaults() -> None:
    v1, v2 = catalog().versions("Heartbeat")
    check_full_compatibility(v1, v2)
    check_full_compatibility(v2, v1)
    old = [f["name"] for f in v1.raw["fields"]]
    new = [f["name"] for f in v2.raw["fields"]]
    assert new[: len(old)] == old
    assert new[len(old) :] == ["number", "echoes", "promises", "owners", "fenced"]
    assert all("default" in f for f in v2.raw["fields"][len(old) :])
