"""Connecting to PostgreSQL with errors that name the server but never the password."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from outboxkit.outbox.errors import ConfigurationError, DatabaseUnavailable, SchemaNotMigrated
from outboxkit.outbox.limits import clean_text
from outboxkit.outbox.redact import redact_dsn, redact_message

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


@contextmanager
def schema_errors(schema: str) -> Iterator[None]:
    """Turn "no such table/schema" inside the block into `SchemaNotMigrated` naming `schema`."""
    try:
        yield
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
        raise SchemaNotMigrated(
            f"no outboxkit tables in schema {schema!r}: run `outboxkit migrate`"
        ) from exc


def connection_lost(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether `conn` is unusable, as opposed to one statement having failed on it.

    Decided from the connection's state, never from the exception's class: psycopg raises
    `OperationalError` for a server gone away but also for a statement timeout or an index
    row too large (`ProgramLimitExceeded`), which leave the connection perfectly usable.
    """
    return conn.closed or conn.broken


def statement_error(exc: psycopg.Error) -> str:
    """A failed statement in one clean line: the error's class and primary message.

    Never the DETAIL, which can quote a whole row (payload included) for a constraint."""
    primary = exc.diag.message_primary or str(exc).partition("\n")[0]
    return clean_text(f"{type(exc).__name__}: {primary}")


def like_pattern(glob: str) -> str:
    """A SQL LIKE pattern for a glob where `*` is any run and `?` one character."""
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")
