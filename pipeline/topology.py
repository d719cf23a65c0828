"""The topology file: which DCs exist, where their Kafka and Postgres are, and who owns what.

The file is TOML::

    shard_count = 16      # shards of cluster state, numbered 0..shard_count-1
    replicas = 1          # remote replicas of each shard

    [[dc]]
    name = "dc1"
    kafka = "127.0.0.1:19092"                                  # bootstrap servers
    database = "postgresql://postgres@127.0.0.1:15432/coopr"   # libpq DSN
    # witness = true      # a controller-only DC: no shards, no database (leave it out),
    #                     # counts towards a majority
    # kafka_security = "SASL_SSL"   # SCRAM-SHA-512 over TLS; PLAINTEXT by default. The
    #                               # credentials come from the environment (docs/security.md)
    # kafka_ca = "/etc/coopr-pipeline/ca.pem"   # CA bundle for the brokers' certificates

Everything else is derived, deterministically, from the order of the ``[[dc]]`` entries:
shard ``s`` is first owned by data DC ``s mod n`` and replicated to the next ``replicas``
data DCs in ring order. A shard's *DC set* (owner plus replicas) never changes, so the
MirrorMaker 2 flow A->B carries exactly the shards whose set holds both A and B, and stays
right after any failover inside the set.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from pipeline.dsn import redact_dsn
from pipeline.errors import ConfigError
from pipeline.topics import is_dc_name

__all__ = ["KAFKA_SECURITY", "DataCenter", "Topology", "load_topology", "parse_topology"]

#: How clients may reach a DC's Kafka: in the clear, or SCRAM-SHA-512 over TLS.
KAFKA_SECURITY = ("PLAINTEXT", "SASL_SSL")

_HOST_PORT = re.compile(r"[A-Za-z0-9._-]+:\d{1,5}")


@dataclass(frozen=True, slots=True)
class DataCenter:
    """One DC: its name, Kafka bootstrap servers and database DSN, and how its Kafka is
    reached (``kafka_security``: one of :data:`KAFKA_SECURITY`; ``kafka_ca``: a CA file).

    The DSN may hold a password, so reprs, logs and tables show ``database_redacted``.
    """

    name: str
    kafka: str
    database: str = field(repr=False)
    witness: bool = False
    kafka_security: str = "PLAINTEXT"
    kafka_ca: str | None = None
    database_redacted: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "database_redacted", redact_dsn(self.database))

    @property
    def kafka_port(self) -> int:
        """Port of the first bootstrap server (the local stack runs one broker per DC)."""
        return int(self.kafka.split(",")[0].rsplit(":", 1)[1])

    @property
    def database_port(self) -> int:
        """Port in the DSN, 5432 when it names none."""
        return urlsplit(self.database).port or 5432


@dataclass(frozen=True, slots=True)
class Topology:
    """The validated topology with the derived shard layout."""

    dcs: tuple[DataCenter, ...]
    shard_count: int
    replicas: int
    source: str = "<memory>"
    _by_name: Mapping[str, DataCenter] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {dc.name: dc for dc in self.dcs})

    @property
    def data_dcs(self) -> tuple[DataCenter, ...]:
        """DCs that own and replicate shards (all but witnesses), in file order."""
        return tuple(dc for dc in self.dcs if not dc.witness)

    def dc(self, name: str) -> DataCenter:
        """The DC called ``name``; :class:`ConfigError` naming the known DCs otherwise."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(self._by_name)
            raise ConfigError(
                f"unknown DC {name!r}; the topology has {known}", field="dc", source=self.source
            ) from None

    def initial_owner(self, shard: int) -> str:
        """The DC that owns ``shard`` before any failover."""
        data = self.data_dcs
        return data[shard % len(data)].name

    def owned_shards(self, dc: str) -> tuple[int, ...]:
        """The shards ``dc`` owns before any failover (what a fresh stack lets it publish)."""
        return tuple(s for s in range(self.shard_count) if self.initial_owner(s) == dc)

    def replica_list(self, shard: int) -> tuple[str, ...]:
        """The ordered replicas of ``shard``: the first live one takes it over on failover."""
        data = self.data_dcs
        start = shard % len(data)
        return tuple(data[(start + k) % len(data)].name for k in range(1, self.replicas + 1))

    def dc_set(self, shard: int) -> tuple[str, ...]:
        """Owner then replicas of ``shard``; ownership only ever moves inside this set."""
        return (self.initial_owner(shard), *self.replica_list(shard))

    def shards_of(self, dc: str) -> tuple[int, ...]:
        """Shards whose DC set holds ``dc`` (the shard topics that DC's cluster carries)."""
        return tuple(s for s in range(self.shard_count) if dc in self.dc_set(s))

    def replicated_by(self, dc: str) -> dict[str, tuple[int, ...]]:
        """For each other DC, the shards it shares with ``dc``: what ``dc`` mirrors from it."""
        return {
            other.name: shared
            for other in self.dcs
            if other.name != dc and (shared := self.flow_shards(other.name, dc))
        }

    def flow_shards(self, source: str, target: str) -> tuple[int, ...]:
        """Shards the MirrorMaker 2 flow ``source->target`` carries."""
        return tuple(
            s
            for s in range(self.shard_count)
            if source in (dc_set := self.dc_set(s)) and target in dc_set
        )


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file; errors name the file and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read topology: {e.strerror}", source=str(path)) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", source=str(path)) from None
    return parse_topology(raw, source=str(path))


