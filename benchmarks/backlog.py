"""Backlogs: fill the outbox fast, count it, and hold the relays back until all are ready."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.env import SCHEMA

TOPIC = "bench.order"
KEYS = 1_000  # distinct ordering keys in a backlog
_CHUNK = 100_000

# Rows shaped like `outbox.write` makes them: JSON payload of ~170 bytes, a key, the key's
# partition under the current partition count.
_FILL = """
INSERT INTO {messages}
    (message_id, topic, key, partition, payload, content_type, headers)
SELECT g.message_id, %(topic)s, g.key,
       (hashtext(coalesce(g.key, g.message_id::text)) & 2147483647) %% s.partitions,
       convert_to(format('{{"order_id":%%s,"total":%%s,"note":"%%s"}}',
                         g.i, (g.i * 7) %% 1000, repeat('x', 120)), 'UTF8'),
       'application/json', '{{}}'::jsonb
FROM (SELECT i, gen_random_uuid() AS message_id,
             CASE WHEN %(keys)s > 0 THEN 'key-' || (i %% greatest(%(keys)s, 1)) END AS key
      FROM generate_series(%(first)s::int, %(last)s::int) AS i) AS g
CROSS JOIN {settings} AS s
"""


def _table(name: str, schema: str = SCHEMA) -> sql.Identifier:
    return sql.Identifier(schema, name)


def fill(
    dsn: str, count: int, *, keys: int = KEYS, topic: str = TOPIC, schema: str = SCHEMA
) -> None:
    """Insert `count` pending messages over `keys` keys (0: keyless), then VACUUM ANALYZE."""
    query = sql.SQL(_FILL).format(
        messages=_table("outbox_messages", schema), settings=_table("outbox_settings", schema)
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        for first in range(1, count + 1, _CHUNK):
            last = min(first + _CHUNK - 1, count)
            with conn.transaction():
                conn.execute(query, {"topic": topic, "keys": keys, "first": first, "last": last})
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(_table("outbox_messages", schema)))


def vacuum(dsn: str, schema: str = SCHEMA) -> None:
    """VACUUM the outbox so that each run starts from a clean table."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(_table("outbox_messages", schema)))


async def count(conn: psycopg.AsyncConnection[Any], schema: str = SCHEMA) -> int:
    """Pending messages (an exact count: a sequential scan)."""
    query = sql.SQL("SELECT count(*) FROM {}").format(_table("outbox_messages", schema))
    row = await (await conn.execute(query)).fetchone()
    return int(row[0]) if row else 0


def pending(dsn: str, schema: str = SCHEMA) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(_table("outbox_messages", schema))
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def partitions(dsn: str, schema: str = SCHEMA) -> int:
    query = sql.SQL("SELECT partitions FROM {}").format(_table("outbox_settings", schema))
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 16


@contextlib.asynccontextmanager
async def held_partitions(dsn: str, schema: str = SCHEMA) -> AsyncIterator[Gate]:
    """Hold every partition's advisory lock, so relays start, register and wait.

    Relays own a partition only while they hold its session advisory lock. Holding all of
    them lets several relays join and agree on their shares before any claims a row; then
    `gate.open()` releases them at once and each relay takes its share on its next tick.
    Without it, the first relay to start would drain alone until the others caught up.
    """
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    gate = Gate(conn, schema, partitions(dsn, schema))
    try:
        await conn.execute(
            "SELECT pg_advisory_lock(hashtext(%s), p) FROM generate_series(0, %s - 1) AS p",
            (f"outboxkit:{schema}", gate.partitions),
        )
        yield gate
    finally:
        await conn.close()


class Gate:
    """The harness's hold on the partitions (see `held_partitions`)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], schema: str, partitions: int) -> None:
        self.conn = conn
        self.schema = schema
        self.partitions = partitions

    async def wait_for_relays(
        self, relays: int, alive: Callable[[], None], within: float = 60.0
    ) -> None:
        """Until `relays` relays heartbeat, plus one heartbeat so all see each other.

        `alive()` raises if a relay process died meanwhile.
        """
        query = sql.SQL("SELECT count(*) FROM {}").format(_table("outbox_relays", self.schema))
        deadline = time.monotonic() + within
        while True:
            row = await (await self.conn.execute(query)).fetchone()
            if row and int(row[0]) >= relays:
                break
            alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {row[0] if row else 0} of {relays} relays registered")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.3)  # > heartbeat interval: every relay has seen the others

    async def open(self) -> None:
        """Release every partition: the relays take their shares on their next tick."""
        await self.conn.execute("SELECT pg_advisory_unlock_all()")
