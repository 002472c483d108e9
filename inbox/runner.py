"""The consumer runner: broker deliveries in, effectively exactly once out.

Idempotent mode: for each delivery, one transaction (dedup row + handler), commit, then ack.
A handler error rolls back and the broker redelivers with backoff; after `max_attempts`
deliveries the message is dead-lettered (with its dedup key) and acked.

Durable mode: deliveries are stored (dedup on insert), committed, then acked at once; inbox
workers handle the stored rows per key in order, with retries and dead letters.

A database error is a lost connection only when the connection says so (closed or broken):
then the slot reconnects and the batch is redelivered. Any other failed statement (a row
over a CHECK limit, a statement timeout) fails its message where it can be told apart (a
handler, a store, a dead letter that cannot be written: retried with backoff) and its batch
otherwise (rolled back, redelivered or retried with growing backoff): never the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from outboxkit.brokers import Consumer, Delivery, Subscription, create_consumer
from outboxkit.inbox import malformed
from outboxkit.inbox.failures import NoHandler, error_text
from outboxkit.inbox.inbox import Inbox
from outboxkit.inbox.retention import prune
from outboxkit.inbox.settings import ConsumerSettings, Mode
from outboxkit.inbox.slots import Slot
from outboxkit.migrations.current import require_current
from outboxkit.outbox.backoff import message_backoff
from outboxkit.outbox.db import aconnect, statement_error
from outboxkit.outbox.errors import DatabaseUnavailable
from outboxkit.outbox.faults import CrashPoints

log = logging.getLogger("outboxkit.inbox")

DB_ERRORS = (psycopg.Error, DatabaseUnavailable)
# What one statement's failure looks like (ValueError: text psycopg cannot even encode, a
# lone surrogate); a psycopg error on a lost connection is not one, and is re-raised.
STATEMENT_ERRORS = (psycopg.Error, ValueError)


class ConsumerRunner:
    """Runs an `Inbox` against a broker until `stop()`."""

    def __init__(
        self, inbox: Inbox, settings: ConsumerSettings, *, consumer: Consumer | None = None
    ) -> None:
        inbox.is_async  # noqa: B018 - refuse mixed sync/async handlers up front
        self.inbox = inbox
        self.settings = settings
        subscription = Subscription(inbox.consumer, inbox.registry.patterns())
        self.consumer = consumer or create_consumer(settings.broker_url, subscription)
        self.durable = settings.mode is Mode.DURABLE or self.consumer is None
        self._stopping = asyncio.Event()
        self.crash = CrashPoints(settings.crash_at)
        self.handled = 0
        self.duplicates = 0
        self.dead_lettered = 0
        self.malformed_dead_lettered = 0  # broken envelopes with an id
        self.malformed_dropped = 0  # broken envelopes nothing identified

    def stop(self) -> None:
        """Stop fetching; deliveries in flight are finished and acked first."""
        self._stopping.set()

    async def run(self) -> None:
        """Connect, then consume until `stop()`.

        Raises `SchemaNotMigrated` first if the schema misses a migration this outboxkit ships.
        """
        async with await aconnect(self.settings.dsn) as conn:
            await require_current(conn, self.inbox.schema)
        if self.consumer is not None:
            await self.consumer.connect()
        tasks = []
        try:
            if self.consumer is not None:
                fetchers = 1 if self.durable else self.settings.concurrency
                tasks += [
                    asyncio.create_task(self._fetch_loop(self.consumer)) for _ in range(fetchers)
                ]
            if self.durable:
                tasks += [
                    asyncio.create_task(self._durable_loop())
                    for _ in range(self.settings.concurrency)
                ]
            if self.settings.prune_interval > 0:
                tasks.append(asyncio.create_task(self._prune_loop()))
            stopping = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            for task in done:
                if task is not stopping and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self._stopping.set()
            try:
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:  # also when a drain that took too long cancels us here
                if self.consumer is not None:
                    await self.consumer.close()

    # -- broker deliveries -----------------------------------------------------------------

    async def _fetch_loop(self, consumer: Consumer) -> None:
        slot = Slot(self.inbox, self.settings)
        failures = 0  # batches failed in a row on a live connection
        try:
            while not self._stopping.is_set():
                deliveries = await consumer.fetch(
                    self.settings.batch_size, self.settings.fetch_wait
                )
                if not deliveries:
                    continue
                try:
                    if self.durable:
                        await self._store(slot, deliveries)
                    else:
                        await self._handle(slot, deliveries)
                except DB_ERRORS as exc:
                    failures, delay = await self._failed_batch(
                        slot, exc, failures, "redelivering", "the batch is redelivered in"
                    )
                    for delivery in deliveries:
                        with contextlib.suppress(Exception):
                            await delivery.nak(delay)
                    await self._sleep(delay)
                else:
                    failures = 0
        finally:
            await slot.reset()

    async def _handle(self, slot: Slot, deliveries: list[Delivery]) -> None:
        """Handle a fetched batch in one transaction, then ack, retry or dead-letter each."""
        valid = [d for d in deliveries if d.message is not None]
        if valid:
            await self._handle_valid(slot, valid)
        await self._settle_malformed(slot, [d for d in deliveries if d.message is None])

    async def _handle_valid(self, slot: Slot, valid: list[Delivery]) -> None:
        results = await slot.handle_many(
            [d.message for d in valid if d.message is not None],
            cautious=any(d.attempt > 1 for d in valid),
        )
        self.crash.reached("after_handle_commit")
        for delivery, result in zip(valid, results, strict=True):
            if isinstance(result, Exception):
                await self._failed(slot, delivery, result)
                continue
            if result:
                self.handled += 1
            else:
                self.duplicates += 1
            await delivery.ack()  # only now: the inbox transaction has committed

    async def _failed(self, slot: Slot, delivery: Delivery, exc: Exception) -> None:
        message = delivery.message
        assert message is not None
        error = error_text(exc)
        delay = self._backoff(delivery.attempt)
        if isinstance(exc, NoHandler) or delivery.attempt >= self.settings.max_attempts:
            try:
                await slot.bury(message, delivery.attempt, error)
            except STATEMENT_ERRORS as bury_exc:
                if isinstance(bury_exc, psycopg.Error) and slot.connection_lost():
                    raise
                # Nothing was written: the broker keeps the message and redelivers it.
                log.error(
                    "message %s cannot be dead-lettered (%s); redelivering in %.1fs",
                    message.message_id,
                    _describe(bury_exc),
                    delay,
                )
                await delivery.nak(delay)
                return
            self.dead_lettered += 1
            log.error("message %s dead-lettered: %s", message.message_id, error)
            await delivery.ack()
            return
        log.warning(
            "message %s failed (attempt %d): %s", message.message_id, delivery.attempt, error
        )
        await delivery.nak(delay)

    async def _store(self, slot: Slot, deliveries: list[Delivery]) -> None:
        valid = [d for d in deliveries if d.message is not None]
        failed: dict[int, Exception] = {}
        if valid:
            try:
                await slot.store([d.message for d in valid if d.message is not None])
            except STATEMENT_ERRORS as exc:
                if isinstance(exc, psycopg.Error) and slot.connection_lost():
                    raise
                # One message the table refuses (a key over its CHECK limit, say) must not
                # hold up the others: store each on its own, and fail only the refused.
                failed = await self._store_each(slot, valid)
        self.crash.reached("after_store_commit")
        for delivery in valid:
            refused = failed.get(id(delivery))
            if refused is None:
                await delivery.ack()
            else:
                await self._failed(slot, delivery, refused)
        await self._settle_malformed(slot, [d for d in deliveries if d.message is None])

    async def _store_each(self, slot: Slot, deliveries: list[Delivery]) -> dict[int, Exception]:
        """Store deliveries one by one; the exceptions of those refused, by `id(delivery)`."""
        refused: dict[int, Exception] = {}
        for delivery in deliveries:
            assert delivery.message is not None
            try:
                await slot.store([delivery.message])
            except STATEMENT_ERRORS as exc:
                if isinstance(exc, psycopg.Error) and slot.connection_lost():
                    raise
                refused[id(delivery)] = exc
        return refused

    async def _settle_malformed(self, slot: Slot, deliveries: list[Delivery]) -> None:
        """Either mode, after the rest of their batch: deliveries with a broken envelope
        become dead letters if they carry an id, else are counted and dropped."""
        settled = await malformed.settle(slot, deliveries)
        self.malformed_dead_lettered += settled.dead_lettered
        self.malformed_dropped += settled.dropped

    # -- durable workers -------------------------------------------------------------------

    async def _durable_loop(self) -> None:
        slot = Slot(self.inbox, self.settings)
        failures = 0  # batches failed in a row on a live connection
        try:
            while not self._stopping.is_set():
                try:
                    result = await slot.process_stored()
                except DB_ERRORS as exc:
                    # Rolled back: the claimed rows are in place for the next try.
                    failures, delay = await self._failed_batch(
                        slot, exc, failures, "retrying", "retrying the batch in"
                    )
                    await self._sleep(delay)
                    continue
                failures = 0
                self.handled += len(result.done)
                self.dead_lettered += len(result.dead)
                if result.count < self.settings.batch_size:
                    await self._sleep(self.settings.poll_interval)
        finally:
            await slot.reset()

    async def _prune_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                removed = await prune(
                    self.settings.dsn,
                    self.inbox.schema,
                    consumer=self.inbox.consumer,
                    older_than=self.settings.retention,
                )
                if removed:
                    log.info("pruned %d processed inbox rows", removed)
            except DB_ERRORS as exc:
                log.warning("prune failed (%s)", _describe(exc))
            await self._sleep(self.settings.prune_interval)

    async def _failed_batch(
        self, slot: Slot, exc: Exception, failures: int, lost_then: str, failed_then: str
    ) -> tuple[int, float]:
        """After a batch failed on a database error: reconnect if the connection was lost
        (retry in a second), else back off by the count of batches failed in a row. The new
        count and the delay; `lost_then`/`failed_then` say in the log what happens next."""
        if _lost(slot, exc):
            log.warning("database unavailable (%s); %s", type(exc).__name__, lost_then)
            await slot.reset()
            return failures, 1.0
        failures += 1
        delay = self._backoff(failures)
        log.error("a database statement failed (%s); %s %.1fs", _describe(exc), failed_then, delay)
        return failures, delay

    def _backoff(self, attempt: int) -> float:
        return message_backoff(attempt, self.settings.backoff_base, self.settings.backoff_max)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


def _lost(slot: Slot, exc: Exception) -> bool:
    """A database error that is a lost connection (not merely a failed statement)."""
    return isinstance(exc, DatabaseUnavailable) or slot.connection_lost()


def _describe(exc: Exception) -> str:
    return statement_error(exc) if isinstance(exc, psycopg.Error) else error_text(exc)
