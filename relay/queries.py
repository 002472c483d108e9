"""The relay's named queries, bound to a schema."""

from __future__ import annotations

from functools import cache

from psycopg import sql

from outboxkit.outbox import sqlfile

TABLES = (
    "outbox_messages",
    "outbox_settings",
    "outbox_dead_letters",
    "outbox_key_blocks",
    "outbox_relays",
)


@cache
def bound(schema: str) -> dict[str, sql.Composed]:
    """Queries of `relay/queries.sql` with table names bound to `schema`."""
    return sqlfile.bind(sqlfile.load("outboxkit.relay", "queries.sql"), schema, TABLES)
