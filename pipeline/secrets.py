"""Secrets a process holds, and hiding them wherever text leaves it.

A secret comes from the environment: ``NAME`` or ``NAME_FILE`` (a path whose content is the
value, as Kubernetes mounts a Secret and systemd passes credentials). Every secret loaded
here is remembered, so that :func:`redact` can take its value out of any text: a log line,
an error message, a command's output. Keys that name a secret (``password``,
``sasl.password``, ``token``...) are hidden whatever their value.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping

from pipeline.dsn import REDACTED
from pipeline.errors import ConfigError

__all__ = ["is_secret_key", "load_secret", "redact", "remember_secret"]

#: Shorter values are not taken out of text: "1" or "ab" would blank out half a log line,
#: and a secret that short is no secret.
_MIN_LENGTH = 6

_SECRET_KEY = re.compile(r"(?:^|[._-])(?:password|passwd|secret|token|credentials?)$", re.I)

_lock = threading.Lock()
_known: set[str] = set()


def is_secret_key(key: str) -> bool:
    """Whether ``key`` names a secret (``password``, ``sasl.password``, ``api_token``...)."""
    return _SECRET_KEY.search(key) is not None


def remember_secret(value: str) -> None:
    """Hide ``value`` from now on in whatever :func:`redact` is given."""
    if len(value) >= _MIN_LENGTH:
        with _lock:
            _known.add(value)


def load_secret(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The secret ``name`` from ``NAME_FILE`` (its content, without a final newline) or
    ``NAME``, or None when neither is set; remembered for :func:`redact`. Both set is a
    :class:`ConfigError` naming the two variables, never a value."""
    env = os.environ if environ is None else environ
    path, plain = env.get(f"{name}_FILE"), env.get(name)
    if path is not None and plain is not None:
        raise ConfigError(f"both {name} and {name}_FILE are set: keep one")
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().removesuffix("\n")
        except OSError as e:
            raise ConfigError(f"{name}_FILE={path} cannot be read: {e.strerror}") from None
    elif plain is not None:
        value = plain
    else:
        return None
    remember_secret(value)
    return value


def redact(text: str) -> str:
    """``text`` with every remembered secret's value replaced by ``***``."""
    with _lock:
        known = sorted(_known, key=len, reverse=True)  # a longer secret may hold a shorter one
    for value in known:
        if value in text:
            text = text.replace(value, REDACTED)
    return text
