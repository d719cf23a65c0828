"""The shipped Avro schemas: every version of every record, loaded once, found by fingerprint.

Layout (see ``schemas/README.md``): ``schemas/<Record>/v<N>.avsc``, versions numbered from 1
without gaps. The files are package data of the ``schemas`` package, found with
:mod:`importlib.resources` in any install (editable or a wheel), or the directory named by
``COOPR_SCHEMA_DIR``.

Each version is parsed with fastavro once; its parsing canonical form and CRC-64-AVRO
fingerprint are computed once. :func:`catalog` loads the default directory on first use and
returns the same :class:`SchemaCatalog` afterwards. The catalogue is local files, not a schema
registry service: every version ships with the code, so no DC depends on a registry.

The compatibility check follows the Avro specification's schema resolution rules structurally:
``check_full_compatibility(older, newer)`` passes only when ``newer`` reads everything ``older``
wrote and ``older`` reads everything ``newer`` writes, and otherwise raises
:class:`IncompatibleSchemaError` naming each field that breaks it.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import SchemaParseException, fingerprint, to_parsing_canonical_form

from pipeline.errors import IncompatibleSchemaError, SchemaError

__all__ = [
    "NAMESPACE",
    "SCHEMA_DIR_ENV",
    "SchemaCatalog",
    "SchemaVersion",
    "catalog",
    "check_full_compatibility",
    "check_shipped_schemas",
    "load_schemas",
    "parse_version",
    "schema_dir",
]

#: Environment variable that overrides where the schema files are read from.
SCHEMA_DIR_ENV = "COOPR_SCHEMA_DIR"
#: Avro namespace of every shipped record and of the named types inside them.
NAMESPACE = "co.cask.coopr.replication"

#: The package whose data files are the shipped schemas.
_SCHEMA_PACKAGE = "schemas"
# Folders of the schema package that are not records: Python's bytecode cache of its face.
_NOT_RECORDS = frozenset({"__pycache__"})
_VERSION_FILE = re.compile(r"v([1-9][0-9]*)\.avsc")
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
# What a reader of the key type accepts from a writer of each value type (Avro spec, "Schema
# Resolution"): int is promoted to long, float or double, and so on.
_PROMOTIONS = {
    "int": frozenset({"int", "long", "float", "double"}),
    "long": frozenset({"long", "float", "double"}),
    "float": frozenset({"float", "double"}),
    "string": frozenset({"string", "bytes"}),
    "bytes": frozenset({"bytes", "string"}),
}


@dataclass(frozen=True, slots=True, eq=False)
class SchemaVersion:
    """One released version of one record.

    ``schema`` is the fastavro-parsed schema (pass it to fastavro as is), ``raw`` the JSON as
    written in the file, ``named`` every named type it defines by full name (parsed form).
    ``fingerprint`` is the 8-byte CRC-64-AVRO fingerprint of ``canonical_form`` in the byte
    order of the single-object header (little-endian).
    """

    record: str
    version: int
    path: Traversable
    raw: Mapping[str, Any]
    schema: dict[str, Any]
    named: Mapping[str, Any]
    canonical_form: str
    fingerprint: bytes

    @property
    def label(self) -> str:
        """``OperationCompleted v2``: how messages and errors name this version."""
        return f"{self.record} v{self.version}"


class SchemaCatalog:
    """Every loaded version of every record; immutable once built.

    Raises :class:`SchemaError` when two versions share a fingerprint (a version that changes
    nothing but docs or defaults is not a new version) or a record's versions have a gap.
    """

    __slots__ = ("_by_fingerprint", "_by_record")

    def __init__(self, versions: list[SchemaVersion]) -> None:
        by_record: dict[str, list[SchemaVersion]] = {}
        by_fingerprint: dict[bytes, SchemaVersion] = {}
        for v in sorted(versions, key=lambda v: (v.record, v.version)):
            other = by_fingerprint.get(v.fingerprint)
            if other is not None:
                raise SchemaError(
                    f"{v.path} has the same parsing canonical form as {other.path}; a new "
                    "version must change the data layout"
                )
            by_fingerprint[v.fingerprint] = v
            by_record.setdefault(v.record, []).append(v)
        for record, found in by_record.items():
            numbers = [v.version for v in found]
            if numbers != list(range(1, len(found) + 1)):
                raise SchemaError(f"versions of {record} are {numbers}; they must be 1..N")
        self._by_record = {r: tuple(vs) for r, vs in by_record.items()}
        self._by_fingerprint = by_fingerprint

    def records(self) -> tuple[str, ...]:
        """Names of the records, sorted."""
        return tuple(sorted(self._by_record))

    def versions(self, record: str) -> tuple[SchemaVersion, ...]:
        """Every version of ``record``, oldest first."""
        found = self._by_record.get(record)
        if found is None:
            raise SchemaError(
                f"no schema for record {record!r}; known: {', '.join(self.records())}"
            )
        return found

    def latest(self, record: str) -> SchemaVersion:
        """The newest version of ``record``: the one encoders write and decoders resolve to."""
        return self.versions(record)[-1]

    def by_fingerprint(self, fingerprint: bytes) -> SchemaVersion | None:
        """The version with this 8-byte fingerprint (header byte order), or None."""
        return self._by_fingerprint.get(fingerprint)

    def __iter__(self) -> Iterator[SchemaVersion]:
        """Every version of every record, by record name then version."""
        for record in self.records():
            yield from self._by_record[record]


def schema_dir() -> Traversable:
    """Where the schemas are read from: ``$COOPR_SCHEMA_DIR`` or the ``schemas`` package."""
    override = os.environ.get(SCHEMA_DIR_ENV)
    if override:
        return Path(override)
    return importlib.resources.files(_SCHEMA_PACKAGE)


def parse_version(
    raw: Mapping[str, Any], *, record: str, version: int, path: Traversable
) -> SchemaVersion:
    """Parse one schema's JSON into a :class:`SchemaVersion`; raises :class:`SchemaError`."""
    named: dict[str, Any] = {}
    try:
        parsed = parse_schema(dict(raw), named_schemas=named)
        canonical = to_parsing_canonical_form(parsed)
    except (SchemaParseException, ValueError, TypeError, KeyError) as exc:
        raise SchemaError(f"{path} is not a valid Avro schema: {exc}") from exc
    if not isinstance(parsed, dict) or raw.get("type") != "record" or raw.get("name") != record:
        raise SchemaError(f"{path} must define the record {record!r} (its directory's name)")
    if raw.get("namespace") != NAMESPACE:
        raise SchemaError(f"{path} must have the namespace {NAMESPACE!r}")
    problems = _default_problems(parsed, named, "", set())
    if problems:
        raise SchemaError(
            f"{path} has defaults that do not match their type: {'; '.join(problems)}"
        )
    return SchemaVersion(
        record=record,
        version=version,
        path=path,
        raw=raw,
        schema=parsed,
        named=named,
        canonical_form=canonical,
        fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
    )


