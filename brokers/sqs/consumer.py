"""Amazon SQS consumer (aiobotocore): long polling, deletes after commit, visibility heartbeat.

URL and options: the publisher's (see `sqs.options`): the queue (`queue=`) or the per-topic
queues (`queue_prefix=`), `fifo`, `create`, `visibility=30`, `rescan=30`, `timeout`,
`connect_timeout`, credentials and endpoint.

SQS has no consumer groups: a queue's messages are shared out among whoever receives from it.
So one queue (or one `queue_prefix`) serves ONE inbox consumer, whatever its name (the
`Subscription.consumer` name is only logged); several processes of that consumer share the
work. A message whose topic matches none of the handler patterns is deleted here (logged at
debug): it was not meant for this consumer. With `queue_prefix`, the consumer reads the queue
of each exact pattern (created if `create=true`) and, for a pattern with `*`, every queue
whose name starts with the sanitized text before the `*` (listed on connect, then every
`rescan` seconds and after a failure), so the queues of topics published later are found.

fetch(max_messages, wait): ReceiveMessage with WaitTimeSeconds = min(wait, 20) (whole seconds;
a fraction of a second is slept when nothing came) and at most 10 messages per call; when a
call comes back full, more calls (without waiting) fill up to `max_messages`, several at once
on a standard queue, one after the other on a FIFO queue. Several queues are first polled
without waiting, then long-polled together if all were empty. `Delivery.attempt` is SQS's
ApproximateReceiveCount.

ack(): the message is deleted: queued at once, and sent in DeleteMessageBatch calls (10 per
call) before the next receive, or by a background task; `close()` sends what is left. The
runner acks only after its transaction committed; a delete that fails is logged and the
message comes back after its visibility timeout, a redelivery the inbox recognises.
nak(delay): ChangeMessageVisibility(delay) (at most 12 hours): SQS redelivers after `delay`.

Visibility heartbeat: a received message is invisible to other receivers for `visibility`
seconds. While a delivery is neither acked nor naked, a background task extends it (by
`visibility`, with ChangeMessageVisibilityBatch) whenever less than half of it is left, so a
slow handler does not get its message redelivered to someone else meanwhile. SQS caps the
total at 12 hours since the message was received; the heartbeat stops with `close()`.

Outages: every call has a timeout; while SQS cannot be reached `fetch` logs once, sleeps
`wait` seconds and returns []. Queues that vanished (a restarted local server) are looked up
(or created) again on the next fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from outboxkit.brokers.consuming import Delivery, Subscription
from outboxkit.brokers.sqs import options as sqs_url
from outboxkit.brokers.sqs.options import BATCH_ENTRIES, MAX_VISIBILITY, SqsOptions
from outboxkit.outbox.envelope import Malformed, MalformedEnvelope, native_text, salvage
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError, InvalidMessage
from outboxkit.outbox.message import Message
from outboxkit.outbox.topics import matches_any

_log = logging.getLogger(__name__)

MAX_WAIT = 20  # SQS's longest long poll, in seconds
_MAX_CALLS = 32  # receive calls at once
_TOP_UP_PAGES = 5  # extra receive calls per queue and round, standard queues
_FAILURES = (TimeoutError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


def parse_url(url: str) -> SqsOptions:
    """`SqsOptions` from a broker URL; `ConfigurationError` for anything malformed."""
    return sqs_url.parse_url(url)


def wanted(patterns: Sequence[str], topic: str) -> bool:
    """Whether a handler pattern matches `topic`."""
    return matches_any(patterns, topic)


def decode_sqs(raw: Mapping[str, Any]) -> Message | Malformed:
    """The message a publisher sent in a received SQS message (as ReceiveMessage returns
    it: `Body`, `MessageAttributes`), or why it is broken."""
    body = raw.get("Body")
    body = body if isinstance(body, str) else ""
    attribute = sqs_url.attribute_value(raw.get("MessageAttributes"))
    try:
        return sqs_url.decode(body, attribute)
    except InvalidMessage as exc:
        if isinstance(exc, MalformedEnvelope):
            return exc.malformed
        return _salvage(str(exc), body, attribute)
    except (ValueError, RecursionError) as exc:  # e.g. JSON nested too deep, a lone surrogate
        return _salvage(f"unreadable {sqs_url.ATTRIBUTE!r} envelope ({type(exc).__name__})", body)


def _salvage(reason: str, body: str, attribute: str | None = None) -> Malformed:
    """What an envelope `sqs_url.decode` could not read still tells (its id, if any)."""
    payload = body.encode("utf-8", "surrogatepass")
    envelope: Any = None
    if attribute is not None:
        with contextlib.suppress(ValueError, RecursionError):
            envelope = json.loads(attribute)
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    if not isinstance(headers, Mapping):
        return Malformed(reason, payload)
    text = {native_text(k): native_text(v) for k, v in headers.items()}
    return salvage(text, payload, reason)


# -- deliveries ----------------------------------------------------------------------------


@dataclass(eq=False)
class SqsDelivery:
    """A received SQS message and its decoded envelope."""

    consumer: SqsConsumer = field(repr=False)
    queue_url: str
    receipt: str = field(repr=False)
    message: Message | None
    malformed: Malformed | None
    attempt: int
    visible_until: float = 0.0  # monotonic time at which SQS may hand it out again
    settled: bool = False

    async def ack(self) -> None:
        """Delete the message (queued: sent before the next receive, or soon after)."""
        if self.settled:
            return
        self.consumer._settle(self)
        self.consumer._deletes.add(self.queue_url, self.receipt)

    async def nak(self, delay: float) -> None:
        """Make the message visible again after `delay` seconds."""
        if not self.settled:
            await self.consumer._nak(self, delay)


# -- deletes -------------------------------------------------------------------------------


class _Deletes:
    """Receipt handles to delete, sent in DeleteMessageBatch calls."""

    def __init__(self, consumer: SqsConsumer) -> None:
        self.consumer = consumer
        self.pending: dict[str, list[str]] = {}
        self.task: asyncio.Task[None] | None = None

    def add(self, queue_url: str, receipt: str) -> None:
        self.pending.setdefault(queue_url, []).append(receipt)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())

    async def drain(self) -> None:
        """Wait until everything queued so far was sent (or failed)."""
        while self.task is not None and not self.task.done():
            await asyncio.shield(self.task)

    async def _run(self) -> None:
        await asyncio.sleep(0)  # let the acks of one batch gather
        while self.pending:
            pending, self.pending = self.pending, {}
            calls = [
                self._delete(url, receipts[i : i + BATCH_ENTRIES])
                for url, receipts in pending.items()
                for i in range(0, len(receipts), BATCH_ENTRIES)
            ]
            await asyncio.gather(*calls)

    async def _delete(self, url: str, receipts: list[str]) -> None:
        consumer = self.consumer
        entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)]
        try:
            async with asyncio.timeout(consumer._deadline(0)):
                response = await consumer._require_client().delete_message_batch(
                    QueueUrl=url, Entries=entries
                )
        except (*_FAILURES, RuntimeError) as exc:
            _log.warning(
                "could not delete %d SQS message(s) from %s (%s); they will be redelivered",
                len(receipts),
                sqs_url.queue_name_of(url),
                consumer._why(exc),
            )
            return
        for failure in response.get("Failed") or ():
            _log.debug("SQS did not delete a message: %s", failure.get("Code"))


# -- the consumer --------------------------------------------------------------------------


class SqsConsumer:
    """Receives one inbox consumer's messages from its SQS queue(s)."""

    def __init__(self, options: SqsOptions, subscription: Subscription) -> None:
        self.options = options
        self.subscription = subscription
        self.patterns = tuple(subscription.topics)
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._queues: list[str] = []  # queue URLs
        self._scanned = 0.0  # monotonic time of the last queue lookup
        self._stale = True  # look the queues up again before the next receive
        self._failing = False  # a failed fetch was logged; quiet until one succeeds
        self._rotation = 0
        self._in_flight: dict[int, SqsDelivery] = {}
        self._visibility_lock = asyncio.Lock()
        self._heartbeat: asyncio.Task[None] | None = None
        self._deletes = _Deletes(self)

    # -- connecting ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Create the client, look the queues up (creating them if allowed), start the heartbeat."""
        if self._client is not None:
            return
        o = self.options
        stack = contextlib.AsyncExitStack()
        try:
            creating = get_session().create_client(
                "sqs",
                config=_config(o, read_timeout=o.timeout + MAX_WAIT),
                **o.client_kwargs(),
            )
            self._client = await stack.enter_async_context(creating)
        except botocore.exceptions.BotoCoreError as exc:  # no region, unknown profile...
            await stack.aclose()
            raise ConfigurationError(f"SQS client for {o.display}: {o.scrub(exc)}") from None
        self._stack = stack
        try:
            await self._lookup()
        except _FAILURES as exc:
            await self.close()
            raise BrokerUnavailable(f"cannot reach SQS at {o.display}: {self._why(exc)}") from None
        except ConfigurationError:
            await self.close()
            raise
        self._heartbeat = asyncio.create_task(self._extend_loop())
        _log.info(
            "consuming SQS queue(s) %s at %s for %s",
            ", ".join(sqs_url.queue_name_of(u) for u in self._queues) or "(none yet)",
            o.display,
            self.subscription.consumer,
        )

    def _require_client(self) -> Any:
        if self._client is None:
            raise RuntimeError("SqsConsumer used before connect() or after close()")
        return self._client

    async def _lookup(self) -> None:
        """Find the queue URLs to receive from (creating missing queues if allowed)."""
        o, client = self.options, self._require_client()
        async with asyncio.timeout(2 * self._deadline(0)):  # a lookup is one to three calls
            if o.queue_prefix is None:
                url = await sqs_url.ensure_queue(client, o.queue, o)
                if url is None:
                    raise ConfigurationError(
                        f"SQS queue {o.queue} does not exist at {o.display} and create=false "
                        "(start the relay first, or allow create)"
                    )
                queues = [url]
            else:
                queues = await self._lookup_prefixed(client)
        self._queues, self._scanned, self._stale = queues, time.monotonic(), False

    async def _lookup_prefixed(self, client: Any) -> list[str]:
        o = self.options
        assert o.queue_prefix is not None
        found: dict[str, None] = {}
        for pattern in self.patterns:
            literal, star, _ = pattern.partition("*")
            if not star:
                url = await sqs_url.ensure_queue(client, o.queue_for(literal), o)
                if url is not None:
                    found[url] = None
                continue
            prefix = sqs_url.name_prefix(o.queue_prefix, literal, fifo=o.fifo)
            for url in await _list_queues(client, prefix):
                if sqs_url.queue_name_of(url).endswith(sqs_url.FIFO_SUFFIX) == o.fifo:
                    found[url] = None
        return list(found)

    # -- fetching ------------------------------------------------------------------------

    async def fetch(self, max_messages: int, wait: float) -> list[Delivery]:
        """Up to `max_messages` deliveries; [] after about `wait` seconds or while SQS is down."""
        self._require_client()
        started = time.monotonic()
        await self._deletes.drain()  # acks first: in a FIFO queue they unblock the next ones
        deliveries: list[Delivery] = []
        try:
            if self._stale or (
                self.options.queue_prefix is not None
                and started - self._scanned >= self.options.rescan
            ):
                await self._lookup()
            if self._queues:
                deliveries = await self._receive(max(1, max_messages), wait)
        except (*_FAILURES, ConfigurationError) as exc:
            self._fetch_failed(exc)
        else:
            if self._failing:
                self._failing = False
                _log.info("receiving from SQS at %s again", self.options.display)
        if not deliveries:
            left = wait - (time.monotonic() - started)
            if left > 0:
                await asyncio.sleep(left)
        return deliveries

    async def _receive(self, budget: int, wait: float) -> list[Delivery]:
        queues = self._rotated()
        long_poll = min(MAX_WAIT, int(wait))
        first_wait = long_poll if len(queues) == 1 else 0
        jobs = _plan(queues, budget, spread=True)
        deliveries: list[Delivery] = []
        errors: list[BaseException] = []
        polled_long = first_wait > 0 or long_poll == 0
        poll = first_wait
        while jobs:
            pages = await asyncio.gather(
                *(self._page(url, n, poll) for url, n in jobs), return_exceptions=True
            )
            full: list[str] = []
            for (url, n), page in zip(jobs, pages, strict=True):
                if isinstance(page, BaseException):
                    if not isinstance(page, _FAILURES):
                        raise page
                    errors.append(page)
                    continue
                deliveries += page
                if len(page) == n:
                    full.append(url)
            left = budget - len(deliveries)
            if not deliveries and not errors and not polled_long:
                # several queues, all empty right now: wait on all of them together
                jobs, poll, polled_long = _plan(queues, budget, spread=True), long_poll, True
                continue
            pages_per_queue = 1 if self.options.fifo else _TOP_UP_PAGES
            jobs, poll = _plan(full, left, per_queue=pages_per_queue), 0
        if errors:
            if not deliveries:
                raise errors[0]
            # Keep what the other calls brought; look the queues up again next time.
            self._stale = True
            _log.debug("an SQS receive failed (%s)", self._why(errors[0]))
        return deliveries

    def _rotated(self) -> list[str]:
        queues = self._queues
        self._rotation = (self._rotation + 1) % len(queues)
        return queues[self._rotation :] + queues[: self._rotation]

    async def _page(self, url: str, count: int, wait: int) -> list[Delivery]:
        """One ReceiveMessage call."""
        o = self.options
        received_at = time.monotonic()
        try:
            async with asyncio.timeout(self._deadline(wait)):
                response = await self._require_client().receive_message(
                    QueueUrl=url,
                    MaxNumberOfMessages=count,
                    WaitTimeSeconds=wait,
                    VisibilityTimeout=o.visibility,
                    MessageAttributeNames=["All"],
                    MessageSystemAttributeNames=["ApproximateReceiveCount"],
                )
        except botocore.exceptions.ClientError as exc:
            if sqs_url.classify(exc) == "missing":
                self._stale = True
            raise
        deliveries: list[Delivery] = []
        for raw in response.get("Messages") or ():
            delivery = self._delivery(url, raw, received_at + o.visibility)
            if delivery.message is not None and not wanted(self.patterns, delivery.message.topic):
                _log.debug(
                    "consumer %s: no handler for topic %s; deleted",
                    self.subscription.consumer,
                    delivery.message.topic,
                )
                await delivery.ack()
                continue
            deliveries.append(delivery)
        return deliveries

    def _delivery(self, url: str, raw: dict[str, Any], visible_until: float) -> SqsDelivery:
        found = decode_sqs(raw)
        malformed = None
        if isinstance(found, Malformed):
            where = f"(SQS message {raw.get('MessageId')} in {sqs_url.queue_name_of(url)})"
            malformed = found.at(where)
        delivery = SqsDelivery(
            consumer=self,
            queue_url=url,
            receipt=str(raw["ReceiptHandle"]),
            message=None if isinstance(found, Malformed) else found,
            malformed=malformed,
            attempt=_attempt(raw),
            visible_until=visible_until,
        )
        self._in_flight[id(delivery)] = delivery
        return delivery

    def _fetch_failed(self, exc: BaseException) -> None:
        self._stale = True  # look the queues up again: they may have vanished
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        _log.log(
            level,
            "receiving from SQS at %s failed (%s); retrying",
            self.options.display,
            self._why(exc),
        )

    # -- settling ------------------------------------------------------------------------

    def _settle(self, delivery: SqsDelivery) -> None:
        delivery.settled = True
        self._in_flight.pop(id(delivery), None)

    async def _nak(self, delivery: SqsDelivery, delay: float) -> None:
        seconds = min(MAX_VISIBILITY, max(0, math.ceil(delay)))
        async with self._visibility_lock:  # so that no heartbeat overrides the delay
            self._settle(delivery)
            try:
                async with asyncio.timeout(self._deadline(0)):
                    await self._require_client().change_message_visibility(
                        QueueUrl=delivery.queue_url,
                        ReceiptHandle=delivery.receipt,
                        VisibilityTimeout=seconds,
                    )
            except (*_FAILURES, RuntimeError) as exc:
                _log.warning(
                    "could not nak an SQS message (%s); it comes back when its visibility ends",
                    self._why(exc),
                )

    # -- the visibility heartbeat --------------------------------------------------------

    async def _extend_loop(self) -> None:
        tick = max(0.2, self.options.visibility / 4)
        while True:
            await asyncio.sleep(tick)
            try:
                await self._extend_due()
            except Exception:  # noqa: BLE001 - the heartbeat must outlive a bug: logged, next tick
                _log.exception("the SQS visibility heartbeat failed")

    async def _extend_due(self) -> None:
        """Extend the deliveries in flight with less than half their visibility left."""
        visibility = self.options.visibility
        async with self._visibility_lock:
            now = time.monotonic()
            due: dict[str, list[SqsDelivery]] = {}
            for delivery in self._in_flight.values():
                if delivery.visible_until - now < visibility / 2:
                    due.setdefault(delivery.queue_url, []).append(delivery)
            calls = [
                self._extend(url, batch[i : i + BATCH_ENTRIES])
                for url, batch in due.items()
                for i in range(0, len(batch), BATCH_ENTRIES)
            ]
            await asyncio.gather(*calls)

    async def _extend(self, url: str, batch: list[SqsDelivery]) -> None:
        visibility = self.options.visibility
        entries = [
            {"Id": str(i), "ReceiptHandle": d.receipt, "VisibilityTimeout": visibility}
            for i, d in enumerate(batch)
        ]
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._deadline(0)):
                response = await self._require_client().change_message_visibility_batch(
                    QueueUrl=url, Entries=entries
                )
        except botocore.exceptions.ClientError as exc:
            if sqs_url.classify(exc) == "missing":  # the queue is gone, and its messages
                for delivery in batch:
                    self._in_flight.pop(id(delivery), None)
            _log.warning("could not extend the visibility of SQS messages: %s", self._why(exc))
            return
        except _FAILURES as exc:
            _log.debug("could not extend the visibility of SQS messages: %s", self._why(exc))
            return
        for success in response.get("Successful") or ():
            batch[int(success["Id"])].visible_until = started + visibility
        for failure in response.get("Failed") or ():
            # Deleted meanwhile, or past SQS's 12 hours: no use trying again.
            delivery = batch[int(failure["Id"])]
            self._in_flight.pop(id(delivery), None)
            if not delivery.settled:
                _log.warning(
                    "SQS refused to extend the visibility of a message in flight (%s: %s); "
                    "it may be redelivered",
                    failure.get("Code"),
                    failure.get("Message", ""),
                )

    # -- closing -------------------------------------------------------------------------

    async def close(self) -> None:
        """Send pending deletes, stop the heartbeat, close the client; safe to call twice."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._client is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._deadline(0)):
                    await self._deletes.drain()
        stack, self._stack, self._client = self._stack, None, None
        self._in_flight.clear()
        self._queues, self._stale = [], True
        if stack is not None:
            try:
                async with asyncio.timeout(5):
                    await stack.aclose()
            except (TimeoutError, OSError, botocore.exceptions.BotoCoreError) as exc:
                _log.debug("closing the SQS client: %r", exc)

    # -- helpers -------------------------------------------------------------------------

    def _deadline(self, wait: float) -> float:
        # botocore's own timeouts fire first; this guards against anything they miss.
        return wait + self.options.timeout + self.options.connect_timeout + 1

    def _why(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return "no answer in time"
        if isinstance(exc, botocore.exceptions.ClientError):
            return self.options.scrub(sqs_url.describe(exc))
        return self.options.scrub(f"{type(exc).__name__}: {exc}")


def _config(options: SqsOptions, read_timeout: float) -> AioConfig:
    return AioConfig(
        connect_timeout=options.connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=64,
        user_agent_extra="outboxkit",
    )


async def _list_queues(client: Any, prefix: str) -> list[str]:
    urls: list[str] = []
    kwargs: dict[str, Any] = {"QueueNamePrefix": prefix, "MaxResults": 1000}
    while True:
        response = await client.list_queues(**kwargs)
        urls += response.get("QueueUrls") or []
        token = response.get("NextToken")
        if not token:
            return urls
        kwargs["NextToken"] = token


def _plan(
    queues: Sequence[str], budget: int, *, spread: bool = False, per_queue: int = 1
) -> list[tuple[str, int]]:
    """Receive calls (queue URL, count) asking for at most `budget` messages in all.

    `spread`: one call per queue with the budget shared out evenly (at least one message
    each, so with more queues than budget only the first `budget` queues are asked).
    Otherwise up to `per_queue` calls of 10 per queue, in turn.
    """
    jobs: list[tuple[str, int]] = []
    if spread:
        share = min(BATCH_ENTRIES, max(1, budget // max(1, len(queues))))
        for url in queues[: min(budget, _MAX_CALLS)]:
            jobs.append((url, share))
        return jobs
    for _ in range(per_queue):
        for url in queues:
            if budget <= 0 or len(jobs) >= _MAX_CALLS:
                return jobs
            count = min(BATCH_ENTRIES, budget)
            jobs.append((url, count))
            budget -= count
    return jobs


def _attempt(raw: dict[str, Any]) -> int:
    try:
        return max(1, int((raw.get("Attributes") or {})["ApproximateReceiveCount"]))
    except (KeyError, TypeError, ValueError):
        return 1


def create(url: str, subscription: Subscription) -> SqsConsumer:
    """A consumer for an `sqs://` URL (see the module docstring and `sqs.options`)."""
    options = parse_url(url)
    if not subscription.topics:
        raise ConfigurationError(
            f"consumer {subscription.consumer!r} has no handlers: nothing to subscribe to"
        )
    return SqsConsumer(options, subscription)