def parse_topology(raw: Mapping[str, Any], *, source: str = "<memory>") -> Topology:
    """Validate a topology already read into a mapping."""
    unknown = set(raw) - {"shard_count", "replicas", "dc"}
    if unknown:
        raise ConfigError("unknown setting", field=sorted(unknown)[0], source=source)
    shard_count = raw.get("shard_count")
    if not _is_whole(shard_count) or not 1 <= shard_count <= 1000:
        raise ConfigError(
            f"must be a whole number from 1 to 1000, not {shard_count!r}",
            field="shard_count",
            source=source,
        )
    dcs = _parse_dcs(raw.get("dc"), source)
    data = [dc for dc in dcs if not dc.witness]
    if len(data) < 2:
        raise ConfigError(
            "needs at least two DCs that are not witnesses", field="dc", source=source
        )
    replicas = raw.get("replicas", 1)
    if not _is_whole(replicas) or not 1 <= replicas < len(data):
        raise ConfigError(
            f"must be from 1 to {len(data) - 1} (data DCs - 1), not {replicas!r}",
            field="replicas",
            source=source,
        )
    return Topology(dcs=dcs, shard_count=shard_count, replicas=replicas, source=source)


def _is_whole(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an integer; TOML's ``true`` is a bool, which Python counts as one."""
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_dcs(entries: object, source: str) -> tuple[DataCenter, ...]:
    """The ``[[dc]]`` entries, in file order."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError("needs at least one [[dc]] entry", field="dc", source=source)
    dcs: list[DataCenter] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError("must be a table", field=f"dc[{i}]", source=source)
        dcs.append(_parse_dc(entry, f"dc[{i}]", [dc.name for dc in dcs], source))
    return tuple(dcs)


def _parse_dc(
    entry: Mapping[str, Any], where: str, taken: Collection[str], source: str
) -> DataCenter:
    """One ``[[dc]]`` entry, named ``where`` in errors (``dc[2]``); ``taken``: earlier names."""

    def fail(message: str, key: str) -> ConfigError:
        return ConfigError(message, field=f"{where}.{key}", source=source)

    extra = set(entry) - {"name", "kafka", "database", "witness", "kafka_security", "kafka_ca"}
    if extra:
        raise fail("unknown setting", sorted(extra)[0])
    name = entry.get("name")
    if not isinstance(name, str) or not is_dc_name(name):
        raise fail(f"must be lower case letters, digits or '-', not {name!r}", "name")
    if name in taken:
        raise fail(f"DC {name!r} is listed twice", "name")
    kafka = entry.get("kafka")
    if not isinstance(kafka, str) or not all(
        _HOST_PORT.fullmatch(s.strip()) for s in kafka.split(",")
    ):
        raise fail(f"must be host:port[,host:port...], not {kafka!r}", "kafka")
    witness = entry.get("witness", False)
    if not isinstance(witness, bool):
        raise fail(f"must be true or false, not {witness!r}", "witness")
    # A witness has no database: its DSN may be left out (and is never used).
    database = entry.get("database", "" if witness else None)
    if not (witness and database == "") and (
        not isinstance(database, str) or urlsplit(database).scheme not in ("postgresql", "postgres")
    ):
        shown = redact_dsn(database) if isinstance(database, str) else database
        raise fail(f"must be a postgresql:// DSN, not {shown!r}", "database")
    security = entry.get("kafka_security", "PLAINTEXT")
    if security not in KAFKA_SECURITY:
        raise fail(
            f"must be one of {', '.join(KAFKA_SECURITY)}, not {security!r}", "kafka_security"
        )
    ca = entry.get("kafka_ca")
    if ca is not None and (not isinstance(ca, str) or not ca):
        raise fail(f"must be the path of a CA file, not {ca!r}", "kafka_ca")
    return DataCenter(
        name=name,
        kafka=kafka,
        database=database,
        witness=witness,
        kafka_security=security,
        kafka_ca=ca,
    )
