"""Pulsar consumer (pulsar-client): one Failover subscription per inbox consumer name.

The Pulsar adapter is verified against pulsar-lite (a Pulsar-protocol broker), not Apache
Pulsar: Apache Pulsar is a JVM service that cannot be installed on the machines this project
is tested on, while the `pulsar-lite` wheel bundles a broker that speaks the Pulsar binary
protocol.

URL: the publisher's (see `pulsar.publisher`: hosts, credentials, `tenant`,
`namespace`, `topic_prefix`, `topic`, `timeout`, `connect_timeout`, `tls_*`), plus:

- `receiver_queue_size=1000`: messages the client prefetches per topic.
- `discovery_interval=60`: seconds between two looks for new topics matching a wildcard
  handler pattern (a regex subscription).

The subscription is named after the inbox consumer, durable, and starts at the earliest
message of a topic it has not seen yet. Its type is Failover: of the processes of one inbox
consumer, one at a time receives a given topic (partition), in order, so the messages of one
key keep their order; the others stand by and take over, from the first unacked message,
when it goes away. Key_Shared would spread one topic's keys over several processes, but
pulsar-lite 0.2 gets its redelivery wrong: after a consumer closes, only the first unacked
message of each key comes back, the rest never (until the broker restarts). On Apache
Pulsar, spread the work with partitioned topics: Failover hands out partitions. pulsar-lite
0.2 lets only one process into a subscription of any type: it tells consumers apart by
the id each client numbers from 0, so a second process times out subscribing
(`BrokerUnavailable`); run one process per inbox consumer there.

What it subscribes to: with `topic=`, that one topic. Otherwise the Pulsar topic of each
handler pattern (`topic_prefix + pattern`, sanitized as the publisher does) when no pattern
has a `*`; with a `*` somewhere, one regex subscription over the namespace
(`persistent://tenant/namespace/(…|…)`, `*` = any run of characters), which needs a broker
that lists a namespace's topics (GetTopicsOfNamespace): Apache Pulsar does, pulsar-lite 0.2
does not (it never answers; `connect` then raises `ConfigurationError`: use `topic=`, or
exact handler topics). A message whose envelope topic matches no handler pattern is acked
and dropped here (logged at debug).

`ack()` acknowledges the message. The client groups acks and sends them within 100 ms (not
configurable from Python), so an ack made just before the connection drops reaches the
broker only after the reconnect, and the broker may redeliver the message first: the
consumer remembers the message ids it acked lately (10,000) and acks such redeliveries
again instead of delivering them. Otherwise a lost ack means a redelivery, which the inbox
absorbs.

`nak(delay)` keeps the message in this process and hands it out again from the first fetch
after `delay` seconds; the broker is not asked to redeliver it. A Pulsar negative ack
could not do it: its delay is one setting per consumer (`negativeAckRedeliveryDelay`), on a
Failover subscription it asks the broker to redeliver everything unacked (pulsar-lite
ignores the request outright), and pulsar-lite ignores delayed delivery too, so
`reconsume_later`-style republishing cannot help either. While a message waits it stays
unacked on the broker, held for this process: if the process ends first, the broker hands
it out again. `attempt` is the broker's redelivery count + 1, plus the naks of this
process. Pulsar counts redeliveries on shared subscriptions only, so on this Failover
subscription `attempt` counts the deliveries within one process: it starts again at 1 after
a restart or a takeover, and a message may get up to `max_attempts` more attempts after
each of those.

`receive` blocks, so fetching runs in a few worker threads of this consumer (with a timeout
of `wait`); the event loop never waits on the client. What a fetch received after its caller
gave up waiting is kept for the next fetch. While the broker is down, `fetch` returns nothing
after `wait` seconds; the client reconnects by itself, and the broker redelivers what was
delivered but not acked.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pulsar

from outboxkit.brokers.consuming import Delivery, Subscription
from outboxkit.brokers.pulsar import options as pulsar_url
from outboxkit.brokers.pulsar.options import PulsarOptions
from outboxkit.outbox.envelope import Malformed, from_headers, native_text
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError, InvalidMessage
from outboxkit.outbox.message import Message
from outboxkit.outbox.topics import matches_any

_log = logging.getLogger(__name__)

_GRACE = 5.0  # seconds beyond the client's own timeouts before we stop waiting (hang guard)
_RECEIVERS = 8  # worker threads for concurrent fetches
_RECENT_ACKS = 10_000  # message ids acked by this process that are remembered
_PROBE_TOPIC = "outboxkit-connection-probe"  # looked up (never created) by connect()
_PARTITION = re.compile(r"-partition-\d+$")
_UNREACHABLE = (
    pulsar.Timeout,
    pulsar.ConnectError,
    pulsar.LookupError,
    pulsar.NotConnected,
    pulsar.ServiceUnitNotReady,
    pulsar.TooManyLookupRequestException,
    pulsar.AuthenticationError,
)


def parse_url(url: str) -> PulsarOptions:
    """`PulsarOptions` from a broker URL; `ConfigurationError` for anything malformed."""
    return pulsar_url.parse_url(url, "consumer")


def subscription_target(options: PulsarOptions, patterns: Sequence[str]) -> list[str] | str:
    """The topics to subscribe to, or one regex (a str) when a pattern has a wildcard."""
    if options.topic is not None:
        return [options.full_name(options.topic)]
    if any("*" in p for p in patterns):
        return pulsar_url.topic_regex(options, patterns)
    return sorted({options.pulsar_topic(p) for p in patterns})


def _client_logger() -> Any:
    """The client's own log: discarded (see `pulsar.publisher`)."""
    return pulsar.FileLogger(pulsar.LoggerLevel.Error, os.devnull)


