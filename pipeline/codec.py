"""Avro single-object encoding of the project's events, without a schema registry.

A message is ``C3 01``, then the 8-byte little-endian CRC-64-AVRO fingerprint of the writer
schema's parsing canonical form, then the Avro binary body (Avro specification, "Single-object
encoding"). Encoding always writes the latest version of the record. Decoding finds the writer
version by fingerprint among every shipped version and resolves the body to the latest version
of the same record; when the writer is the latest version no resolution runs.

Guarantees:

- :meth:`Codec.decode` and :meth:`Codec.decode_record` raise only :class:`CodecError`
  subclasses for bad input (:class:`MissingMarkerError`, :class:`UnknownFingerprintError`,
  :class:`CorruptBodyError`), whatever the bytes; trailing bytes after the body are an error.
- :meth:`Codec.encode` and :meth:`Codec.encode_record` raise :class:`InvalidEventError` for a
  record that does not match the schema. fastavro's writer rejects most mismatches itself; the
  codec checks in addition what the writer would silently get wrong (integers out of range,
  bools or floats for integers, anything but a bool for a boolean, strings or dicts where an
  array belongs, naive datetimes, missing or unknown fields of a record).
- Schemas are parsed, fingerprinted and turned into headers once, when the codec is built.

The module functions use one :class:`Codec` over :func:`pipeline.schemas.catalog`, built on
first use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from typing import Any, cast

from fastavro import schemaless_reader, schemaless_writer
from fastavro.validation import ValidationError, validate

from pipeline.errors import (
    CodecError,
    CorruptBodyError,
    InvalidEventError,
    MissingMarkerError,
    SchemaError,
    UnknownFingerprintError,
)
from pipeline.events import EVENT_TYPES, Event
from pipeline.schemas import SchemaCatalog, SchemaVersion, catalog

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "Codec",
    "decode",
    "decode_record",
    "default_codec",
    "encode",
    "encode_record",
]

#: The two bytes every single-object encoded message starts with.
MAGIC = b"\xc3\x01"
#: Marker plus fingerprint: the body starts at this offset.
HEADER_SIZE = 10

_Check = Callable[[Any], None]


class _Mismatch(Exception):
    """A value that does not match its schema.

    ``path`` collects ``.field`` and ``[index]`` segments innermost first while the exception
    unwinds, so a successful check never builds a path.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


@dataclass(frozen=True, slots=True)
class _Writer:
    version: SchemaVersion
    header: bytes
    check: _Check


@dataclass(frozen=True, slots=True)
class _Reader:
    record: str
    label: str
    writer_schema: dict[str, Any]
    # None when the writer is the latest version: fastavro then skips schema resolution.
    reader_schema: dict[str, Any] | None


