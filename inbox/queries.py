"""The inbox's named queries, bound to a schema."""

from __future__ import annotations

from functools import cache

from psycopg import sql

from outboxkit.outbox import sqlfile

TABLES = ("inbox_messages", "inbox_dead_letters")


@cache
def bound(schema: str) -> dict[str, sql.Composed]:
    """Queries of `inbox/queries.sql` with table names bound to `schema`."""
    return sqlfile.bind(sqlfile.load("outboxkit.inbox", "queries.sql"), schema, TABLES)