@dataclass(eq=False)
class PulsarDelivery:
    """A Pulsar message and its decoded envelope."""

    consumer: PulsarConsumer
    msg: pulsar.Message
    message: Message | None
    malformed: Malformed | None
    attempt: int

    async def ack(self) -> None:
        """Acknowledge (grouped by the client: no round trip is awaited)."""
        self.consumer._ack(self.msg, self.message)

    async def nak(self, delay: float) -> None:
        """Deliver the message again (attempt + 1) from a fetch after `delay` seconds."""
        self.consumer._nak(self.msg, self.attempt + 1, delay)


def decode_properties(
    properties: Any, data: bytes | None, topic: str | None
) -> Message | Malformed:
    """The message a publisher sent, from a Pulsar message's properties and data, or why it
    is broken; `topic` is the one the Pulsar topic stands for (see `topic_of`)."""
    payload = data or b""
    if not isinstance(properties, Mapping):
        return Malformed("the message's properties are not a map", payload)
    text = {native_text(k): native_text(v) for k, v in properties.items()}
    try:
        return from_headers(text, payload, topic=topic)
    except InvalidMessage as exc:
        return Malformed.of(exc, payload)


def decode(msg: pulsar.Message, options: PulsarOptions) -> tuple[Message | None, Malformed | None]:
    """The message a publisher sent in `msg`, or why it cannot be read."""
    topic = _PARTITION.sub("", msg.topic_name() or "")
    where = f"(Pulsar topic {topic}, message {msg.message_id()})"
    try:
        properties = msg.properties()
    except (ValueError, TypeError) as exc:  # e.g. a property that is not UTF-8
        found: Message | Malformed = Malformed(
            f"unreadable properties ({type(exc).__name__})", msg.data() or b""
        )
    else:
        found = decode_properties(properties, msg.data(), options.topic_of(topic))
    if isinstance(found, Malformed):
        return None, found.at(where)
    return found, None