class Codec:
    """Encoder and decoder over the versions of one :class:`SchemaCatalog`.

    Thread-safe: it holds no per-call state.
    """

    __slots__ = ("_readers", "_writers")

    def __init__(self, schemas: SchemaCatalog) -> None:
        self._writers: dict[str, _Writer] = {}
        self._readers: dict[bytes, _Reader] = {}
        for record in schemas.records():
            latest = schemas.latest(record)
            self._writers[record] = _Writer(
                version=latest,
                header=MAGIC + latest.fingerprint,
                check=_compile_record(latest.schema, latest.named, {}),
            )
            for v in schemas.versions(record):
                self._readers[v.fingerprint] = _Reader(
                    record=record,
                    label=v.label,
                    writer_schema=v.schema,
                    reader_schema=None if v is latest else latest.schema,
                )

    def encode_record(self, record_name: str, record: Mapping[str, Any]) -> bytes:
        """Single-object encode ``record`` (a dict as fastavro writes it) with the latest schema.

        Raises :class:`InvalidEventError` when the record does not match it, and
        :class:`SchemaError` for an unknown record name.
        """
        writer = self._writers.get(record_name)
        if writer is None:
            raise SchemaError(f"no schema for record {record_name!r}")
        try:
            writer.check(record)
        except _Mismatch as exc:
            where = "".join(reversed(exc.path)).lstrip(".") or "the record"
            raise InvalidEventError(
                f"{writer.version.label} does not accept {where}: {exc.reason}"
            ) from None
        buf = BytesIO()
        buf.write(writer.header)
        try:
            schemaless_writer(buf, writer.version.schema, record)
        except Exception as exc:
            # fastavro reports a mismatch with whatever its writer hit (TypeError, ValueError,
            # AttributeError, UnicodeEncodeError, ...); its validator names the field instead.
            reason = _explain(writer, record, exc)
            raise InvalidEventError(
                f"{writer.version.label} does not accept the record: {reason}"
            ) from exc
        return buf.getvalue()

    def encode(self, event: Event) -> bytes:
        """Single-object encode an event with the latest version of its record."""
        return self.encode_record(event.RECORD_NAME, event.to_record())

    def decode_record(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """Decode a message to ``(record name, record as a dict of the latest version)``.

        The fast path for consumers that need no dataclasses. Raises only :class:`CodecError`
        subclasses for bad input.
        """
        reader = self._readers.get(data[2:HEADER_SIZE])
        if reader is None or data[:2] != MAGIC:
            raise _header_error(data)
        fo = BytesIO(data)
        fo.seek(HEADER_SIZE)
        try:
            record = schemaless_reader(fo, reader.writer_schema, reader.reader_schema)
        except Exception as exc:
            # The body is untrusted; fastavro signals corruption with EOFError, struct.error,
            # IndexError, UnicodeDecodeError, ValueError, OverflowError and more.
            raise CorruptBodyError(
                f"{reader.label} body at offset {HEADER_SIZE} is corrupt: {_reason(exc)}"
            ) from exc
        end = fo.tell()
        if end != len(data):
            raise CorruptBodyError(
                f"{reader.label} body ends at byte {end} but the message has {len(data)} bytes: "
                f"{len(data) - end} trailing bytes"
            )
        return reader.record, cast(dict[str, Any], record)

    def decode(self, data: bytes) -> Event:
        """Decode a message to its event dataclass (latest version of its record)."""
        name, record = self.decode_record(data)
        event_type = EVENT_TYPES.get(name)
        if event_type is None:
            raise CodecError(f"record {name} has no event class; use decode_record")
        return event_type.from_record(record)


@functools.cache
def default_codec() -> Codec:
    """The codec over the default schema directory, built on first use."""
    return Codec(catalog())


def encode(event: Event) -> bytes:
    """:meth:`Codec.encode` with :func:`default_codec`."""
    return default_codec().encode(event)


def decode(data: bytes) -> Event:
    """:meth:`Codec.decode` with :func:`default_codec`."""
    return default_codec().decode(data)


def encode_record(record_name: str, record: Mapping[str, Any]) -> bytes:
    """:meth:`Codec.encode_record` with :func:`default_codec`."""
    return default_codec().encode_record(record_name, record)


def decode_record(data: bytes) -> tuple[str, dict[str, Any]]:
    """:meth:`Codec.decode_record` with :func:`default_codec`."""
    return default_codec().decode_record(data)


def _header_error(data: bytes) -> CodecError:
    if len(data) < HEADER_SIZE:
        return MissingMarkerError(
            f"message of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte single-object "
            "header (C3 01 and an 8-byte fingerprint)"
        )
    if data[:2] != MAGIC:
        return MissingMarkerError(
            f"message starts with {bytes(data[:2]).hex(' ')}, not the Avro single-object "
            "marker c3 01"
        )
    return UnknownFingerprintError(bytes(data[2:HEADER_SIZE]))


def _reason(exc: Exception) -> str:
    if isinstance(exc, EOFError):
        return f"truncated: the body ends before the record does ({exc or 'end of data'})"
    if isinstance(exc, UnicodeDecodeError):
        return f"a string is not valid UTF-8 ({exc.reason} at byte {exc.start} of the string)"
    return f"{type(exc).__name__}: {exc}"


def _explain(writer: _Writer, record: Mapping[str, Any], exc: Exception) -> str:
    try:
        validate(record, writer.version.schema, raise_errors=True, strict=True)
    except ValidationError as invalid:
        return "; ".join(str(e) for e in invalid.errors)
    except Exception as other:
        return f"{type(other).__name__}: {other}"
    return f"{type(exc).__name__}: {exc}"


_INT_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


def _compile(  # noqa: C901 - one branch per Avro type, as the specification lists them
    schema: Any, named: Mapping[str, Any], done: dict[str, _Check | None]
) -> _Check | None:
    """A check for what fastavro's writer would accept but write wrongly; None if nothing.

    Raises :class:`SchemaError` for schema features the codec does not support (types other
    than string, int, long, boolean, enum, array, map and record; unions other than null plus
    one type; logical types other than timestamp-millis; recursive types), so a new schema
    version cannot quietly weaken the encoder's guarantee.
    """
    if isinstance(schema, str):
        if schema in named:
            if schema not in done:
                raise SchemaError(f"type {schema} is used inside its own definition")
            return done[schema]
        schema = {"type": schema}
    if isinstance(schema, list):
        return _compile_union(schema, named, done)
    kind = schema["type"]
    logical = schema.get("logicalType")
    if logical is not None:
        if logical != "timestamp-millis":
            raise SchemaError(f"logical type {logical} is not supported by the codec")
        return _check_timestamp
    if kind in _INT_RANGES:
        return _int_check(*_INT_RANGES[kind])
    if kind == "boolean":
        return _check_bool
    if kind == "string":
        return None  # fastavro's writer rejects anything but str
    if kind == "enum":
        done[schema["name"]] = None
        return None  # fastavro's writer rejects anything but one of the symbols
    if kind == "array":
        return _array_check(_compile(schema["items"], named, done))
    if kind == "map":
        return _map_check(_compile(schema["values"], named, done))
    if kind == "record":
        return _compile_record(schema, named, done)
    # float, double, bytes, fixed and null need checks of their own before a schema uses them.
    raise SchemaError(f"Avro type {kind!r} is not supported by the codec")


def _compile_record(
    schema: Mapping[str, Any], named: Mapping[str, Any], done: dict[str, _Check | None]
) -> _Check:
    fields: list[tuple[str, _Check]] = []
    for field in schema["fields"]:
        check = _compile(field["type"], named, done)
        if check is not None:
            fields.append((field["name"], check))
    result = _record_check(frozenset(f["name"] for f in schema["fields"]), tuple(fields))
    done[schema["name"]] = result
    return result


def _compile_union(
    branches: list[Any], named: Mapping[str, Any], done: dict[str, _Check | None]
) -> _Check | None:
    others = [b for b in branches if b != "null"]
    if len(branches) != 2 or len(others) != 1:
        raise SchemaError(f"union {branches} is not supported: use null plus one type")
    inner = _compile(others[0], named, done)
    if inner is None:
        return None

    def check(value: Any) -> None:
        if value is not None:
            inner(value)

    return check


def _int_check(low: int, high: int) -> _Check:
    def check(value: Any) -> None:
        if type(value) is not int:
            raise _Mismatch(f"expected an integer, got {type(value).__name__}")
        if not low <= value <= high:
            raise _Mismatch(f"{value} is outside {low}..{high}")

    return check


def _check_bool(value: Any) -> None:
    if type(value) is not bool:
        raise _Mismatch(f"expected a bool, got {type(value).__name__}")


def _check_timestamp(value: Any) -> None:
    # tzinfo rather than utcoffset(): a third of the cost, and fastavro's writer itself
    # refuses a tzinfo whose utcoffset() is None.
    if not isinstance(value, datetime) or value.tzinfo is None:
        if isinstance(value, datetime):
            raise _Mismatch("the datetime is naive; give it a time zone (UTC)")
        raise _Mismatch(f"expected a datetime, got {type(value).__name__}")


def _array_check(items: _Check | None) -> _Check:
    def check(value: Any) -> None:
        # fastavro iterates whatever it gets, so a str would be written as its characters.
        if type(value) is not list and type(value) is not tuple:
            raise _Mismatch(f"expected a list or tuple, got {type(value).__name__}")
        if items is not None:
            for i, item in enumerate(value):
                try:
                    items(item)
                except _Mismatch as exc:
                    exc.path.append(f"[{i}]")
                    raise

    return check


def _map_check(values: _Check | None) -> _Check:
    def check(value: Any) -> None:
        if not isinstance(value, dict):
            raise _Mismatch(f"expected a dict, got {type(value).__name__}")
        if values is not None:
            for key, item in value.items():
                try:
                    values(item)
                except _Mismatch as exc:
                    exc.path.append(f"[{key!r}]")
                    raise

    return check


def _record_check(names: frozenset[str], fields: tuple[tuple[str, _Check], ...]) -> _Check:
    def check(value: Any) -> None:
        if not isinstance(value, dict):
            raise _Mismatch(f"expected a record (dict), got {type(value).__name__}")
        # fastavro's writer fills a missing field with None and ignores unknown ones; its
        # strict mode catches both but doubles the cost of a write, this set comparison does not.
        if value.keys() != names:
            missing, extra = sorted(names - value.keys()), sorted(value.keys() - names)
            raise _Mismatch(
                ", ".join(
                    ([f"missing fields {missing}"] if missing else [])
                    + ([f"unknown fields {extra}"] if extra else [])
                )
            )
        for name, field_check in fields:
            try:
                field_check(value[name])
            except _Mismatch as exc:
                exc.path.append(f".{name}")
                raise

    return check
