"""Find the psycopg connection behind whatever transaction the caller hands us.

Supported: psycopg 3 `Connection`/`AsyncConnection`, and SQLAlchemy 2 `Session`,
`Connection`, `AsyncSession`, `AsyncConnection` on the psycopg 3 dialect. We only ever
execute on the caller's connection: never commit, roll back, close, or run DDL on it.
"""

from __future__ import annotations

from functools import singledispatch
from typing import Any

import psycopg

from outboxkit.outbox.errors import TransactionRequired, UnsupportedConnection

SyncConn = psycopg.Connection[Any]
AsyncConn = psycopg.AsyncConnection[Any]


def _unsupported(tx: object) -> UnsupportedConnection:
    return UnsupportedConnection(
        f"cannot write through a {type(tx).__module__}.{type(tx).__qualname__}: expected a "
        "psycopg 3 connection or a SQLAlchemy 2 session/connection using psycopg 3 "
        "(postgresql+psycopg://)"
    )


def check_transactional(conn: SyncConn | AsyncConn, allow_autocommit: bool) -> None:
    """Refuse an autocommit connection unless the caller opted in."""
    if conn.autocommit and not allow_autocommit:
        raise TransactionRequired(
            "the connection is in autocommit mode, so the message would commit without your "
            "business rows; open a transaction (with conn.transaction(): …) or pass "
            "allow_autocommit=True to Outbox if that is really what you want"
        )


@singledispatch
def sync_connection(tx: object) -> SyncConn:
    """The psycopg `Connection` that `tx` runs its transaction on."""
    raise _unsupported(tx)


@sync_connection.register
def _(tx: psycopg.Connection) -> SyncConn:
    return tx


@singledispatch
async def async_connection(tx: object) -> AsyncConn:
    """The psycopg `AsyncConnection` that `tx` runs its transaction on."""
    raise _unsupported(tx)


@async_connection.register
async def _(tx: psycopg.AsyncConnection) -> AsyncConn:
    return tx


def _driver_connection(tx: object, raw: Any, expected: type) -> Any:
    driver = getattr(raw, "driver_connection", None)
    if not isinstance(driver, expected):
        raise _unsupported(tx)
    return driver


# Sync and async support are registered separately: SQLAlchemy's asyncio extension needs
# greenlet, which plain `pip install sqlalchemy` (2.1+) does not bring, and its absence must
# not take the sync Session/Connection support down with it.
try:
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.orm import Session as SASession
except ImportError:  # pragma: no cover - SQLAlchemy is an optional extra
    pass
else:

    @sync_connection.register
    def _(tx: SAConnection) -> SyncConn:
        if not tx.in_transaction():
            tx.begin()  # what SQLAlchemy's own autobegin would do on the first execute
        return _driver_connection(tx, tx.connection, psycopg.Connection)  # type: ignore[no-any-return]

    @sync_connection.register
    def _(tx: SASession) -> SyncConn:
        return sync_connection(tx.connection())


try:
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncSession as SAAsyncSession
except ImportError:  # pragma: no cover - needs `sqlalchemy[asyncio]`
    pass
else:

    @async_connection.register
    async def _(tx: SAAsyncConnection) -> AsyncConn:
        if not tx.in_transaction():
            await tx.begin()
        raw = await tx.get_raw_connection()
        return _driver_connection(tx, raw, psycopg.AsyncConnection)  # type: ignore[no-any-return]

    @async_connection.register
    async def _(tx: SAAsyncSession) -> AsyncConn:
        return await async_connection(await tx.connection())