class PulsarConsumer:
    """Consumes one Failover subscription over one pulsar-client consumer."""

    def __init__(self, options: PulsarOptions, subscription: Subscription) -> None:
        self.options = options
        self.name = subscription.consumer
        self.patterns = tuple(subscription.topics)
        self.target = subscription_target(options, self.patterns)
        self._client: pulsar.Client | None = None
        self._consumer: pulsar.Consumer | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Received or naked messages waiting for a fetch, with their attempt numbers.
        self._stash: collections.deque[tuple[pulsar.Message, int]] = collections.deque()
        self._stash_lock = threading.Lock()
        self._timers: set[asyncio.TimerHandle] = set()
        # outboxkit message ids this process acked lately: their redeliveries are dropped.
        self._acked: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._failing = False  # a failed fetch was logged; quiet until one succeeds
        self._disconnected = False  # the disconnection was logged

    def _new_client(self) -> pulsar.Client:
        o = self.options
        auth: Any = None
        if o.user is not None:
            auth = pulsar.AuthenticationBasic(o.user, o.password or "")
        elif o.password is not None:
            auth = pulsar.AuthenticationToken(o.password)
        try:
            return pulsar.Client(
                o.service_url,
                authentication=auth,
                logger=_client_logger(),
                **o.client_settings(),
            )
        except (ValueError, pulsar.PulsarException) as exc:
            raise ConfigurationError(
                f"invalid Pulsar settings for {o.display}: {o.scrub(exc)}"
            ) from None

    async def connect(self) -> None:
        """Check the broker answers, then subscribe; `BrokerUnavailable` if unreachable."""
        if self._consumer is not None:
            return
        self._loop = asyncio.get_running_loop()
        client = self._new_client()
        try:
            consumer = await self._subscribe(client)
        except BaseException:
            await _close_quietly(client.close, "client")
            raise
        self._client, self._consumer = client, consumer
        self._executor = ThreadPoolExecutor(_RECEIVERS, thread_name_prefix="outboxkit-pulsar")
        target = self.target if isinstance(self.target, str) else ", ".join(self.target)
        _log.info(
            "consuming Pulsar at %s as subscription %s (topics: %s)",
            self.options.display,
            self.name,
            target,
        )

    async def _subscribe(self, client: pulsar.Client) -> pulsar.Consumer:
        o = self.options
        probe = self.target[0] if isinstance(self.target, list) else o.full_name(_PROBE_TOPIC)
        bound = o.operation_timeout + _GRACE
        try:
            async with asyncio.timeout(bound):
                await asyncio.to_thread(client.get_topic_partitions, probe)
        except (TimeoutError, pulsar.PulsarException) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else o.scrub(exc)
            raise BrokerUnavailable(f"cannot reach Pulsar at {o.display}: {reason}") from None
        topics: Any = re.compile(self.target) if isinstance(self.target, str) else self.target
        try:
            async with asyncio.timeout(bound):
                return await asyncio.to_thread(
                    client.subscribe,
                    topics,
                    self.name,
                    consumer_type=pulsar.ConsumerType.Failover,
                    initial_position=pulsar.InitialPosition.Earliest,
                    receiver_queue_size=o.receiver_queue_size,
                    pattern_auto_discovery_period=o.discovery_interval,
                )
        except (TimeoutError, *_UNREACHABLE) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else o.scrub(exc)
            if isinstance(self.target, str):
                # The broker answered the lookup just before: it does not answer this.
                raise ConfigurationError(
                    f"Pulsar at {o.display} did not answer the regex subscription "
                    f"{self.target} ({reason}): it may not list a namespace's topics "
                    "(pulsar-lite does not); use topic= or exact handler topics"
                ) from None
            raise BrokerUnavailable(
                f"cannot subscribe {self.name} at Pulsar {o.display}: {reason}"
            ) from None
        except pulsar.PulsarException as exc:
            raise ConfigurationError(
                f"Pulsar at {o.display} refused subscription {self.name}: {o.scrub(exc)}"
            ) from None

    # -- fetching --------------------------------------------------------------------------

    async def fetch(self, max_messages: int, wait: float) -> list[Delivery]:
        """Up to `max_messages` deliveries; [] after about `wait` s or while Pulsar is down."""
        consumer, executor = self._consumer, self._executor
        if consumer is None or executor is None:
            raise RuntimeError("PulsarConsumer.fetch() before connect() or after close()")
        max_messages = max(1, max_messages)
        if not self._stash:
            wait_ms = max(0, round(wait * 1000))
            loop = asyncio.get_running_loop()
            try:
                # The receive's own timeout ends it; ours is a hang guard. Should we stop
                # waiting first (or be cancelled), what it receives lands in the stash.
                async with asyncio.timeout(wait + self.options.timeout + _GRACE):
                    await loop.run_in_executor(
                        executor, self._receive, consumer, max_messages, wait_ms
                    )
            except TimeoutError:
                return []
            except pulsar.PulsarException as exc:
                if self._consumer is None:  # closed meanwhile
                    return []
                self._fetch_failed(exc)
                await asyncio.sleep(wait)
                return []
        self._watch(consumer)
        return self._deliveries(self._take(max_messages))

    def _receive(self, consumer: pulsar.Consumer, count: int, wait_ms: int) -> None:
        """The first message (waiting up to `wait_ms`), then what is already there (thread)."""
        received: list[tuple[pulsar.Message, int]] = []
        try:
            first = consumer.receive(wait_ms)
            received.append((first, first.redelivery_count() + 1))
            while len(received) < count:
                more = consumer.receive(0)
                received.append((more, more.redelivery_count() + 1))
        except pulsar.Timeout:
            pass
        except pulsar.AlreadyClosed:
            return
        finally:
            if received:
                with self._stash_lock:
                    self._stash.extend(received)

    def _take(self, count: int) -> list[tuple[pulsar.Message, int]]:
        with self._stash_lock:
            return [self._stash.popleft() for _ in range(min(count, len(self._stash)))]

    def _deliveries(self, msgs: list[tuple[pulsar.Message, int]]) -> list[Delivery]:
        deliveries: list[Delivery] = []
        for msg, attempt in msgs:
            message, malformed = decode(msg, self.options)
            if message is not None and not self._wanted(message.topic):
                _log.debug("subscription %s: no handler for %s; acked", self.name, message.topic)
                self._ack(msg)
                continue
            if message is not None and str(message.message_id) in self._acked:
                _log.debug("subscription %s: %s acked already", self.name, message.message_id)
                self._ack(msg)
                continue
            deliveries.append(PulsarDelivery(self, msg, message, malformed, attempt))
        if deliveries and self._failing:
            self._failing = False
            _log.info("fetching from Pulsar at %s again", self.options.display)
        return deliveries

    def _wanted(self, topic: str) -> bool:
        return matches_any(self.patterns, topic)

    def _watch(self, consumer: pulsar.Consumer) -> None:
        """Log a lost connection once, and its return."""
        connected = consumer.is_connected()
        if not connected and not self._disconnected:
            _log.warning("disconnected from Pulsar at %s; reconnecting", self.options.display)
        elif connected and self._disconnected:
            _log.info("reconnected to Pulsar at %s", self.options.display)
        self._disconnected = not connected

    def _fetch_failed(self, exc: BaseException) -> None:
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        _log.log(
            level,
            "fetching from Pulsar at %s failed (%s: %s); retrying",
            self.options.display,
            type(exc).__name__,
            self.options.scrub(exc),
        )

    # -- settling --------------------------------------------------------------------------

    def _ack(self, msg: pulsar.Message, message: Message | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return  # closed: the broker redelivers it
        if message is not None:
            self._acked[str(message.message_id)] = None
            if len(self._acked) > _RECENT_ACKS:
                self._acked.popitem(last=False)
        try:
            consumer.acknowledge(msg)
        except pulsar.PulsarException as exc:
            _log.warning(
                "could not ack Pulsar message %s (%s); it will be redelivered",
                msg.message_id(),
                type(exc).__name__,
            )

    def _nak(self, msg: pulsar.Message, attempt: int, delay: float) -> None:
        loop = self._loop
        if self._consumer is None or loop is None:
            return  # closed: the broker redelivers it

        def requeue() -> None:
            self._timers.discard(timer)
            if self._consumer is not None:
                with self._stash_lock:
                    self._stash.appendleft((msg, attempt))

        timer = loop.call_later(max(delay, 0.0), requeue)
        self._timers.add(timer)

    # -- closing ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the subscription's consumer and the client; safe to call twice.

        Messages received but not acked (including those waiting for a nak) are then
        redelivered by the broker.
        """
        consumer, client, executor = self._consumer, self._client, self._executor
        self._consumer = self._client = self._executor = None
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        with self._stash_lock:
            self._stash.clear()
        if consumer is not None:
            await _close_quietly(consumer.close, "consumer", self.options.timeout + _GRACE)
        if client is not None:
            await _close_quietly(client.close, "client", self.options.timeout + _GRACE)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


async def _close_quietly(close: Any, what: str, bound: float = 2 * _GRACE) -> None:
    try:
        async with asyncio.timeout(bound):
            await asyncio.to_thread(close)
    except TimeoutError:
        _log.warning("closing the Pulsar %s timed out", what)
    except pulsar.PulsarException as exc:
        _log.debug("closing the Pulsar %s: %s", what, exc)


def create(url: str, subscription: Subscription) -> PulsarConsumer:
    """A consumer for a `pulsar://` URL (see the module docstring for its options)."""
    options = parse_url(url)
    if not subscription.topics:
        raise ConfigurationError(
            f"consumer {subscription.consumer!r} has no handlers: nothing to subscribe to"
        )
    return PulsarConsumer(options, subscription)
