"""Database DSNs as they may be shown: in messages, logs, tables and reprs, without a password.

Every place that prints or logs a DSN passes it through :func:`redact_dsn` first.
"""

from __future__ import annotations

import re

__all__ = ["REDACTED", "redact_dsn"]

#: What a password is replaced with.
REDACTED = "***"

# libpq's secrets: the password, and the passphrase of the client key (sslpassword).
_SECRET_KEY = r"(?:ssl)?password"
# key=value form: a value is single-quoted (backslash escapes inside) or runs to a blank.
_KEY_VALUE_SECRET = re.compile(rf"(\b{_SECRET_KEY}\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)", re.IGNORECASE)
# URL query parameters.
_QUERY_SECRET = re.compile(rf"([?&]{_SECRET_KEY}=)[^&#]*", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """``dsn`` with every password replaced by :data:`REDACTED`, all else kept as written.

    Handles URLs (``postgresql://user:secret@host/db``, ``...?password=secret``) and libpq's
    key=value form (``host=h password=secret``). In a URL everything between the user name's
    ``:`` and the last ``@`` counts as the password, so one with an unescaped ``@`` or ``/``
    is hidden whole.
    """
    scheme, separator, rest = dsn.partition("://")
    if not separator:
        return _KEY_VALUE_SECRET.sub(rf"\g<1>{REDACTED}", dsn)
    userinfo, at, hosts = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.partition(':')[0]}:{REDACTED}@{hosts}"
    return scheme + separator + _QUERY_SECRET.sub(rf"\g<1>{REDACTED}", rest)
