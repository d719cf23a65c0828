"""structlog set-up shared by every command and worker.

On a terminal the output is coloured key=value lines; otherwise (a service, a pipe, CI) one
JSON object per line, with ISO-8601 UTC timestamps. Logs go to stderr so that a command's
stdout stays machine-readable. No secret is written: a field named like one is hidden, and
every secret the process loaded (:mod:`pipeline.secrets`) is taken out of every text,
exception tracebacks included.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from pipeline.dsn import REDACTED
from pipeline.secrets import is_secret_key, redact, remember_secret

__all__ = ["configure_logging", "get_logger", "hide_secrets"]


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog once per process; ``json=None`` picks JSON unless stderr is a TTY."""
    as_json = not sys.stderr.isatty() if json is None else json
    # libpq reads it by itself; remembered here so that no line can show it.
    if password := os.environ.get("PGPASSWORD"):
        remember_secret(password)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            hide_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger whose lines carry ``component=name``."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger


def hide_secrets(
    logger: object, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: the values of secret-named keys, and every remembered secret
    inside any text, become ``***`` (in nested mappings and lists too)."""
    for key, value in event.items():
        event[key] = REDACTED if is_secret_key(key) else _hidden(value)
    return event


def _hidden(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_key(str(k)) else _hidden(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_hidden(v) for v in value]
    return value
