"""The single-object codec: layout, round trips, resolution, interop with Apache Avro, bad input."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest
from fastavro import schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.codec import sample_heartbeat, sample_operation_completed
from pipeline import codec
from pipeline.errors import (
    CodecError,
    CorruptBodyError,
    InvalidEventError,
    MissingMarkerError,
    SchemaError,
    UnknownFingerprintError,
)
from pipeline.events import Event, OperationCompleted
from pipeline.schemas import SchemaVersion, catalog, load_schemas
from tests.strategies import events, heartbeats, operation_completed

V1, V2 = catalog().versions("OperationCompleted")
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def v1_message(event: OperationCompleted) -> bytes:
    """What a producer still on version 1 of OperationCompleted writes."""
    record = event.to_record()
    del record["server_id"]
    buf = io.BytesIO()
    buf.write(codec.MAGIC + V1.fingerprint)
    schemaless_writer(buf, V1.schema, record)
    return buf.getvalue()


def avro_schema(version: SchemaVersion) -> avro.schema.Schema:
    return avro.schema.parse(version.path.read_text(encoding="utf-8"))


def test_message_layout() -> None:
    event = sample_operation_completed()
    message = codec.encode(event)
    assert message[:2] == b"\xc3\x01"
    assert message[2:10] == V2.fingerprint
    body = io.BytesIO(message[10:])
    assert schemaless_reader(body, V2.schema, None) == event.to_record()
    assert body.tell() == len(message) - 10


@settings(max_examples=200, deadline=None)
@given(events)
def test_any_event_round_trips(event: Event) -> None:
    message = codec.encode(event)
    assert codec.decode(message) == event
    name, record = codec.decode_record(message)
    assert name == event.RECORD_NAME
    assert record == event.to_record()


def test_times_come_back_in_utc() -> None:
    event = codec.decode(codec.encode(sample_heartbeat()))
    assert event.occurred_at.utcoffset() is not None
    assert event.occurred_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


@settings(max_examples=50, deadline=None)
@given(operation_completed)
def test_a_v1_message_is_read_with_server_id_at_its_default(event: OperationCompleted) -> None:
    decoded = codec.decode(v1_message(event))
    assert isinstance(decoded, OperationCompleted)
    assert decoded.server_id is None
    assert decoded == dataclasses.replace(event, server_id=None)


@settings(max_examples=50, deadline=None)
@given(operation_completed)
def test_a_v1_reader_reads_v2_messages(event: OperationCompleted) -> None:
    message = codec.encode(event)
    record = schemaless_reader(io.BytesIO(message[10:]), V2.schema, V1.schema)
    expected = event.to_record()
    del expected["server_id"]
    assert record == expected


@settings(max_examples=50, deadline=None)
@given(events)
def test_apache_avro_reads_the_codecs_bodies(event: Event) -> None:
    message = codec.encode(event)
    schema = avro_schema(catalog().latest(event.RECORD_NAME))
    decoder = avro.io.BinaryDecoder(io.BytesIO(message[10:]))
    assert avro.io.DatumReader(schema).read(decoder) == event.to_record()


@settings(max_examples=50, deadline=None)
@given(events)
def test_the_codec_reads_apache_avro_bodies(event: Event) -> None:
    version = catalog().latest(event.RECORD_NAME)
    buf = io.BytesIO()
    buf.write(codec.MAGIC + version.fingerprint)
    avro.io.DatumWriter(avro_schema(version)).write(event.to_record(), avro.io.BinaryEncoder(buf))
    assert codec.decode(buf.getvalue()) == event


def test_apache_avro_resolves_v1_bodies_to_v2() -> None:
    event = sample_operation_completed()
    reader = avro.io.DatumReader(avro_schema(V1), avro_schema(V2))
    record = reader.read(avro.io.BinaryDecoder(io.BytesIO(v1_message(event)[10:])))
    assert record == event.to_record() | {"server_id": None}


def _assert_decodes_or_codec_error(data: bytes) -> None:
    try:
        codec.decode(data)
    except (MissingMarkerError, UnknownFingerprintError, CorruptBodyError) as exc:
        assert str(exc)


@FUZZ
@given(st.binary(max_size=64))
def test_random_bytes(data: bytes) -> None:
    _assert_decodes_or_codec_error(data)


@FUZZ
@given(st.sampled_from([v.fingerprint for v in catalog()]), st.binary(max_size=256))
def test_random_bodies_behind_a_valid_header(fingerprint: bytes, body: bytes) -> None:
    _assert_decodes_or_codec_error(codec.MAGIC + fingerprint + body)


@FUZZ
@given(events, st.data())
def test_corrupted_messages(event: Event, data: st.DataObject) -> None:
    message = bytearray(codec.encode(event))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(10, len(message) - 1))
        message[i] = data.draw(st.integers(0, 255))
    _assert_decodes_or_codec_error(bytes(message))


@settings(max_examples=30, deadline=None)
@given(events)
def test_every_truncation_is_reported(event: Event) -> None:
    message = codec.encode(event)
    for end in range(len(message)):
        error = MissingMarkerError if end < 10 else CorruptBodyError
        with pytest.raises(error):
            codec.decode(message[:end])


def test_truncated_body_reason() -> None:
    message = codec.encode(sample_heartbeat())
    with pytest.raises(CorruptBodyError, match="Heartbeat v2 body at offset 10 is corrupt: trunc"):
        codec.decode_record(message[:-1])


def test_trailing_bytes() -> None:
    message = codec.encode(sample_heartbeat())
    with pytest.raises(CorruptBodyError, match="2 trailing bytes"):
        codec.decode(message + b"\0\0")


def test_missing_marker() -> None:
    message = codec.encode(sample_heartbeat())
    with pytest.raises(MissingMarkerError, match="starts with c3 02, not"):
        codec.decode(b"\xc3\x02" + message[2:])
    with pytest.raises(MissingMarkerError, match="message of 9 bytes is shorter"):
        codec.decode(message[:9])
    with pytest.raises(MissingMarkerError):
        codec.decode(b"")


def test_unknown_fingerprint_is_named_in_hex() -> None:
    message = codec.MAGIC + bytes.fromhex("0102030405060708") + b"\0"
    with pytest.raises(UnknownFingerprintError, match="fingerprint 0102030405060708") as info:
        codec.decode(message)
    assert info.value.fingerprint == bytes.fromhex("0102030405060708")


def test_invalid_utf8_is_a_corrupt_body() -> None:
    record = sample_heartbeat().to_record()
    message = codec.encode_record("Heartbeat", {**record, "dc": "d\u00e9"})
    broken = message.replace("d\u00e9".encode(), b"d\xff\xfe")
    with pytest.raises(CorruptBodyError, match="not valid UTF-8"):
        codec.decode(broken)


class _NoOffset(tzinfo):
    """A time zone that does not know its offset: as unusable as none."""

    def utcoffset(self, dt: datetime | None) -> None:
        return None

    def dst(self, dt: datetime | None) -> None:
        return None

    def tzname(self, dt: datetime | None) -> None:
        return None


def _oc_record(**changes: Any) -> dict[str, Any]:
    return {**sample_operation_completed().to_record(), **changes}


def _with_node(**changes: Any) -> dict[str, Any]:
    record = _oc_record()
    record["nodes"][3] = {**record["nodes"][3], **changes}
    return record


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (_oc_record(shard=2**31), "shard: 2147483648 is outside"),
        (_oc_record(seq=2**63), "seq: 9223372036854775808 is outside"),
        (_oc_record(epoch=True), "epoch: expected an integer, got bool"),
        (_oc_record(shard=1.5), "shard: expected an integer, got float"),
        (_oc_record(cluster_deleted=1), "cluster_deleted: expected a bool, got int"),
        (_oc_record(occurred_at=datetime(2024, 1, 1)), "occurred_at: the datetime is naive"),
        (_oc_record(occurred_at=1714564800000), "occurred_at: expected a datetime, got int"),
        (_oc_record(occurred_at=datetime(2024, 1, 1, tzinfo=_NoOffset())), "naive and .*aware"),
        (_with_node(services="base"), r"nodes\[3\].services: expected a list or tuple, got str"),
        (_with_node(ip_addresses=[("a", "b")]), r"nodes\[3\].ip_addresses: expected a dict"),
        (_with_node(hostname=None, extra=1), r"nodes\[3\]: unknown fields \['extra'\]"),
        (
            {k: v for k, v in _oc_record().items() if k != "seq"},
            r"the record: missing fields \['seq'\]",
        ),
        (_with_node(hardware_type=5), "hardware_type"),
        (_with_node(hostname="\ud800"), "surrogates not allowed"),
        (_oc_record(cluster={**_oc_record()["cluster"], "status": "GONE"}), "status"),
    ],
)
def test_invalid_records_are_refused_naming_the_field(record: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEventError, match=message) as info:
        codec.encode_record("OperationCompleted", record)
    assert str(info.value).startswith("OperationCompleted v2 does not accept")


def test_unknown_record_name() -> None:
    with pytest.raises(SchemaError, match="no schema for record 'Nope'"):
        codec.encode_record("Nope", {})


def test_encoding_a_dataclass_with_a_wrong_type_is_refused() -> None:
    bad = dataclasses.replace(sample_heartbeat(), dc=7)  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match="dc"):
        codec.encode(bad)


def test_a_record_without_an_event_class_decodes_only_as_a_dict(tmp_path: Path) -> None:
    extra = {**catalog().latest("Heartbeat").raw, "name": "Extra"}
    (tmp_path / "Extra").mkdir()
    (tmp_path / "Extra" / "v1.avsc").write_text(json.dumps(extra))
    own = codec.Codec(load_schemas(tmp_path))
    record = {**sample_heartbeat().to_record(), "occurred_at": datetime(2024, 1, 1, tzinfo=UTC)}
    message = own.encode_record("Extra", record)
    assert own.decode_record(message) == ("Extra", record)
    with pytest.raises(CodecError, match="record Extra has no event class"):
        own.decode(message)
    with pytest.raises(UnknownFingerprintError):
        own.decode(codec.encode(sample_heartbeat()))


@given(heartbeats)
def test_module_functions_use_one_default_codec(event: Event) -> None:
    assert codec.default_codec() is codec.default_codec()
    assert codec.decode_record(codec.encode_record(event.RECORD_NAME, event.to_record()))[0] == (
        event.RECORD_NAME
    )


@pytest.mark.parametrize(
    ("field_type", "message"),
    [
        ("double", "Avro type 'double' is not supported"),
        (["string", "long"], "use null plus one type"),
        ({"type": "string", "logicalType": "uuid"}, "logical type uuid is not supported"),
    ],
)
def test_schema_features_the_codec_cannot_guard_are_refused(
    tmp_path: Path, field_type: Any, message: str
) -> None:
    schema = {**catalog().latest("Heartbeat").raw}
    schema["fields"] = [*schema["fields"], {"name": "x", "type": field_type, "doc": "x"}]
    (tmp_path / "Heartbeat").mkdir()
    (tmp_path / "Heartbeat" / "v1.avsc").write_text(json.dumps(schema))
    with pytest.raises(SchemaError, match=message):
        codec.Codec(load_schemas(tmp_path))
