"""NATS JetStream consumer (nats-py): one durable pull consumer per inbox consumer name.

URL: the publisher's (see `nats.publisher`: credentials, `stream=OUTBOXKIT`,
`subject_prefix=outboxkit.`, `subjects`, `create_stream=true`, `duplicate_window`, `max_age`,
`replicas`, `storage`, `timeout`, `connect_timeout`, `reconnect_wait`), plus:

- `ack_wait=30`: seconds JetStream waits for an ack before it redelivers. A fetched batch
  should be handled within it; a late ack only costs a redelivery, which the inbox absorbs.
- `max_deliver=-1`: deliveries after which JetStream gives up on a message. Keep -1: the
  runner dead-letters after `max_attempts` deliveries (JetStream's `num_delivered`); a
  smaller limit would drop a message silently before the runner could dead-letter it.

The durable consumer is named after the inbox consumer (characters other than letters,
digits, `-` and `_` become `_`, so `billing.eu` and `billing_eu` would share one: avoid
such pairs), acks explicitly and starts at the beginning of the stream.
It is created, or updated, on every connect. Its filter subjects come from the handler
patterns (`*` = any run of characters): `orders.created` -> `<prefix>orders.created`,
`orders.*` -> `<prefix>orders.>`, `*` -> `<prefix>>`; other patterns get the widest subject
covering them, and a delivery whose subject (minus the prefix) matches no pattern is acked
and dropped here (logged at debug): it was not meant for this consumer. A missing stream is
created exactly as the publisher creates it (unless `create_stream=false`: then `connect`
raises `ConfigurationError`).

Acks are plain `+ACK` publishes, not `ack_sync` round trips. At least once needs only that an
unacked message comes back, and a lost ack means exactly that: a redelivery after `ack_wait`
that the inbox recognises as a duplicate. A confirmed ack would cost a round trip per
message and buy nothing the dedup row does not already give. Pending acks are flushed on
`close()`.

Outages: after the first connect the client reconnects forever. While it is disconnected,
`fetch` waits `wait` seconds and returns nothing; a failed fetch is logged once (until one
succeeds); an ack or nak that cannot be sent is logged and the message comes back later.
After a reconnect the stream and consumer are checked again (a server that lost its store
gets them back).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from outboxkit.brokers.consuming import Delivery, Subscription
from outboxkit.brokers.nats import options as nats_url
from outboxkit.brokers.nats.options import (
    NatsConsumerOptions,
    subject_matches,
    valid_subject,
    valid_token,
)
from outboxkit.outbox.bounded import settle_within
from outboxkit.outbox.envelope import Malformed, from_headers
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError, InvalidMessage
from outboxkit.outbox.message import Message
from outboxkit.outbox.topics import matches_any

_log = logging.getLogger(__name__)

MIN_WAIT = 0.05  # nats-py refuses a fetch timeout of 0
_GRACE = 1.0  # beyond `wait`, for the client's bookkeeping; a hang guard only
# After a first message, how long a batch waits for more that are not ready yet. nats-py's
# fetch first asks JetStream for what is ready (no_wait); only when nothing is does it linger
# this long, so it bounds the latency a lone message pays at light load.
_LINGER = 0.005
_NOT_A_NAME = re.compile(r"[^A-Za-z0-9_-]")
_NETWORK_ERRORS = (OSError, nats.errors.Error)


def parse_url(url: str) -> NatsConsumerOptions:
    """`NatsConsumerOptions` from a broker URL; `ConfigurationError` for anything malformed."""
    return nats_url.parse_url(url, NatsConsumerOptions, "consumer")


def durable_name(consumer: str) -> str:
    """The JetStream durable name for an inbox consumer: only letters, digits, `-`, `_`."""
    return _NOT_A_NAME.sub("_", consumer)


# -- subjects ----------------------------------------------------------------------------


def subject_filter(prefix: str, pattern: str) -> str | None:
    """The narrowest JetStream filter covering handler `pattern`; None: the whole stream."""
    literal, star, rest = (prefix + pattern).partition("*")
    if not star and valid_subject(literal):
        return literal  # an exact topic
    if star and not rest and (not literal or literal.endswith(".")):
        head = literal[:-1]  # `orders.*` or `*`: every subject below the head
        if not head:
            return None
        if valid_subject(head):
            return head + ".>"
    # Anything else: every subject below the whole tokens before the wildcard.
    kept = list(itertools.takewhile(valid_token, literal.split(".")[:-1]))
    return ".".join([*kept, ">"]) if kept else None


def filter_subjects(prefix: str, patterns: Iterable[str]) -> tuple[str, ...]:
    """The consumer's filter subjects for `patterns`; () for the whole stream.

    Subjects covered by another are left out: JetStream refuses overlapping filters.
    """
    found = {subject_filter(prefix, pattern) for pattern in patterns}
    if None in found:
        return ()
    subjects = sorted(s for s in found if s is not None)
    return tuple(s for s in subjects if not any(o != s and subject_matches(o, s) for o in subjects))


@dataclass(frozen=True)
class Filters:
    """What one consumer subscribes to: filter subjects plus the exact handler patterns."""

    prefix: str
    patterns: tuple[str, ...]
    subjects: tuple[str, ...]  # empty: the whole stream

    @classmethod
    def of(cls, prefix: str, patterns: Sequence[str]) -> Filters:
        return cls(prefix, tuple(patterns), filter_subjects(prefix, patterns))

    def topic(self, subject: str) -> str | None:
        """The topic a publisher sent on `subject`, or None if it lacks the prefix."""
        return subject[len(self.prefix) :] if subject.startswith(self.prefix) else None

    def wanted(self, subject: str) -> bool:
        """Whether a handler pattern matches the topic of `subject`."""
        topic = self.topic(subject)
        return topic is not None and matches_any(self.patterns, topic)


# -- deliveries --------------------------------------------------------------------------


@dataclass(eq=False)
class NatsDelivery:
    """A JetStream message and its decoded envelope."""

    msg: Msg
    message: Message | None
    malformed: Malformed | None
    attempt: int

    async def ack(self) -> None:
        """Ack (fire and forget: a lost ack is a redelivery the inbox absorbs)."""
        await _settle(self.msg.ack(), "ack", self.msg)

    async def nak(self, delay: float) -> None:
        """Ask JetStream to redeliver after `delay` seconds."""
        await _settle(self.msg.nak(delay=delay), "nak", self.msg)


async def _settle(action: Awaitable[None], verb: str, msg: Msg) -> None:
    try:
        await action
    except _NETWORK_ERRORS as exc:
        _log.warning(
            "could not %s the NATS message on %s (%s: %s); JetStream will redeliver it",
            verb,
            msg.subject,
            type(exc).__name__,
            exc,
        )


def _attempt(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except (ValueError, IndexError, TypeError, nats.errors.Error):
        return 1


def _sequence(msg: Msg) -> str:
    try:
        return str(msg.metadata.sequence.stream)
    except (ValueError, IndexError, TypeError, nats.errors.Error):
        return "?"


def decode(msg: Msg, filters: Filters) -> NatsDelivery:
    """The delivery for `msg`; `malformed` says why (and keeps what it can) if it is broken."""
    payload = msg.data or b""
    headers = {k: v for k, v in (msg.headers or {}).items() if not k.lower().startswith("nats-")}
    try:
        message = from_headers(headers, payload, topic=filters.topic(msg.subject))
    except InvalidMessage as exc:
        where = f"(subject {msg.subject}, stream sequence {_sequence(msg)})"
        return NatsDelivery(msg, None, Malformed.of(exc, payload, where), _attempt(msg))
    return NatsDelivery(msg, message, None, _attempt(msg))


# -- the consumer ------------------------------------------------------------------------


class NatsConsumer:
    """Pulls one durable JetStream consumer's messages over one connection."""

    def __init__(self, options: NatsConsumerOptions, subscription: Subscription) -> None:
        self.options = options
        self.durable = durable_name(subscription.consumer)
        self.filters = Filters.of(options.subject_prefix, subscription.topics)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        # One pull subscription per concurrent fetch: replies of one never reach another.
        self._idle: list[JetStreamContext.PullSubscription] = []
        self._stale = False  # check the stream and consumer again before the next fetch
        self._failing = False  # a failed fetch was logged; quiet until one succeeds
        self._connect_error: Exception | None = None

    async def connect(self) -> None:
        """Connect (failing fast), make sure the stream exists, create or update the consumer."""
        if self._nc is not None and not self._nc.is_closed:
            return
        nc = await self._open()
        js = nc.jetstream(timeout=self.options.timeout)
        try:
            await self._prepare(js)
        except BaseException:
            await _close_quietly(nc)
            raise
        self._nc, self._js, self._stale = nc, js, False
        _log.info(
            "consuming JetStream stream %s at %s as %s (subjects: %s)",
            self.options.stream,
            self.options.display,
            self.durable,
            ", ".join(self.filters.subjects) or "all",
        )

    async def _open(self) -> Client:
        o = self.options
        nc = Client()
        self._connect_error = None
        try:
            async with asyncio.timeout(3 * o.connect_timeout + 1):
                # Two immediate attempts at most; endless reconnection once connected.
                await nc.connect(
                    servers=[o.server],
                    user=o.user,
                    password=o.password,
                    token=o.token,
                    name=f"outboxkit-consumer-{self.durable}",
                    connect_timeout=o.connect_timeout,
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    flush_timeout=o.timeout,
                )
        except (TimeoutError, *_NETWORK_ERRORS) as exc:
            await _close_quietly(nc)
            detail = nats_url.scrub(self._connect_error or exc, o)
            raise BrokerUnavailable(f"cannot connect to NATS at {o.display}: {detail}") from exc
        nc.options.update(
            allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=o.reconnect_wait
        )
        return nc

    async def _prepare(self, js: JetStreamContext) -> None:
        """Make sure the stream exists, then create or update the durable consumer."""
        o = self.options
        try:
            await self._ensure_stream(js)
            await js.add_consumer(o.stream, self._config())
        except nats.js.errors.BadRequestError as exc:
            raise ConfigurationError(
                f"JetStream refused consumer {self.durable} on stream {o.stream} at "
                f"{o.display}: {exc.description}"
            ) from exc
        except ValueError as exc:  # nats-py's own checks, e.g. of the stream name
            raise ConfigurationError(f"{o.display}: {exc}") from None
        except (TimeoutError, *_NETWORK_ERRORS) as exc:
            raise BrokerUnavailable(
                f"JetStream stream {o.stream} at {o.display} unavailable: {nats_url.scrub(exc, o)}"
            ) from exc

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        o = self.options
        try:
            await js.stream_info(o.stream)
            return
        except nats.js.errors.NotFoundError:
            if not o.create_stream:
                raise ConfigurationError(
                    f"JetStream stream {o.stream} does not exist at {o.display} and "
                    "create_stream=false (start the relay first, or allow create_stream)"
                ) from None
        await js.add_stream(StreamConfig(**nats_url.stream_fields(o)))
        _log.info("created JetStream stream %s at %s", o.stream, o.display)

    def _config(self) -> ConsumerConfig:
        subjects = self.filters.subjects
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.options.ack_wait,
            max_deliver=self.options.max_deliver,
            filter_subject=subjects[0] if len(subjects) == 1 else None,
            filter_subjects=list(subjects) if len(subjects) > 1 else None,
        )

    async def fetch(self, max_messages: int, wait: float) -> list[Delivery]:
        """Up to `max_messages` deliveries; [] after about `wait` seconds or while NATS is down."""
        nc, js = self._nc, self._js
        if nc is None or js is None:
            raise RuntimeError("NatsConsumer.fetch() before connect() or after close()")
        wait = max(wait, MIN_WAIT)
        if not nc.is_connected:
            await asyncio.sleep(wait)  # reconnecting; the disconnect was logged
            return []
        try:
            async with asyncio.timeout(wait + _LINGER + _GRACE):
                if self._stale:
                    await self._prepare(js)
                    self._stale = False
                msgs = await self._pull(js, max_messages, wait)
        except TimeoutError:
            return []
        except (BrokerUnavailable, ConfigurationError, *_NETWORK_ERRORS) as exc:
            self._fetch_failed(exc)
            await asyncio.sleep(wait)
            return []
        if self._failing:
            self._failing = False
            _log.info("fetching from NATS at %s again", self.options.display)
        return await self._deliveries(msgs)

    async def _pull(self, js: JetStreamContext, max_messages: int, wait: float) -> list[Msg]:
        """Wait up to `wait` for a first message, then take what else is ready at once.

        One `fetch(max_messages)` would do, but nats-py's long poll, once its first message
        arrives, waits for the rest of the batch until the timeout: at light load each
        message would sit out the whole `wait`. A batch of one returns on arrival; the rest
        comes from a `no_wait` pull, lingering at most `_LINGER` when nothing is ready.
        """
        sub = self._idle.pop() if self._idle else await self._subscribe(js)
        try:
            msgs = await sub.fetch(1, timeout=wait)
            if max_messages > 1:
                try:
                    msgs += await sub.fetch(max_messages - 1, timeout=_LINGER)
                except TimeoutError:
                    pass
                except _NETWORK_ERRORS as exc:  # keep the first message: it was delivered
                    self._fetch_failed(exc)
            return msgs
        finally:
            self._idle.append(sub)

    async def _subscribe(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        return await js.pull_subscribe_bind(self.durable, self.options.stream)

    def _fetch_failed(self, exc: BaseException) -> None:
        # A vanished consumer or stream (an API error) is recreated before the next fetch.
        self._stale = True
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        _log.log(
            level,
            "fetching from NATS at %s failed (%s: %s); retrying",
            self.options.display,
            type(exc).__name__,
            nats_url.scrub(exc, self.options),
        )

    async def _deliveries(self, msgs: list[Msg]) -> list[Delivery]:
        deliveries: list[Delivery] = []
        for msg in msgs:
            if self.filters.wanted(msg.subject):
                deliveries.append(decode(msg, self.filters))
                continue
            _log.debug("consumer %s: no handler for %s; acked", self.durable, msg.subject)
            await _settle(msg.ack(), "ack", msg)
        return deliveries

    async def close(self) -> None:
        """Flush pending acks and close the connection; safe to call twice."""
        nc, self._nc, self._js = self._nc, None, None
        self._idle.clear()
        if nc is not None:
            await _close_quietly(nc)

    async def _on_error(self, exc: Exception) -> None:
        if self._nc is None:  # still connecting: the error goes into BrokerUnavailable
            self._connect_error = exc
        quiet = self._nc is None or self._nc.is_reconnecting
        level = logging.DEBUG if quiet else logging.WARNING
        _log.log(level, "NATS %s: %s", self.options.display, nats_url.scrub(exc, self.options))

    async def _on_disconnected(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            _log.warning("disconnected from NATS at %s; reconnecting", self.options.display)

    async def _on_reconnected(self) -> None:
        self._stale = True
        _log.info("reconnected to NATS at %s", self.options.display)


async def _close_quietly(nc: Client) -> None:
    try:
        if not await settle_within(nc.close(), 5):  # flushes what is buffered (acks) first
            _log.debug("closing the NATS connection took over 5s; left to finish")
    except _NETWORK_ERRORS as exc:
        _log.debug("closing the NATS connection: %r", exc)


def create(url: str, subscription: Subscription) -> NatsConsumer:
    """A consumer for a `nats://` URL (see the module docstring for its options)."""
    options = parse_url(url)
    if not subscription.topics:
        raise ConfigurationError(
            f"consumer {subscription.consumer!r} has no handlers: nothing to subscribe to"
        )
    return NatsConsumer(options, subscription)
