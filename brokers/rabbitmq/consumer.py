"""RabbitMQ consumer (aio-pika): one durable queue per inbox consumer, bound to the exchange.

URL: the publisher's (see `rabbitmq.publisher`: credentials, vhost, `exchange=outboxkit`,
`declare=true`, `timeout`, `connect_timeout`, `heartbeat`, TLS options), plus:

- `queue=<inbox consumer name>`: the durable queue this consumer reads.
- `prefetch=100`: unacked deliveries the broker hands this consumer at once (basic.qos;
  0: no limit). Keep it at least the runner's `batch_size`.
- `dead_letter_exchange=`: the queue's `x-dead-letter-exchange` (unset by default). The
  runner dead-letters into PostgreSQL itself; this catches what the *broker* dead-letters
  (e.g. a queue length or TTL policy).
- `queue_type=classic`: `classic` or `quorum`. A quorum queue counts redeliveries exactly
  (`x-delivery-count`); a classic queue only says "redelivered".
- `reconnect_wait=2`: seconds between reconnection attempts while the broker is down.

Queue arguments are fixed when the queue is created: RabbitMQ refuses to redeclare it with
other ones (`ConfigurationError` naming the queue): delete the queue, or use a policy.

Topology, declared on every (re)connect: the exchange (durable topic, unless
`declare=false`), the queue (durable), and one binding per handler pattern. Our `*` matches
any run of characters, dots included, so a word with a `*` binds as AMQP's `#`:
`orders.created` -> `orders.created`, `orders.*` -> `orders.#`, `*.created` -> `#.created`,
`*` -> `#`. `#` also matches what the pattern does not (`orders.#` matches `orders`): a
delivery whose topic matches no handler pattern is acked and dropped here (logged at
debug). Bindings are only ever added: a handler removed later leaves its binding behind
(its messages are then dropped here; `rabbitmqctl`/the management UI can unbind it).

Acks are basic.ack after the runner committed (no broker reply exists for them; a lost ack
is a redelivery that the inbox absorbs).

`nak(delay)`, since RabbitMQ cannot requeue with a delay: the message is republished
(persistent, with publisher confirm) to a delay queue that dead-letters it back into the
work queue when its per-message TTL (`delay`) runs out; only after that confirm is the
original acked (a crash in between means one duplicate, never a loss). The delay queues are
named `outboxkit.delay.<ms>.<queue>`, one per band of delays (bands grow by a factor of
sqrt 2 from 0.1 s): a message waits behind an earlier, longer one of its band at most, so
it comes back after `delay` and at most ~41 % later. They are quorum queues with
at-least-once dead-lettering (a classic queue dead-letters at most once) and expire when
unused (`x-expires`, longer than any delay of the band); this needs RabbitMQ 3.10 or later
(message TTL and at-least-once dead-lettering for quorum queues). A `delay` of 0
republishes straight into the work queue. If the republish fails, the message is requeued
at once instead (basic.nack with requeue), so it is never held back nor lost.

Delivery.attempt: the republished copy carries `outboxkit-attempt: <n + 1>`; on top of that
a redelivery the broker made itself (a consumer died with the message unacked) adds
`x-delivery-count` (quorum queues) or 1 (classic: the `redelivered` flag).

Outages: while the broker is down `fetch` waits `wait` seconds and returns nothing, trying
to reconnect every `reconnect_wait` seconds (logged once until it works); unacked
deliveries return to the queue when the connection dies, and deliveries fetched from a
dead connection can no longer be acked (logged: they come back). After a reconnect the
topology is declared again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from yarl import URL

from outboxkit.brokers.consuming import Delivery, Subscription
from outboxkit.brokers.rabbitmq.options import (
    MAX_SHORTSTR,
    AmqpOptions,
    binding_keys,
    describe,
    matches,
    parse_url,
    ssl_context,
)
from outboxkit.outbox.envelope import (
    CONTENT_TYPE,
    MESSAGE_ID,
    TOPIC,
    Malformed,
    from_headers,
    native_text,
)
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError, InvalidMessage
from outboxkit.outbox.message import Message

_log = logging.getLogger(__name__)

ATTEMPT = "outboxkit-attempt"
# Headers RabbitMQ adds (dead-lettering, quorum queue redeliveries): not the sender's.
BROKER_HEADERS = frozenset({"x-death", "x-delivery-count", ATTEMPT})
BROKER_HEADER_PREFIXES = ("x-first-death-", "x-last-death-")
DELAY_BASE = 0.1  # seconds: the first band of delay queues
DELAY_EXPIRY_MARGIN = 60.0  # seconds a delay queue outlives its longest delay
_REDECLARE_AFTER = DELAY_EXPIRY_MARGIN / 2
_CONNECTION_ERRORS = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
)
_AMQP_ERRORS = (aiormq.exceptions.AMQPError, *_CONNECTION_ERRORS)


def parse_consumer_url(url: str) -> AmqpOptions:
    """`AmqpOptions` from a broker URL; `ConfigurationError` for anything malformed."""
    return parse_url(url)


# -- delay queues ------------------------------------------------------------------------


@dataclass(frozen=True)
class DelayBand:
    """The delay queue for delays in [lower, upper) seconds (the first band from 0)."""

    lower: float
    upper: float

    @classmethod
    def of(cls, delay: float) -> DelayBand:
        step = max(0, math.floor(2 * math.log2(max(delay, DELAY_BASE) / DELAY_BASE)))
        return cls(DELAY_BASE * 2 ** (step / 2), DELAY_BASE * 2 ** ((step + 1) / 2))

    def queue(self, work_queue: str) -> str:
        name = f"outboxkit.delay.{round(self.lower * 1000)}.{work_queue}"
        if len(name.encode()) <= MAX_SHORTSTR:
            return name
        digest = hashlib.sha256(work_queue.encode()).hexdigest()[:24]
        return f"outboxkit.delay.{round(self.lower * 1000)}.{digest}"

    def arguments(self, work_queue: str) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",  # the default exchange: routes by queue name
            "x-dead-letter-routing-key": work_queue,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # required by at-least-once dead-lettering
            "x-expires": math.ceil((self.upper + DELAY_EXPIRY_MARGIN) * 1000),
        }


# -- deliveries --------------------------------------------------------------------------


# Beyond any real count: keeps a hostile `outboxkit-attempt` within an integer column.
MAX_ATTEMPT = 1_000_000


def sender_headers(raw: Mapping[Any, Any]) -> dict[Any, Any]:
    """`raw` without the headers RabbitMQ or the delay queues added."""
    return {k: v for k, v in raw.items() if not _added_by_broker(k)}


def _added_by_broker(name: object) -> bool:
    # A name that is not text (AMQP bytes) is the sender's: checked like its other headers.
    return isinstance(name, str) and (
        name in BROKER_HEADERS or name.startswith(BROKER_HEADER_PREFIXES)
    )


def attempt_from(headers: Mapping[Any, Any] | None, redelivered: bool | None) -> int:
    """1-based: our republish count plus the broker's own redeliveries."""
    raw = headers or {}
    try:
        attempt = max(1, int(native_text(raw.get(ATTEMPT, 1))))
    except ValueError:
        attempt = 1
    count = raw.get("x-delivery-count")
    if isinstance(count, int) and not isinstance(count, bool):
        attempt += max(0, count)
    else:
        attempt += 1 if redelivered else 0
    return min(attempt, MAX_ATTEMPT)


