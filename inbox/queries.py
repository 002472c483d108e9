"""The inbox's named queries, bound to a schema."""

from __future__ import annotations

from functools import cache

from psycopg import sql

from outboxkit.outbox import sqlfile

TABLES = ("inbox_messages", "inbox_dead_letters")


@cache
def bound(schema: str) -> dict[str, sql.Composed]:
    """Queries of `inbox/queries.sql` with table names bound to `schema`.

    `store` is the Postgres-inbox target's statement (`brokers/postgres/queries.sql`): the
    relay writing into this table and the durable inbox storing a delivery share one insert.
    """
    queries = sqlfile.load("outboxkit.inbox", "queries.sql")
    queries["store"] = sqlfile.load("outboxkit.brokers.postgres", "queries.sql")["store"]
    return sqlfile.bind(queries, schema, TABLES)
