"""
Connecting to PostgreSQL without ever showing the password: the store's error type, DSNs
masked for logs (L{mask_dsn}) and libpq's messages scrubbed (L{scrub}).
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sixchat.errors import SixchatError

__all__ = ["PostgresStoreError", "mask_dsn", "scrub"]

_MASK = "***"


class PostgresStoreError(SixchatError):
    """The database cannot be used (connection refused, schema too new); no password inside."""


def mask_dsn(dsn: str) -> str:
    """
    C{dsn} fit for a log line: the password (given as C{password=…} or in a URL) is replaced
    by C{***}. A DSN that does not parse is not shown at all, since libpq's complaint or the
    text itself might carry the password.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable PostgreSQL DSN>"
    if params.get("password"):
        params.update(password=_MASK)
    return make_conninfo("", **params)


def scrub(message: str, password: str | None) -> str:
    """An error message from libpq with any occurrence of the password replaced."""
    if password:
        message = message.replace(password, _MASK)
    return message