def attempt_of(incoming: AbstractIncomingMessage) -> int:
    """1-based: our republish count plus the broker's own redeliveries."""
    return attempt_from(incoming.headers, incoming.redelivered)


def decode_amqp(
    headers: Mapping[Any, Any] | None,
    body: bytes,
    *,
    routing_key: object = None,
    message_id: object = None,
    content_type: object = None,
) -> Message | Malformed:
    """The message a publisher sent, from an AMQP delivery's parts, or why it is broken.

    Header names and values may be of any AMQP type (bytes that are not UTF-8, numbers,
    tables): they are read as text (`native_text`) and checked like any other.
    """
    text = {native_text(k): native_text(v) for k, v in sender_headers(headers or {}).items()}
    # Foreign publishers: fall back on the AMQP properties and the routing key.
    if MESSAGE_ID not in text and message_id:
        text[MESSAGE_ID] = native_text(message_id)
    if CONTENT_TYPE not in text and content_type:
        text[CONTENT_TYPE] = native_text(content_type)
    topic = native_text(routing_key) if routing_key else None
    try:
        return from_headers(text, body, topic=topic)
    except InvalidMessage as exc:
        return Malformed.of(exc, body)


def decode_message(incoming: AbstractIncomingMessage) -> Message | Malformed:
    """The message a publisher sent in `incoming`, or why it is broken."""
    return decode_amqp(
        incoming.headers,
        incoming.body,
        routing_key=incoming.routing_key,
        message_id=incoming.message_id,
        content_type=incoming.content_type,
    )


