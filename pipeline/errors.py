"""The project's exception hierarchy: one base, subclassed by meaning.

Every error a user can cause or meet carries a message in words; the CLI prints
``str(error)`` and exits non-zero instead of showing a stack trace.
"""

from __future__ import annotations

__all__ = [
    "ClusterBusyError",
    "CodecError",
    "ConfigError",
    "CorruptBodyError",
    "DependencyMissingError",
    "EventTooLargeError",
    "IncompatibleSchemaError",
    "InvalidEventError",
    "MigrationError",
    "MissingMarkerError",
    "NotOwnerError",
    "OwnershipError",
    "PipelineError",
    "PortInUseError",
    "SchemaError",
    "ShardNotWritableError",
    "ShardingError",
    "StackError",
    "TopicNameError",
    "UnknownFingerprintError",
    "UnreachableError",
    "first_line",
]


def first_line(error: BaseException) -> str:
    """The first line of an error's message (database and Kafka errors run on with context
    lines), or its class name when it has none: what a health report or a log line shows."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class PipelineError(Exception):
    """Base of every error raised on purpose by coopr-pipeline."""


class ConfigError(PipelineError):
    """A configuration file or option is wrong; the message names the file and the field."""

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None):
        self.field = field
        self.source = source
        where = ", ".join(
            p
            for p in (f"file {source}" if source else "", f"field {field!r}" if field else "")
            if p
        )
        super().__init__(f"{message} ({where})" if where else message)


class TopicNameError(PipelineError, ValueError):
    """A topic name is not one of the project's topics."""


class DependencyMissingError(PipelineError):
    """A program the project needs (Java, Maven, PostgreSQL, kcat) is not installed."""


class StackError(PipelineError):
    """The local multi-DC stack could not be started, checked or stopped."""


class PortInUseError(StackError):
    """A port the stack needs is taken by a process the stack did not start."""

    def __init__(self, port: int, what: str):
        self.port = port
        super().__init__(f"port {port} ({what}) is already in use by another process")


class UnreachableError(PipelineError):
    """A Kafka cluster or database did not answer within the allowed time."""


class SchemaError(PipelineError):
    """A schema file is missing, unreadable, or breaks the rules in ``schemas/README.md``."""


class IncompatibleSchemaError(SchemaError):
    """Two versions of a record cannot read each other's data; ``problems`` names each field."""

    def __init__(self, message: str, problems: tuple[str, ...]):
        self.problems = problems
        super().__init__(f"{message}: " + "; ".join(problems))


class CodecError(PipelineError):
    """Bytes are not a decodable event, or an event cannot be encoded."""


class MissingMarkerError(CodecError):
    """The bytes do not start with the Avro single-object marker C3 01 and a fingerprint."""


class UnknownFingerprintError(CodecError):
    """The writer schema's fingerprint is not one of the shipped schema versions."""

    def __init__(self, fingerprint: bytes):
        self.fingerprint = fingerprint
        super().__init__(
            f"unknown writer schema fingerprint {fingerprint.hex()} (CRC-64-AVRO, bytes in header "
            "order): no shipped schema version has it; ship the writer's schema to decode it"
        )


class CorruptBodyError(CodecError):
    """The body after a valid header is truncated, corrupt, or followed by trailing bytes."""


class InvalidEventError(CodecError):
    """An event or record does not match its schema, so it was not encoded."""


class EventTooLargeError(PipelineError):
    """An event, encoded with its key, is over the size a shard topic takes."""

    def __init__(self, size: int, limit: int):
        self.size = size
        self.limit = limit
        super().__init__(
            f"the event is {size:,} bytes encoded with its key, over the {limit:,}-byte limit of"
            " a shard topic: it was not published (replicate less, e.g. fewer nodes or a"
            " smaller config, in one event)"
        )


class ShardingError(PipelineError, ValueError):
    """A shard cannot be computed: the cluster ID is empty or the shard count is below one."""


class OwnershipError(PipelineError):
    """This DC may not write the shard now; ``owner_dc`` is where the write belongs."""

    def __init__(self, message: str, *, shard: int, owner_dc: str):
        self.shard = shard
        self.owner_dc = owner_dc
        super().__init__(message)


class NotOwnerError(OwnershipError):
    """The shard is owned by another DC: route the write there."""

    def __init__(self, shard: int, owner_dc: str, local_dc: str):
        self.local_dc = local_dc
        super().__init__(
            f"shard {shard} is owned by {owner_dc}, not {local_dc}: route the write to {owner_dc}",
            shard=shard,
            owner_dc=owner_dc,
        )


class ShardNotWritableError(OwnershipError):
    """This DC owns the shard but may not write it now: read-only (a handover) or its lease
    has ended (the DC cannot hear a majority, or its controller stopped renewing it)."""

    def __init__(self, shard: int, owner_dc: str, why: str = "fenced or being handed over") -> None:
        super().__init__(
            f"shard {shard} is read-only in {owner_dc} ({why}): retry later",
            shard=shard,
            owner_dc=owner_dc,
        )


class ClusterBusyError(PipelineError):
    """A job already runs on the cluster, so Coopr refuses to start another (its HTTP 409)."""

    def __init__(self, cluster_id: str, running_job_id: str):
        self.cluster_id = cluster_id
        self.running_job_id = running_job_id
        super().__init__(
            f"cluster {cluster_id} is busy with job {running_job_id}: "
            "wait for it to end before starting another"
        )


class MigrationError(PipelineError):
    """The database's migrations are not this release's: a landed file was edited, or a newer
    release migrated the database. Nothing was changed."""
