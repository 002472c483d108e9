"""RabbitMQ publisher (aio-pika): a message is acked once the broker confirmed it.

URL: `amqp[s]://[user[:password]@]host[:port][/vhost][?option=value&...]` (user, password
and vhost percent-quoted; port 5672, or 5671 for `amqps`). Options:

- `exchange=outboxkit`: the topic exchange messages go to; the routing key is the topic.
- `declare=true`: declare the exchange (durable, type topic) on every (re)connect; with
  `false` it must exist (checked passively on connect).
- `max_message_bytes=134217728`: the broker's `max_message_size` (RabbitMQ 3.10 default,
  128 MiB). A larger body is rejected before sending: the broker would close the channel.
  If the broker's limit turns out smaller, the channel error names it: the offending
  message is rejected, the others retried, and the smaller limit is used from then on.
- `timeout=5`: seconds to wait for the confirms of a batch (and for declarations).
- `connect_timeout=5`, `heartbeat=30` (seconds; 0 disables heartbeats).
- `cafile=`, `certfile=`, `keyfile=`, `verify=true`: TLS for `amqps://`.
- Consumer options (`queue`, `prefetch`, `dead_letter_exchange`, `queue_type`,
  `reconnect_wait`) are accepted and ignored, so one URL serves the relay and the consumer.

Every message is persistent (delivery mode 2), published with `mandatory=True` on a channel
in confirm mode; `message_id` is the outbox message id, `content_type` the message's, and
the headers carry the envelope (`outbox.envelope.to_headers`). A batch is published
concurrently on one channel and all confirms are awaited under one deadline.

Outcomes: a confirm (basic.ack) is `ok`; an unroutable message (basic.return: no queue is
bound for its topic) is `reject`, so it is dead-lettered rather than silently dropped; a
basic.nack or a missing confirm is `retry`; a body over the size limit, a topic longer
than a routing key (255 bytes) or headers that do not fit in one AMQP frame are `reject`.
A broker that cannot be reached, a lost connection, a missing exchange or refused access
are `unreachable` (the relay pauses without counting an attempt). After a lost connection,
a channel error or a batch without a single confirm, the connection (or channel) is dropped
and opened again on the next call.

RabbitMQ does not deduplicate: a message republished after a lost confirm arrives twice,
and the consumer's inbox absorbs it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import replace

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from pamqp import frame as pamqp_frame
from pamqp.header import ContentHeader
from yarl import URL

from outboxkit.brokers.publishing import Capabilities, Outcome
from outboxkit.brokers.rabbitmq.options import (
    AmqpOptions,
    describe,
    parse_url,
    routing_key_error,
    ssl_context,
)
from outboxkit.outbox.envelope import to_headers
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError
from outboxkit.outbox.message import Message

_log = logging.getLogger(__name__)

DEFAULT_FRAME_MAX = 131072
_SIZE_LIMIT = re.compile(r"larger than configured max size (\d+)")
# The connection is gone (or going): nothing is wrong with the message.
CONNECTION_ERRORS = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
)


async def open_connection(options: AmqpOptions, name: str) -> AbstractConnection:
    """A connection to the broker within `connect_timeout`; `BrokerUnavailable` if refused."""
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
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"TLS settings of {options.display}: {exc}") from None
    try:
        async with asyncio.timeout(options.connect_timeout + 1):
            return await aio_pika.connect(
                url,
                ssl_context=context,
                timeout=options.connect_timeout,
                client_properties={"connection_name": name},
            )
    except (TimeoutError, aiormq.exceptions.AMQPError, OSError) as exc:
        raise BrokerUnavailable(
            f"cannot connect to RabbitMQ at {options.display}: {describe(exc, options)}"
        ) from None


async def close_quietly(closable: AbstractConnection | AbstractChannel | None) -> None:
    """Close a connection or channel, ignoring that it is already broken."""
    if closable is None or closable.is_closed:
        return
    try:
        async with asyncio.timeout(5):
            await closable.close()
    except (TimeoutError, aiormq.exceptions.AMQPError, *CONNECTION_ERRORS) as exc:
        _log.debug("closing %s: %r", type(closable).__name__, exc)


class RabbitMQPublisher:
    """Publishes to one topic exchange over one connection and one confirm-mode channel."""

    def __init__(self, options: AmqpOptions) -> None:
        self.options = options
        self.capabilities = Capabilities(
            ordered_per_key=True, broker_dedup=False, max_message_bytes=options.max_message_bytes
        )
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._frame_max = DEFAULT_FRAME_MAX
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        """Connect (failing fast) and declare or check the exchange."""
        async with self._lock:
            await self._ensure()

    async def _ensure(self) -> None:
        if self._exchange is not None and self._channel is not None and not self._channel.is_closed:
            return
        self._exchange = None
        await close_quietly(self._channel)
        self._channel = None
        if self._connection is None or self._connection.is_closed:
            self._connection = await open_connection(self.options, "outboxkit-relay")
            tune = getattr(self._connection.transport, "connection", None)
            tune = getattr(tune, "connection_tune", None)
            self._frame_max = getattr(tune, "frame_max", 0) or DEFAULT_FRAME_MAX
        o = self.options
        try:
            async with asyncio.timeout(o.timeout):
                channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                try:
                    self._exchange = await self._declare(channel)
                except BaseException:
                    await close_quietly(channel)
                    raise
        except ConfigurationError:
            raise
        except (TimeoutError, *CONNECTION_ERRORS, aiormq.exceptions.AMQPError) as exc:
            await self._drop_connection()
            raise BrokerUnavailable(
                f"RabbitMQ at {o.display} unavailable: {describe(exc, o)}"
            ) from None
        self._channel = channel

    async def _declare(self, channel: AbstractChannel) -> AbstractExchange:
        o = self.options
        try:
            if o.declare:
                return await channel.declare_exchange(
                    o.exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
            return await channel.get_exchange(o.exchange, ensure=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise ConfigurationError(
                f"exchange {o.exchange!r} does not exist at {o.display} and declare=false"
            ) from None
        except (
            aiormq.exceptions.ChannelPreconditionFailed,
            aiormq.exceptions.ChannelAccessRefused,
        ) as exc:
            raise ConfigurationError(
                f"RabbitMQ at {o.display} refused exchange {o.exchange!r}: {describe(exc, o)}"
            ) from None

    async def publish(self, batch: Sequence[Message]) -> list[Outcome]:
        """Publish the batch concurrently, then wait for every confirm (one shared deadline)."""
        if not batch:
            return []
        try:
            async with self._lock:
                await self._ensure()
        except (BrokerUnavailable, ConfigurationError) as exc:
            return [Outcome.unreachable(str(exc))] * len(batch)
        exchange = self._exchange
        assert exchange is not None
        late = Outcome.retry(f"no publisher confirm within {self.options.timeout:g}s")
        outcomes: list[Outcome] = [late] * len(batch)
        sends: dict[asyncio.Task[object], int] = {}
        for index, message in enumerate(batch):
            amqp = self._amqp_message(message)
            if isinstance(amqp, Outcome):
                outcomes[index] = amqp
                continue
            sending = exchange.publish(amqp, routing_key=message.topic, mandatory=True)
            sends[asyncio.create_task(sending)] = index
        if not sends:
            return outcomes
        done, pending = await asyncio.wait(sends, timeout=self.options.timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        channel_broken = connection_broken = False
        for task in done:
            index = sends[task]
            error = task.exception()
            if error is None:
                outcomes[index] = Outcome.ok()
                continue
            outcomes[index] = self._failed(error, batch[index])
            channel_broken |= isinstance(error, aiormq.exceptions.ChannelClosed)
            connection_broken |= isinstance(error, CONNECTION_ERRORS)
        if pending and not any(o.acked for o in outcomes):
            # Not one confirm in time: the connection may be dead without knowing it yet
            # (a blackholed broker). Reconnecting surfaces that as `unreachable` next time.
            connection_broken = True
            _log.warning(
                "no confirm from RabbitMQ at %s within %gs; reconnecting",
                self.options.display,
                self.options.timeout,
            )
        if connection_broken or channel_broken:
            async with self._lock:
                if self._exchange is exchange:  # not reopened by a concurrent call meanwhile
                    await (self._drop_connection() if connection_broken else self._drop_channel())
        return outcomes

    def _amqp_message(self, message: Message) -> aio_pika.Message | Outcome:
        """The AMQP message for `message`, or why it can never be sent."""
        limit = self.capabilities.max_message_bytes
        if limit is not None and len(message.payload) > limit:
            return Outcome.reject(
                f"message body is {len(message.payload)} bytes; the broker's "
                f"max_message_size is {limit}"
            )
        problem = routing_key_error(message.topic)
        if problem is not None:
            return Outcome.reject(problem)
        amqp = aio_pika.Message(
            message.payload,
            headers=dict(to_headers(message)),
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(message.message_id),
            timestamp=message.created_at,
            app_id="outboxkit",
        )
        try:
            header = pamqp_frame.marshal(ContentHeader(0, len(message.payload), amqp.properties), 1)
        except (ValueError, TypeError, OverflowError) as exc:
            return Outcome.reject(f"headers cannot be encoded as AMQP: {exc}")
        if len(header) > self._frame_max:
            return Outcome.reject(
                f"headers take {len(header)} bytes; an AMQP frame holds {self._frame_max}"
            )
        return amqp

    def _failed(self, exc: BaseException, message: Message) -> Outcome:
        """The outcome for an error from publishing `message` or from its confirm."""
        o = self.options
        if isinstance(exc, aiormq.exceptions.PublishError):  # basic.return
            frame = exc.frame
            reply = getattr(frame, "reply_text", "returned")
            return Outcome.reject(
                f"unroutable: exchange {o.exchange!r} returned routing key "
                f"{message.topic!r} ({reply}): no queue is bound for it"
            )
        if isinstance(exc, aiormq.exceptions.DeliveryError):  # basic.nack
            return Outcome.retry("RabbitMQ nacked the message (internal error in the broker)")
        if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
            return self._precondition_failed(exc, message)
        if isinstance(
            exc,
            aiormq.exceptions.ChannelNotFoundEntity | aiormq.exceptions.ChannelAccessRefused,
        ):
            # The exchange vanished or we may not write to it: fix the broker, not the message.
            return Outcome.unreachable(f"RabbitMQ at {o.display}: {describe(exc, o)}")
        if isinstance(exc, aiormq.exceptions.ChannelClosed):
            return Outcome.retry(f"RabbitMQ closed the channel: {describe(exc, o)}")
        if isinstance(exc, TimeoutError):
            return Outcome.retry(f"no publisher confirm within {o.timeout:g}s")
        if isinstance(exc, CONNECTION_ERRORS):
            return Outcome.unreachable(f"connection to RabbitMQ lost: {describe(exc, o)}")
        raise exc

    def _precondition_failed(
        self, exc: aiormq.exceptions.ChannelPreconditionFailed, message: Message
    ) -> Outcome:
        text = describe(exc, self.options)
        found = _SIZE_LIMIT.search(text)
        if found is None:
            return Outcome.retry(f"RabbitMQ closed the channel: {text}")
        limit = int(found.group(1))
        current = self.capabilities.max_message_bytes
        if current is None or limit < current:
            _log.warning(
                "RabbitMQ at %s has max_message_size %d (configured max_message_bytes=%s); "
                "using %d",
                self.options.display,
                limit,
                current,
                limit,
            )
            self.capabilities = replace(self.capabilities, max_message_bytes=limit)
        if len(message.payload) > limit:
            return Outcome.reject(
                f"message body is {len(message.payload)} bytes; the broker's "
                f"max_message_size is {limit}"
            )
        # Another message of the batch closed the channel: this one was not refused.
        return Outcome.retry(f"RabbitMQ closed the channel: {text}")

    async def _drop_channel(self) -> None:
        channel, self._channel, self._exchange = self._channel, None, None
        await close_quietly(channel)
        if self._connection is not None and self._connection.is_closed:
            self._connection = None

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        self._channel, self._exchange = None, None
        await close_quietly(connection)

    async def close(self) -> None:
        """Close the channel and the connection; safe to call twice."""
        async with self._lock:
            await self._drop_channel()
            await self._drop_connection()


def create(url: str) -> RabbitMQPublisher:
    """A publisher for an `amqp://` or `amqps://` URL (see the module docstring for options)."""
    return RabbitMQPublisher(parse_url(url))