@dataclass(eq=False)
class RabbitMQDelivery:
    """An AMQP delivery and its decoded envelope."""

    incoming: AbstractIncomingMessage
    message: Message | None
    malformed: Malformed | None
    attempt: int
    consumer: RabbitMQConsumer = field(repr=False)

    async def ack(self) -> None:
        """basic.ack (a lost ack is a redelivery the inbox absorbs)."""
        try:
            await self.incoming.ack()
        except (*_AMQP_ERRORS, aio_pika.exceptions.MessageProcessError) as exc:
            _log.warning(
                "could not ack a RabbitMQ message from %s (%s); it will be redelivered",
                self.consumer.queue_name,
                describe(exc, self.consumer.options),
            )

    async def nak(self, delay: float) -> None:
        """Redeliver after `delay` seconds (through a delay queue, see the module docstring).

        A malformed delivery is requeued at once instead: its headers are not ours to copy.
        """
        if self.message is None:
            await self.consumer.requeue(self)
            return
        await self.consumer.redeliver(self, delay)


def describe_delivery(incoming: AbstractIncomingMessage) -> str:
    return (
        f"routing key {incoming.routing_key!r}, message id {incoming.message_id!r}, "
        f"delivery tag {incoming.delivery_tag}"
    )


# -- the consumer ------------------------------------------------------------------------


