"""The write path's named queries, bound to a schema."""

from __future__ import annotations

from functools import cache

from psycopg import sql

from outboxkit.outbox import sqlfile

TABLES = ("outbox_messages", "outbox_settings")


@cache
def bound(schema: str) -> dict[str, sql.Composed]:
    """Queries of `outbox/queries.sql` with table names bound to `schema`."""
    return sqlfile.bind(sqlfile.load("outboxkit.outbox", "queries.sql"), schema, TABLES)
