"""The relay process: own partitions, run claim cycles, wake on NOTIFY, drain on stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from outboxkit.brokers import Publisher, create_publisher
from outboxkit.migrations.current import require_current
from outboxkit.outbox.backoff import message_backoff
from outboxkit.outbox.db import aconnect, connection_lost, statement_error
from outboxkit.outbox.errors import DatabaseUnavailable
from outboxkit.outbox.faults import CrashPoints
from outboxkit.outbox.settings import notify_channel
from outboxkit.relay.cycle import Cycle
from outboxkit.relay.metrics import RelayMetrics
from outboxkit.relay.ownership import PartitionOwnership
from outboxkit.relay.queries import bound
from outboxkit.relay.settings import RelaySettings
from outboxkit.relay.wakeup import Wakeup

log = logging.getLogger("outboxkit.relay")

GAUGE_INTERVAL = 5.0


class Relay:
    """Forwards committed outbox messages of one database to one broker, at least once.

    `await Relay(settings).run()` runs until `stop()` is called (or SIGTERM via the CLI).
    """

    def __init__(
        self,
        settings: RelaySettings,
        *,
        publisher: Publisher | None = None,
        metrics: RelayMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.publisher = publisher or create_publisher(settings.broker_url)
        self.metrics = metrics or RelayMetrics()
        self.queries = bound(settings.schema)
        self.ownership = PartitionOwnership(
            self.queries, settings.relay_id, settings.schema, settings.relay_ttl
        )
        self.wakeup = Wakeup(
            settings.dsn,
            notify_channel(settings.schema),
            application_name=f"outboxkit-listen {settings.relay_id}"[:63],
        )
        self.cycle = Cycle(
            settings, self.queries, self.publisher, self.metrics, CrashPoints(settings.crash_at)
        )
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._stopping = asyncio.Event()
        self._outages = 0
        self.last_outage: str | None = None
        self._failures = 0  # statements failed in a row on a live connection
        self.last_failure: str | None = None
        self.last_tick = 0.0
        self._next_tick = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the database and the broker; raise a typed error if either is down.

        Raises `SchemaNotMigrated` if the schema misses a migration this outboxkit ships.
        """
        self._conn = await self._connect()
        try:
            await require_current(self._conn, self.settings.schema)
            await self.publisher.connect()
        except BaseException:
            await self._conn.close()
            self._conn = None
            raise
        self.wakeup.start()

    async def run(self) -> None:
        """Start, then relay until `stop()`; releases partitions and connections at the end."""
        if self._conn is None:
            await self.start()
        try:
            while not self._stopping.is_set():
                try:
                    await self._loop()
                except psycopg.Error as exc:
                    # The connection's state says what happened, not the exception's class:
                    # an OperationalError may be a statement timeout or an index row too
                    # large, on a connection that is fine.
                    if self._conn is None or connection_lost(self._conn):
                        log.warning(
                            "database connection lost (%s); reconnecting", type(exc).__name__
                        )
                        await self._reconnect()
                    else:
                        await self._statement_failed(self._conn, exc)
        finally:
            await self._shutdown()

    def stop(self) -> None:
        """Stop claiming; the batch in flight is finished (published and committed) first."""
        self._stopping.set()
        self.wakeup.poke()

    # -- the loop --------------------------------------------------------------------------

    async def _loop(self) -> None:
        conn = self._require_conn()
        self._next_tick = next_gauges = 0.0
        while not self._stopping.is_set():
            await self._tick_if_due(conn)
            now = time.monotonic()
            if now >= next_gauges:
                await self._refresh_gauges(conn)
                next_gauges = now + GAUGE_INTERVAL
            busy = await self._sweep(conn)
            if self._outages:
                await self._pause(message_backoff(self._outages, 0.2, 5.0))
            elif not busy:
                await self.wakeup.wait(
                    min(self.settings.poll_interval, max(self._next_tick - time.monotonic(), 0.0))
                )

    async def _tick_if_due(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Heartbeat and rebalance partitions if the heartbeat interval has passed.

        Also called between the partitions of a sweep: a sweep over a big backlog can take
        longer than the relay TTL, and a relay that only heartbeats between sweeps is pruned
        by its peers while alive, reports its database down, and keeps relays that join
        waiting for their partitions until it has drained its whole share.
        """
        now = time.monotonic()
        if now < self._next_tick:
            return
        await self.ownership.tick(conn)
        self.last_tick = now
        self.metrics.set_owned_partitions(len(self.ownership.owned))
        self._next_tick = now + self.settings.heartbeat_interval

    async def _sweep(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """One claim cycle over every owned partition; True if the batch came back full."""
        await self._tick_if_due(conn)
        owned = sorted(self.ownership.owned)
        if not owned or self._stopping.is_set():
            return False
        result = await self.cycle.run(conn, owned)
        if self._failures:
            log.info("database statements succeed again")
        self._failures, self.last_failure = 0, None
        if result.outage:
            self._outages += 1
            if self.last_outage is None:
                log.warning("broker unavailable: %s; pausing", result.outage)
            self.last_outage = result.outage
            return False
        if self._outages:
            log.info("broker reachable again")
        self._outages, self.last_outage = 0, None
        return result.claimed >= self.settings.batch_size

    async def _statement_failed(
        self, conn: psycopg.AsyncConnection[Any], exc: psycopg.Error
    ) -> None:
        """A statement failed on a live connection (a settle refused, a statement timeout).

        Its transaction was rolled back, so the claimed rows are in place, unchanged: the
        batch is claimed and published again after a backoff that grows with every failure
        in a row. Neither an exit (a restart would loop through the same batch) nor a
        reconnect (nothing is wrong with the connection) nor an immediate retry (a spin).
        """
        if conn.info.transaction_status != TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                await conn.rollback()
        self._failures += 1
        self.last_failure = statement_error(exc)
        delay = message_backoff(
            self._failures, self.settings.backoff_base, self.settings.backoff_max
        )
        log.error(
            "a database statement failed (%s); the batch stays in place, retrying in %.1fs "
            "(failure %d in a row)",
            self.last_failure,
            delay,
            self._failures,
        )
        await self._pause(delay)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _refresh_gauges(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.transaction():
            backlog = await (await conn.execute(self.queries["backlog"])).fetchone()
            dead = await (await conn.execute(self.queries["dead_letter_count"])).fetchone()
        assert backlog is not None and dead is not None
        self.metrics.set_backlog(int(backlog[0]))
        self.metrics.set_oldest_pending_age(float(backlog[1]))
        self.metrics.set_dead_letters(int(dead[0]))

    # -- connections -----------------------------------------------------------------------

    def _require_conn(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None:
            raise DatabaseUnavailable("the relay is not connected")
        return self._conn

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        name = f"outboxkit-relay {self.settings.relay_id}"[:63]
        return await aconnect(self.settings.dsn, application_name=name)

    async def _reconnect(self) -> None:
        self.ownership.forget()  # the session, and its advisory locks, are gone
        self.metrics.set_owned_partitions(0)
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None
        retrying = AsyncRetrying(
            wait=wait_random_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception_type(DatabaseUnavailable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if self._stopping.is_set():
                    return
                self._conn = await self._connect()
        log.info("database reconnected")

    async def _shutdown(self) -> None:
        await self.wakeup.stop()
        if self._conn is not None and not self._conn.closed:
            with contextlib.suppress(psycopg.Error):
                await self.ownership.release_all(self._conn)
            await self._conn.close()
        self._conn = None
        await self.publisher.close()

    # -- health ----------------------------------------------------------------------------

    def health(self) -> dict[str, str]:
        """What /readyz reports: database, broker and partitions."""
        alive = (
            self._conn is not None
            and not self._conn.closed
            and time.monotonic() - self.last_tick < 3 * self.settings.heartbeat_interval + 5
        )
        database = "ok" if alive else "down"
        if alive and self.last_failure is not None:
            database = f"failing: {self.last_failure}"
        return {
            "database": database,
            "broker": "ok" if self.last_outage is None else f"down: {self.last_outage}",
            "partitions": f"{len(self.ownership.owned)} of {self.ownership.partitions} owned",
        }


async def run_relay(settings: RelaySettings) -> None:
    """Run a relay with `settings` until cancelled."""
    relay = Relay(settings)
    await relay.run()