def load_schemas(directory: Traversable | None = None) -> SchemaCatalog:
    """Read and parse every ``<Record>/v<N>.avsc`` under ``directory`` (default :func:`schema_dir`).

    Files directly in ``directory`` (the README, the package's ``__init__.py``) and its
    ``__pycache__`` are ignored; any other file inside a record's directory is an error, so a
    misnamed version is never silently skipped.
    """
    root = directory if directory is not None else schema_dir()
    if not root.is_dir():
        raise SchemaError(f"schema directory {root} does not exist (set {SCHEMA_DIR_ENV})")
    versions: list[SchemaVersion] = []
    records = (p for p in root.iterdir() if p.is_dir() and p.name not in _NOT_RECORDS)
    for record_dir in sorted(records, key=lambda p: p.name):
        for path in sorted(record_dir.iterdir(), key=lambda p: p.name):
            m = _VERSION_FILE.fullmatch(path.name)
            if m is None:
                raise SchemaError(f"{path} is not named v<N>.avsc")
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise SchemaError(f"cannot read {path}: {exc}") from exc
            if not isinstance(raw, dict):
                raise SchemaError(f"{path} must hold a JSON object (a record schema)")
            versions.append(
                parse_version(raw, record=record_dir.name, version=int(m.group(1)), path=path)
            )
    if not versions:
        raise SchemaError(f"schema directory {root} holds no <Record>/v<N>.avsc files")
    return SchemaCatalog(versions)


