"""Which partitions this relay publishes: session advisory locks plus heartbeats.

Every relay heartbeats a row in `outbox_relays`; rows silent for longer than the TTL are
pruned. The live relays, sorted by id, share the partitions round-robin (partition p goes
to the relay ranked p mod N). A relay owns a partition only while it holds the partition's
session advisory lock, on the same connection that runs its claim transactions: if the relay
dies, PostgreSQL drops the session and the lock with it; if it is frozen, the lock stays
held and nobody else can publish that partition, so there is never a second publisher.
(A PgBouncer in transaction mode breaks session locks: connect the relay directly.)
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger("outboxkit.relay")


def desired_partitions(relay_id: str, live: list[str], partitions: int) -> set[int]:
    """The partitions `relay_id` should own when `live` relays share `partitions`."""
    if relay_id not in live:
        live = sorted([*live, relay_id])
    rank, count = live.index(relay_id), len(live)
    return {p for p in range(partitions) if p % count == rank}


class PartitionOwnership:
    """Keeps this relay's share of the partitions locked and its heartbeat fresh."""

    def __init__(
        self, queries: dict[str, sql.Composed], relay_id: str, schema: str, ttl: float
    ) -> None:
        self.queries = queries
        self.relay_id = relay_id
        self.ttl = ttl
        self.lock_space = f"outboxkit:{schema}"
        self.owned: set[int] = set()
        self.partitions = 0

    async def tick(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Heartbeat, forget dead relays, then release or take partitions to match the share."""
        async with conn.transaction():
            await conn.execute(
                self.queries["heartbeat"],
                {
                    "relay_id": self.relay_id,
                    "hostname": socket.gethostname(),
                    "pid": os.getpid(),
                    "partitions": sorted(self.owned),
                },
            )
            await conn.execute(
                self.queries["prune_relays"], {"ttl": self.ttl, "relay_id": self.relay_id}
            )
            live = [
                row[0] for row in await (await conn.execute(self.queries["live_relays"])).fetchall()
            ]
            settings_row = await (await conn.execute(self.queries["settings"])).fetchone()
        assert settings_row is not None
        self.partitions = int(settings_row[0])
        desired = desired_partitions(self.relay_id, live, self.partitions)
        released = await self._locks(conn, "unlock_partitions", self.owned - desired)
        taken = await self._locks(conn, "try_lock_partitions", desired - self.owned)
        self.owned = (self.owned - released) | taken
        if released or taken:
            log.info(
                "partitions: released %s, took %s, own %s",
                sorted(released),
                sorted(taken),
                sorted(self.owned),
            )

    async def release_all(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Give up every partition and leave the relay table (graceful shutdown)."""
        self.owned -= await self._locks(conn, "unlock_partitions", self.owned)
        async with conn.transaction():
            await conn.execute(self.queries["leave"], {"relay_id": self.relay_id})

    def forget(self) -> None:
        """The session is gone and its locks with it (connection lost)."""
        self.owned.clear()

    async def _locks(
        self, conn: psycopg.AsyncConnection[Any], query: str, partitions: set[int]
    ) -> set[int]:
        if not partitions:
            return set()
        async with conn.transaction():
            cursor = await conn.execute(
                self.queries[query],
                {"lock_space": self.lock_space, "partitions": sorted(partitions)},
            )
            return {int(row[0]) for row in await cursor.fetchall()}
