"""Postgres-to-Postgres publisher: the relay writes straight into another database's inbox.

URL: `postgresql://user:password@host:port/dbname?consumer=billing&schema=outboxkit`.

- `consumer` (required): the inbox consumer the rows are for.
- `schema=outboxkit`: where the target database's migrations created `inbox_messages`.
- `timeout=30`: seconds a batch may take; past it the connection is dropped and the batch
  reported retriable.
- Any other parameter goes to libpq unchanged (`sslmode`, `application_name`, ...);
  `connect_timeout` defaults to 10.

A batch is a single `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING` on an autocommit
connection: one statement is one transaction and the server answers only after the commit,
so every message is acked once durable, in one round trip, and a republished message adds
no second row. A row's `headers` hold the full envelope (`outbox.envelope.to_headers`),
the same map every broker carries.

Errors: a lost connection makes the batch `unreachable` and the next call reconnects; a data
or integrity error (a NUL character in a header, say) makes each message go alone, so only
the bad ones are rejected; any other database error is retriable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg.types.json import Jsonb

from outboxkit.brokers.publishing import Capabilities, Outcome
from outboxkit.migrations.current import require_current
from outboxkit.outbox import sqlfile
from outboxkit.outbox.envelope import to_headers
from outboxkit.outbox.errors import (
    BrokerUnavailable,
    ConfigurationError,
    OutboxkitError,
    SchemaNotMigrated,
)
from outboxkit.outbox.identifiers import check_schema_name
from outboxkit.outbox.limits import MAX_CONSUMER_BYTES, text_problem
from outboxkit.outbox.message import Message
from outboxkit.outbox.redact import redact_dsn, redact_message

_log = logging.getLogger(__name__)

TABLES = ("inbox_messages",)
DEFAULT_SCHEMA = "outboxkit"
DEFAULT_TIMEOUT = 30.0
_OWN_PARAMS = frozenset({"consumer", "schema", "timeout"})


class PostgresPublisher:
    """Inserts batches into one consumer's rows of a target database's `inbox_messages`."""

    def __init__(
        self,
        conninfo: str,
        *,
        consumer: str,
        schema: str = DEFAULT_SCHEMA,
        timeout: float = DEFAULT_TIMEOUT,
        password: str | None = None,
    ) -> None:
        if not consumer:
            raise ConfigurationError("the postgresql:// publisher needs ?consumer=<name>")
        if problem := text_problem(consumer, MAX_CONSUMER_BYTES):
            # Refused here, not row by row by the inbox's CHECK: that would dead-letter all.
            raise ConfigurationError(f"consumer name {consumer[:64]!r} {problem}")
        check_schema_name(schema)
        self.capabilities = Capabilities(
            ordered_per_key=True, broker_dedup=True, max_message_bytes=None
        )
        self.consumer, self.schema, self.timeout = consumer, schema, timeout
        self._conninfo = conninfo
        self._display = redact_dsn(conninfo)
        self._password = password
        queries = sqlfile.bind(
            sqlfile.load("outboxkit.brokers.postgres", "queries.sql"), schema, TABLES
        )
        self._insert = queries["store"]
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        """Connect to the target and check that it has the inbox table."""
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await self._connect()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        where = f"the target database {self._display}"
        try:
            async with asyncio.timeout(self.timeout):
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            # libpq quotes pieces of a misread URL (`host 'pa@…'`): those are masked too.
            reason = redact_message(self._scrub(exc), self._conninfo)
            raise BrokerUnavailable(f"cannot connect to {where}: {reason}") from exc
        try:
            async with asyncio.timeout(self.timeout):
                # The target is another service's inbox: as new as this outboxkit's, or its
                # limits and row security may be missing. Same check as relays and consumers.
                await require_current(conn, self.schema)
        except SchemaNotMigrated as exc:
            await conn.close()
            raise SchemaNotMigrated(f"{where}: {exc}") from exc
        except (psycopg.Error, TimeoutError) as exc:
            await conn.close()
            raise BrokerUnavailable(f"{where} is unusable: {self._scrub(exc)}") from exc
        return conn

    async def publish(self, batch: Sequence[Message]) -> list[Outcome]:
        """Insert the batch in one statement; per message only if the batch had bad data."""
        if not batch:
            return []
        try:
            await self.connect()
        except OutboxkitError as exc:
            return [Outcome.unreachable(str(exc))] * len(batch)
        try:
            await self._insert_rows(batch)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            if len(batch) == 1:
                return [_rejected(exc)]
            return await self._publish_one_by_one(batch)
        except (psycopg.Error, TimeoutError) as exc:
            return [await self._failure(exc)] * len(batch)
        return [Outcome.ok()] * len(batch)

    async def _publish_one_by_one(self, batch: Sequence[Message]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for message in batch:
            try:
                await self._insert_rows([message])
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                outcomes.append(_rejected(exc))
            except (psycopg.Error, TimeoutError) as exc:
                failure = await self._failure(exc)
                if failure.unavailable:  # the connection is gone: do not try the rest
                    return outcomes + [failure] * (len(batch) - len(outcomes))
                outcomes.append(failure)
            else:
                outcomes.append(Outcome.ok())
        return outcomes

    async def _insert_rows(self, messages: Sequence[Message]) -> None:
        conn = self._conn
        assert conn is not None
        async with asyncio.timeout(self.timeout):
            await conn.execute(self._insert, self._params(messages))

    def _params(self, messages: Sequence[Message]) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "message_ids": [m.message_id for m in messages],
            "topics": [m.topic for m in messages],
            "keys": [m.key for m in messages],
            "payloads": [m.payload for m in messages],
            "content_types": [m.content_type for m in messages],
            "headers": [Jsonb(to_headers(m)) for m in messages],
        }

    async def _failure(self, exc: psycopg.Error | TimeoutError) -> Outcome:
        """The outcome for a failure that says nothing bad about the messages themselves."""
        conn = self._conn
        if isinstance(exc, TimeoutError):
            await self._drop()  # a cancelled statement leaves the connection in doubt
            return Outcome.retry(f"no commit from the target database within {self.timeout:g}s")
        if conn is None or conn.closed or conn.broken:
            await self._drop()
            return Outcome.unreachable(f"lost the target database: {self._scrub(exc)}")
        return Outcome.retry(f"target database error: {self._scrub(exc)}")

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except psycopg.Error as exc:
                _log.debug("closing the target connection: %r", exc)

    async def close(self) -> None:
        """Close the connection; safe to call twice."""
        await self._drop()

    def _scrub(self, error: object) -> str:
        text = " ".join(str(error).split()) or type(error).__name__
        return text.replace(self._password, "***") if self._password else text

    def __repr__(self) -> str:
        return f"PostgresPublisher({self._display!r}, consumer={self.consumer!r})"


def _rejected(exc: psycopg.Error) -> Outcome:
    # The primary message and the constraint only: the detail of a CHECK violation quotes
    # the whole failing row, payload included, and the full text can echo parameter values.
    reason = exc.diag.message_primary or str(exc).splitlines()[0]
    constraint = f" (constraint {exc.diag.constraint_name})" if exc.diag.constraint_name else ""
    return Outcome.reject(f"refused by the target database: {reason}{constraint}")


def create(url: str) -> PostgresPublisher:
    """A publisher for a `postgresql://…?consumer=…` URL (options: see the module docstring)."""
    try:
        parts = urlsplit(url)
        password = unquote(parts.password) if parts.password else None
    except ValueError as exc:
        raise ConfigurationError(f"invalid database URL {redact_dsn(url)}: {exc}") from None
    own: dict[str, str] = {}
    libpq: list[str] = []
    for pair in filter(None, parts.query.split("&")):
        name, _, value = pair.partition("=")
        if unquote(name) in _OWN_PARAMS:
            own[unquote(name)] = unquote(value)
        else:
            libpq.append(pair)
    if not any(p.partition("=")[0] == "connect_timeout" for p in libpq):
        libpq.append("connect_timeout=10")
    conninfo = urlunsplit(parts._replace(query="&".join(libpq)))
    if not own.get("consumer"):
        raise ConfigurationError(
            f"{redact_dsn(url)}: the postgresql:// publisher needs ?consumer=<name>"
        )
    try:
        timeout = float(own.get("timeout", DEFAULT_TIMEOUT))
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise ConfigurationError(f"{redact_dsn(url)}: timeout must be a positive number of seconds")
    return PostgresPublisher(
        conninfo,
        consumer=own["consumer"],
        schema=own.get("schema", DEFAULT_SCHEMA),
        timeout=timeout,
        password=password,
    )