@functools.cache
def catalog() -> SchemaCatalog:
    """The schemas of :func:`schema_dir`, loaded on first call and shared afterwards."""
    return load_schemas()


def check_full_compatibility(older: SchemaVersion, newer: SchemaVersion) -> None:
    """Raise :class:`IncompatibleSchemaError` unless each version reads the other's data.

    Applies the Avro resolution rules to the two schemas in both directions (newer reading
    older: backward; older reading newer: forward), and in addition treats a changed logical
    type as a break, since readers would convert the same bytes to different values.
    """
    problems = [
        f"{newer.label} cannot read {older.label} data: {p}"
        for p in _read_problems(newer.schema, older.schema, newer.named, older.named, "", set())
    ] + [
        f"{older.label} cannot read {newer.label} data: {p}"
        for p in _read_problems(older.schema, newer.schema, older.named, newer.named, "", set())
    ]
    if problems:
        raise IncompatibleSchemaError(
            f"{newer.label} is not fully compatible with {older.label}", tuple(problems)
        )


def check_shipped_schemas(schemas: SchemaCatalog | None = None) -> int:
    """Check the rules of ``schemas/README.md`` on every shipped version; return pairs checked.

    Every record, field and enum has a ``doc``, and every pair of versions of a record is
    fully compatible (transitively, not only neighbours). Raises :class:`SchemaError` or
    :class:`IncompatibleSchemaError` at the first violation.
    """
    schemas = schemas if schemas is not None else catalog()
    pairs = 0
    for record in schemas.records():
        versions = schemas.versions(record)
        for v in versions:
            missing = _undocumented(v.raw, "")
            if missing:
                raise SchemaError(f"{v.path}: no doc for {', '.join(missing)}")
        for i, older in enumerate(versions):
            for newer in versions[i + 1 :]:
                check_full_compatibility(older, newer)
                pairs += 1
    return pairs


def _deref(schema: Any, named: Mapping[str, Any]) -> Any:
    """A named type's definition in place of a reference to it by full name."""
    if isinstance(schema, str) and schema not in _PRIMITIVES:
        return named[schema]
    return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, str):
        return schema
    return str(schema["type"])


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _read_problems(  # noqa: C901 - the specification's resolution rules, one branch each
    reader: Any,
    writer: Any,
    rnamed: Mapping[str, Any],
    wnamed: Mapping[str, Any],
    path: str,
    seen: set[tuple[str, str]],
) -> list[str]:
    """What stops ``reader`` from reading data written with ``writer``, each naming a field."""
    reader, writer = _deref(reader, rnamed), _deref(writer, wnamed)
    rkind, wkind = _kind(reader), _kind(writer)
    where = f"field {path}" if path else "the record"
    if wkind == "union":
        # Data may hold any of the writer's branches, so each one must be readable.
        return [
            p
            for branch in writer
            for p in _read_problems(reader, branch, rnamed, wnamed, path, seen)
        ]
    if rkind == "union":
        # A failed trial must not mark record pairs as compared, hence a copy of ``seen``.
        for branch in reader:
            if not _read_problems(branch, writer, rnamed, wnamed, path, set(seen)):
                return []
        return [f"{where}: no branch of the reader's union reads the writer's {_describe(writer)}"]
    if rkind in _PRIMITIVES and wkind in _PRIMITIVES:
        if rkind not in _PROMOTIONS.get(wkind, frozenset({wkind})):
            return [f"{where}: type changed from {wkind} to {rkind}"]
        rlogical, wlogical = _logical(reader), _logical(writer)
        if rlogical != wlogical:
            return [f"{where}: logical type changed from {wlogical} to {rlogical}"]
        return []
    if rkind != wkind:
        return [f"{where}: type changed from {_describe(writer)} to {_describe(reader)}"]
    if rkind in ("record", "enum", "fixed") and _short(reader["name"]) != _short(writer["name"]):
        aliases = {_short(a) for a in reader.get("aliases", ())}
        if _short(writer["name"]) not in aliases:
            return [f"{where}: named type {writer['name']} renamed to {reader['name']}"]
    if rkind == "record":
        key = (reader["name"], writer["name"])
        if key in seen:
            return []
        seen.add(key)
        wfields = {f["name"]: f for f in writer["fields"]}
        problems: list[str] = []
        for rfield in reader["fields"]:
            names = [rfield["name"], *rfield.get("aliases", ())]
            wfield = next((wfields[n] for n in names if n in wfields), None)
            fpath = _join(path, rfield["name"])
            if wfield is not None:
                problems += _read_problems(
                    rfield["type"], wfield["type"], rnamed, wnamed, fpath, seen
                )
            elif "default" not in rfield:
                problems.append(f"field {fpath} is missing from the writer and has no default")
        return problems
    if rkind == "enum":
        missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
        if missing and "default" not in reader:
            return [f"{where}: enum {writer['name']} symbols {missing} unknown to the reader"]
        return []
    if rkind == "fixed":
        if reader["size"] != writer["size"]:
            return [f"{where}: fixed size changed from {writer['size']} to {reader['size']}"]
        return []
    if rkind == "array":
        return _read_problems(reader["items"], writer["items"], rnamed, wnamed, f"{path}[]", seen)
    if rkind == "map":
        return _read_problems(
            reader["values"], writer["values"], rnamed, wnamed, f"{path}{{}}", seen
        )
    raise SchemaError(f"{where}: unknown Avro type {rkind!r}")


