"""Connecting to PostgreSQL with errors that name the server but never the password."""

from __future__ import annotations

from typing import Any

import psycopg

from outbox.errors import ConfigurationError, DatabaseUnavailable
from outbox.redact import redact_dsn, redact_message

CONNECT_TIMEOUT = 10


def unavailable(dsn: str, exc: BaseException) -> DatabaseUnavailable:
    """A one-line `DatabaseUnavailable` for a failed connection to `dsn`."""
    lines = str(exc).strip().splitlines()
    reason = redact_message(lines[0], dsn) if lines else ""
    return DatabaseUnavailable(f"cannot connect to {redact_dsn(dsn)}: {reason}")


def invalid_dsn(dsn: str, exc: BaseException) -> ConfigurationError:
    """A one-line `ConfigurationError` for a DSN libpq cannot parse (its message quotes
    pieces of the DSN, perhaps of the password: those are masked)."""
    return ConfigurationError(f"invalid DSN {redact_dsn(dsn)}: {redact_message(str(exc), dsn)}")


def connect(dsn: str, **options: Any) -> psycopg.Connection[Any]:
    """`psycopg.connect` with a timeout; `DatabaseUnavailable` if the server is unreachable."""
    try:
        return psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT, **options)
    except psycopg.OperationalError as exc:
        raise unavailable(dsn, exc) from None
    except psycopg.ProgrammingError as exc:
        raise invalid_dsn(dsn, exc) from None


async def aconnect(dsn: str, **options: Any) -> psycopg.AsyncConnection[Any]:
    """Async `connect`."""
    try:
        return await psycopg.AsyncConnection.connect(
            dsn, connect_timeout=CONNECT_TIMEOUT, **options
        )
    except psycopg.OperationalError as exc:
        raise unavailable(dsn, exc) from None
    except psycopg.ProgrammingError as exc:
        raise invalid_dsn(dsn, exc) from None


def like_pattern(glob: str) -> str:
    """A SQL LIKE pattern for a glob where `*` is any run and `?` one character."""
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")