class RabbitMQConsumer:
    """Consumes one durable queue over one connection (a channel to consume, one to republish)."""

    def __init__(self, options: AmqpOptions, subscription: Subscription) -> None:
        self.options = options
        self.queue_name = options.queue or subscription.consumer
        self.patterns = tuple(subscription.topics)
        self.binding_keys = binding_keys(self.patterns)
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._consumer_tag: str | None = None
        self._underlay: object = None  # aiormq's channel: its `consumers` tell a cancel
        self._republisher: AbstractChannel | None = None
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._declared: dict[str, float] = {}  # delay queue -> when we last declared it
        self._lock = asyncio.Lock()
        self._next_attempt = 0.0
        self._failing = False
        self._closed = False

    # -- connecting ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect (failing fast) and declare the exchange, the queue and its bindings."""
        async with self._lock:
            self._closed = False
            if not self._usable():
                await self._open()
        _log.info(
            "consuming RabbitMQ queue %s at %s (exchange %s, bindings: %s)",
            self.queue_name,
            self.options.display,
            self.options.exchange,
            ", ".join(self.binding_keys),
        )

    def _usable(self) -> bool:
        channel = self._channel
        if channel is None or channel.is_closed or self._consumer_tag is None:
            return False
        # A queue deleted under us cancels our consumer (basic.cancel) on a live channel.
        consumers = getattr(self._underlay, "consumers", None)
        return consumers is None or self._consumer_tag in consumers

    async def _open(self) -> None:
        await self._drop()
        o = self.options
        connection = await _open_connection(o, f"outboxkit-consumer-{self.queue_name}")
        buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        try:
            async with asyncio.timeout(o.timeout):
                channel = await connection.channel(publisher_confirms=False)
                await channel.set_qos(prefetch_count=o.prefetch)
                exchange = await self._exchange(channel)
                queue = await self._queue(channel)
                for key in self.binding_keys:
                    await queue.bind(exchange, key)
                tag = await queue.consume(buffer.put, no_ack=False)
                underlay = await channel.get_underlay_channel()
        except ConfigurationError:
            await _close_quietly(connection)
            raise
        except (TimeoutError, *_AMQP_ERRORS) as exc:
            await _close_quietly(connection)
            raise BrokerUnavailable(
                f"RabbitMQ queue {self.queue_name} at {o.display} unavailable: {describe(exc, o)}"
            ) from None
        self._connection, self._channel, self._consumer_tag = connection, channel, tag
        self._underlay = underlay
        self._buffer = buffer
        self._declared.clear()

    async def _exchange(self, channel: AbstractChannel) -> AbstractExchange:
        o = self.options
        try:
            if o.declare:
                return await channel.declare_exchange(
                    o.exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
            return await channel.get_exchange(o.exchange, ensure=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise ConfigurationError(
                f"exchange {o.exchange!r} does not exist at {o.display} and declare=false "
                "(start the relay first, or allow declare)"
            ) from None
        except (
            aiormq.exceptions.ChannelPreconditionFailed,
            aiormq.exceptions.ChannelAccessRefused,
        ) as exc:
            raise ConfigurationError(
                f"RabbitMQ at {o.display} refused exchange {o.exchange!r}: {describe(exc, o)}"
            ) from None

    async def _queue(self, channel: AbstractChannel) -> AbstractQueue:
        o = self.options
        arguments: dict[str, Any] = {}
        if o.dead_letter_exchange is not None:
            arguments["x-dead-letter-exchange"] = o.dead_letter_exchange
        if o.queue_type != "classic":
            arguments["x-queue-type"] = o.queue_type
        try:
            return await channel.declare_queue(
                self.queue_name, durable=True, arguments=arguments or None
            )
        except (
            aiormq.exceptions.ChannelPreconditionFailed,
            aiormq.exceptions.ChannelAccessRefused,
            aiormq.exceptions.ChannelLockedResource,
        ) as exc:
            raise ConfigurationError(
                f"RabbitMQ at {o.display} refused queue {self.queue_name!r} "
                f"(arguments {arguments}): {describe(exc, o)}"
            ) from None

    async def _reconnect(self) -> bool:
        """Open the connection again if it is time to try; whether we are connected."""
        async with self._lock:
            if self._usable():
                return True
            now = time.monotonic()
            if self._closed or now < self._next_attempt:
                return False
            self._next_attempt = now + self.options.reconnect_wait
            try:
                await self._open()
            except (BrokerUnavailable, ConfigurationError) as exc:
                level = logging.DEBUG if self._failing else logging.WARNING
                self._failing = True
                _log.log(level, "%s; retrying every %gs", exc, self.options.reconnect_wait)
                return False
            if self._failing:
                self._failing = False
                _log.info("consuming RabbitMQ queue %s again", self.queue_name)
            return True

    # -- fetching --------------------------------------------------------------------------

    async def fetch(self, max_messages: int, wait: float) -> list[Delivery]:
        """Up to `max_messages` deliveries; [] after about `wait` s, or while RabbitMQ is down."""
        if self._closed:
            raise RuntimeError("RabbitMQConsumer.fetch() after close()")
        deadline = time.monotonic() + max(wait, 0.0)
        if not self._usable() and not await self._reconnect():
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            return []
        buffer = self._buffer
        incoming: list[AbstractIncomingMessage] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + max(wait, 0.0)):
                incoming.append(await buffer.get())
        while incoming and len(incoming) < max_messages and not buffer.empty():
            incoming.append(buffer.get_nowait())
        deliveries: list[Delivery] = []
        for item in incoming:
            delivery = self._decode(item)
            if delivery.message is not None and not matches(self.patterns, delivery.message.topic):
                _log.debug(
                    "queue %s: no handler for %s; acked", self.queue_name, delivery.message.topic
                )
                await delivery.ack()
                continue
            deliveries.append(delivery)
        return deliveries

    def _decode(self, incoming: AbstractIncomingMessage) -> RabbitMQDelivery:
        attempt = attempt_of(incoming)
        found = decode_message(incoming)
        if isinstance(found, Malformed):
            where = f"({describe_delivery(incoming)}, queue {self.queue_name})"
            return RabbitMQDelivery(incoming, None, found.at(where), attempt, self)
        return RabbitMQDelivery(incoming, found, None, attempt, self)

    # -- redelivery with a delay -----------------------------------------------------------

    async def redeliver(self, delivery: RabbitMQDelivery, delay: float) -> None:
        """Republish a copy to come back after `delay` seconds, then ack the original."""
        incoming = delivery.incoming
        try:
            incoming.channel  # noqa: B018 - raises once the delivery's channel is gone
        except aiormq.exceptions.ChannelInvalidStateError:
            # The broker has already put it back (its channel died): a copy would be a
            # duplicate for nothing.
            _log.warning(
                "could not delay a RabbitMQ message from %s: its channel is closed; "
                "RabbitMQ will redeliver it",
                self.queue_name,
            )
            return
        try:
            await self._republish(delivery, max(delay, 0.0))
        except (TimeoutError, aio_pika.exceptions.DeliveryError, *_AMQP_ERRORS) as exc:
            _log.warning(
                "could not delay a RabbitMQ message from %s (%s); requeueing it now",
                self.queue_name,
                describe(exc, self.options),
            )
            try:
                await incoming.nack(requeue=True)
            except (*_AMQP_ERRORS, aio_pika.exceptions.MessageProcessError) as again:
                _log.warning(
                    "could not requeue it either (%s); RabbitMQ will redeliver it",
                    describe(again, self.options),
                )
            return
        await delivery.ack()

    async def requeue(self, delivery: RabbitMQDelivery) -> None:
        """Put the delivery back in its queue at once (basic.nack with requeue)."""
        try:
            await delivery.incoming.nack(requeue=True)
        except (*_AMQP_ERRORS, aio_pika.exceptions.MessageProcessError) as exc:
            _log.warning(
                "could not requeue a RabbitMQ message from %s (%s); RabbitMQ will redeliver it",
                self.queue_name,
                describe(exc, self.options),
            )

    async def _republish(self, delivery: RabbitMQDelivery, delay: float) -> None:
        incoming = delivery.incoming
        headers = sender_headers(incoming.headers or {})
        headers[ATTEMPT] = str(delivery.attempt + 1)
        if TOPIC not in headers and delivery.message is not None:
            headers[TOPIC] = delivery.message.topic
        copy = aio_pika.Message(
            incoming.body,
            headers=headers,
            content_type=incoming.content_type,
            content_encoding=incoming.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=incoming.message_id,
            correlation_id=incoming.correlation_id,
            reply_to=incoming.reply_to,
            timestamp=incoming.timestamp,
            type=incoming.type,
            app_id=incoming.app_id,
            priority=incoming.priority,
            expiration=delay if delay > 0 else None,
        )
        async with asyncio.timeout(self.options.timeout):
            channel = await self._republish_channel()
            target = self.queue_name
            if delay > 0:
                target = await self._delay_queue(channel, DelayBand.of(delay))
            try:
                await channel.default_exchange.publish(copy, routing_key=target, mandatory=True)
            except aio_pika.exceptions.DeliveryError:
                self._declared.pop(target, None)  # e.g. the delay queue expired meanwhile
                raise

    async def _republish_channel(self) -> AbstractChannel:
        channel = self._republisher
        if channel is not None and not channel.is_closed:
            return channel
        connection = self._connection
        if connection is None or connection.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError("not connected to RabbitMQ")
        self._declared.clear()
        self._republisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return self._republisher

    async def _delay_queue(self, channel: AbstractChannel, band: DelayBand) -> str:
        name = band.queue(self.queue_name)
        now = time.monotonic()
        # Declaring resets the queue's expiry timer; refresh well before it could expire.
        if now - self._declared.get(name, -math.inf) > _REDECLARE_AFTER:
            await channel.declare_queue(
                name, durable=True, arguments=band.arguments(self.queue_name)
            )
            self._declared[name] = now
        return name

    # -- closing ---------------------------------------------------------------------------

    async def _drop(self) -> None:
        connection = self._connection
        self._connection = self._channel = self._republisher = None
        self._consumer_tag = self._underlay = None
        await _close_quietly(connection)

    async def close(self) -> None:
        """Close the connection (unacked deliveries return to the queue); safe to call twice."""
        self._closed = True
        async with self._lock:
            await self._drop()


async def _open_connection(options: AmqpOptions, name: str) -> AbstractConnection:
    url = URL.build(
        scheme="amqps" if options.tls else "amqp",
        host=options.host,
        port=options.port,
        user=options.user,
        password=options.password,
        path="/" + options.vhost,
        query={"heartbeat": str(options.heartbeat)},
    )
    try:
        context = ssl_context(options)
    except OSError as exc:  # ssl.SSLError is an OSError
        raise ConfigurationError(f"TLS settings of {options.display}: {exc}") from None
    try:
        async with asyncio.timeout(options.connect_timeout + 1):
            return await aio_pika.connect(
                url,
                ssl_context=context,
                timeout=options.connect_timeout,
                client_properties={"connection_name": name},
            )
    except (TimeoutError, *_AMQP_ERRORS) as exc:
        raise BrokerUnavailable(
            f"cannot connect to RabbitMQ at {options.display}: {describe(exc, options)}"
        ) from None


async def _close_quietly(connection: AbstractConnection | None) -> None:
    if connection is None or connection.is_closed:
        return
    try:
        async with asyncio.timeout(5):
            await connection.close()
    except (TimeoutError, *_AMQP_ERRORS) as exc:
        _log.debug("closing the RabbitMQ connection: %r", exc)


def create(url: str, subscription: Subscription) -> RabbitMQConsumer:
    """A consumer for an `amqp://` or `amqps://` URL (see the module docstring for options)."""
    options = parse_consumer_url(url)
    if not subscription.topics:
        raise ConfigurationError(
            f"consumer {subscription.consumer!r} has no handlers: nothing to subscribe to"
        )
    if not options.queue and len(subscription.consumer.encode()) > MAX_SHORTSTR:
        raise ConfigurationError(
            f"consumer name {subscription.consumer[:40]!r}… is longer than an AMQP queue "
            f"name ({MAX_SHORTSTR} bytes): set queue="
        )
    return RabbitMQConsumer(options, subscription)