def _logical(schema: Any) -> str | None:
    return schema.get("logicalType") if isinstance(schema, dict) else None


def _describe(schema: Any) -> str:
    kind = _kind(schema)
    if kind in ("record", "enum", "fixed"):
        return f"{kind} {_short(schema['name'])}"
    if kind == "union":
        return "union [" + ", ".join(_describe(b) for b in schema) + "]"
    logical = _logical(schema)
    return f"{kind} ({logical})" if logical else kind


# The Python value a JSON default must be for each Avro type; a union's default is for its
# first branch (Avro spec, "Complex Types"), the rule most often broken by putting null last.
_DEFAULT_TYPES: dict[str, tuple[type, ...]] = {
    "null": (type(None),),
    "boolean": (bool,),
    "int": (int,),
    "long": (int,),
    "float": (int, float),
    "double": (int, float),
    "bytes": (str,),
    "string": (str,),
    "enum": (str,),
    "fixed": (str,),
    "array": (list,),
    "map": (dict,),
    "record": (dict,),
}


def _default_problems(
    schema: Any, named: Mapping[str, Any], path: str, seen: set[str]
) -> list[str]:
    schema = _deref(schema, named)
    kind = _kind(schema)
    if kind == "union":
        return [p for b in schema for p in _default_problems(b, named, path, seen)]
    if kind == "array":
        return _default_problems(schema["items"], named, f"{path}[]", seen)
    if kind == "map":
        return _default_problems(schema["values"], named, f"{path}{{}}", seen)
    if kind != "record" or schema["name"] in seen:
        return []
    seen.add(schema["name"])
    problems: list[str] = []
    for field in schema["fields"]:
        fpath = _join(path, field["name"])
        if "default" in field:
            target = _deref(field["type"], named)
            first = _deref(target[0], named) if isinstance(target, list) else target
            value = field["default"]
            allowed = _DEFAULT_TYPES[_kind(first)]
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                problems.append(f"field {fpath}: default {value!r} is not a {_describe(first)}")
        problems += _default_problems(field["type"], named, fpath, seen)
    return problems


def _undocumented(schema: Any, path: str) -> list[str]:
    """Paths of records, enums and fields without a ``doc``, in the raw (unparsed) JSON."""
    if isinstance(schema, list):
        return [p for branch in schema for p in _undocumented(branch, path)]
    if not isinstance(schema, dict):
        return []
    kind = schema["type"]
    if kind == "array":
        return _undocumented(schema["items"], f"{path}[]")
    if kind == "map":
        return _undocumented(schema["values"], f"{path}{{}}")
    missing = (
        [f"{kind} {schema['name']}"] if kind in ("record", "enum") and "doc" not in schema else []
    )
    if kind == "record":
        for field in schema["fields"]:
            fpath = _join(path, field["name"])
            if "doc" not in field:
                missing.append(f"field {fpath}")
            missing += _undocumented(field["type"], fpath)
    return missing
