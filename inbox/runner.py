"""The consumer runner: broker deliveries in, effectively exactly once out.

Idempotent mode: for each delivery, one transaction (dedup row + handler), commit, then ack.
A handler error rolls back and the broker redelivers with backoff; after `max_attempts`
deliveries the message is dead-lettered (with its dedup key) and acked.

Durable mode: deliveries are stored (dedup on insert), committed, then acked at once; inbox
workers handle the stored rows per key in order, with retries and dead letters.

Either mode: a delivery with a broken envelope (`Delivery.malformed`) is dead-lettered at
once, without a dedup row, if it carries a valid id; otherwise it is logged, counted
(`malformed_dropped`) and dropped. Either way it is acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from inbox.consumers import Consumer, Delivery, Malformed, Subscription, create_consumer
from inbox.inbox import Inbox, NoHandler
from inbox.retention import prune
from inbox.settings import ConsumerSettings, Mode
from inbox.slots import Slot
from outbox.backoff import message_backoff
from outbox.errors import DatabaseUnavailable
from outbox.faults import CrashPoints
from outbox.limits import clean_text

log = logging.getLogger("outboxkit.inbox")

DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailable)


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
        # Deliveries whose envelope is broken: kept as dead letters (they had an id), or
        # dropped (nothing identified them).
        self.malformed_dead_lettered = 0
        self.malformed_dropped = 0

    def stop(self) -> None:
        """Stop fetching; deliveries in flight are finished and acked first."""
        self._stopping.set()

    async def run(self) -> None:
        """Connect, then consume until `stop()`."""
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
                    log.warning("database unavailable (%s); redelivering", type(exc).__name__)
                    await slot.reset()
                    for delivery in deliveries:
                        with contextlib.suppress(Exception):
                            await delivery.nak(1.0)
                    await self._sleep(1.0)
        finally:
            await slot.reset()

    async def _handle(self, slot: Slot, deliveries: list[Delivery]) -> None:
        """Handle a fetched batch in one transaction, then ack, retry or dead-letter each."""
        valid = [d for d in deliveries if d.message is not None]
        if valid:
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
        await self._bury_malformed(slot, [d for d in deliveries if d.message is None])

    async def _failed(self, slot: Slot, delivery: Delivery, exc: Exception) -> None:
        message = delivery.message
        assert message is not None
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, NoHandler) or delivery.attempt >= self.settings.max_attempts:
            await slot.bury(message, delivery.attempt, error)
            self.dead_lettered += 1
            log.error("message %s dead-lettered: %s", message.message_id, error)
            await delivery.ack()
            return
        delay = message_backoff(
            delivery.attempt, self.settings.backoff_base, self.settings.backoff_max
        )
        log.warning(
            "message %s failed (attempt %d): %s", message.message_id, delivery.attempt, error
        )
        await delivery.nak(delay)

    async def _store(self, slot: Slot, deliveries: list[Delivery]) -> None:
        valid = [d for d in deliveries if d.message is not None]
        if valid:
            await slot.store([d.message for d in valid if d.message is not None])
        self.crash.reached("after_store_commit")
        for delivery in valid:
            await delivery.ack()
        await self._bury_malformed(slot, [d for d in deliveries if d.message is None])

    async def _bury_malformed(self, slot: Slot, deliveries: list[Delivery]) -> None:
        """Dead-letter the malformed deliveries that carry an id, count and drop the others,
        then ack them all.

        In a transaction of their own, after the batch's well-formed messages were settled:
        nothing here can hold those back or roll them back. A lost connection leaves these
        to be redelivered; a refused statement (nothing of a `Malformed` should be refused)
        drops them rather than stopping the runner.
        """
        if not deliveries:
            return
        found = [_malformed(d) for d in deliveries]
        buried = {id(m) for m in found if m.message_id is not None}
        if buried:
            try:
                await slot.bury_malformed([m for m in found if id(m) in buried])
            except DB_ERRORS as exc:
                log.warning(
                    "database unavailable (%s); redelivering malformed deliveries",
                    type(exc).__name__,
                )
                await slot.reset()
                for delivery in deliveries:
                    with contextlib.suppress(Exception):
                        await delivery.nak(1.0)
                return
            except psycopg.Error as exc:
                log.error("could not dead-letter malformed deliveries: %s", clean_text(exc))
                buried = set()
        for delivery, malformed in zip(deliveries, found, strict=True):
            if id(malformed) in buried:
                self.malformed_dead_lettered += 1
                log.error(
                    "malformed delivery %s dead-lettered: %s", malformed.message_id, malformed
                )
            else:
                self.malformed_dropped += 1
                log.error("dropping a malformed delivery (no usable message id): %s", malformed)
            await delivery.ack()

    # -- durable workers -------------------------------------------------------------------

    async def _durable_loop(self) -> None:
        slot = Slot(self.inbox, self.settings)
        try:
            while not self._stopping.is_set():
                try:
                    result = await slot.process_stored()
                except DB_ERRORS as exc:
                    log.warning("database unavailable (%s); retrying", type(exc).__name__)
                    await slot.reset()
                    await self._sleep(1.0)
                    continue
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
                log.warning("prune failed (%s)", type(exc).__name__)
            await self._sleep(self.settings.prune_interval)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


def _malformed(delivery: Delivery) -> Malformed:
    found = delivery.malformed
    if isinstance(found, Malformed):
        return found
    return Malformed(clean_text(found or "the adapter gave no message and no reason"))
