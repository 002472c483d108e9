"""Pulsar publisher (pulsar-client): a message is acked once the broker sent its receipt.

The Pulsar adapter is verified against pulsar-lite (a Pulsar-protocol broker), not Apache
Pulsar: Apache Pulsar is a JVM service that cannot be installed on the machines this project
is tested on, while the `pulsar-lite` wheel bundles a broker that speaks the Pulsar binary
protocol.

URL: `pulsar://[user:password@ | :token@]host[:port][,host2[:port]...][?option=value&...]`,
or `pulsar+ssl://…` for TLS (port 6650, 6651 with TLS). `user:password` is basic auth,
`:token` (an empty user) a token (JWT) auth; percent-encode what a URL cannot hold. Options:

- `tenant=public`, `namespace=default`: where the topics live.
- `topic_prefix=` (empty): a message goes to `persistent://{tenant}/{namespace}/{topic_prefix
  + topic}`, with every character outside `[A-Za-z0-9._-]` replaced by `_` (and
  `-partition-`, which Pulsar reads as a partition suffix, becoming `_partition-`).
- `topic=`: one Pulsar topic (a local name) for every message instead; the outboxkit topic
  still travels in the envelope, and the consumer filters on it.
- `timeout=10`: seconds for a send receipt (the producer's send timeout) and for the
  client's operations (lookups, creating a producer; whole seconds, rounded up).
- `connect_timeout=5`: seconds to open a TCP connection.
- `tls_trust_certs=` a CA bundle (default: certifi's), `tls_allow_insecure=false`,
  `tls_validate_hostname=true`.
- `max_message_bytes=5242880`: the broker's `maxMessageSize` (Pulsar's default). The client
  refuses a message whose payload plus metadata exceeds it minus 10 KiB (a frame padding),
  so `capabilities.max_message_bytes` is that budget, and a message whose payload, key and
  envelope properties exceed it is rejected before sending.

The consumer's options (`receiver_queue_size`, `discovery_interval`) are accepted and
ignored, so one URL serves both sides.

Each message carries the envelope (`outbox.envelope`) as Pulsar properties; the message key
is the partition key (a keyless message has none), so on a partitioned topic one key always
lands in one partition; one producer per topic sends in order and the consumer's Failover
subscription reads a partition in order: `ordered_per_key`. Batching is off: a batch is one
broker entry, so redelivering one message redelivers the whole batch, and a Key_Shared
reader would need key-based batches, which the relay's one message per key per call never
fills (for keyed messages, batching measured no faster here). Pulsar deduplicates by
producer name and sequence id only when the namespace enables it, and pulsar-lite does
not: `broker_dedup` is False (the inbox drops duplicates).

`connect()` looks up one topic (the `topic=` one, or `outboxkit-connection-probe`, which
is never written to; a broker that creates topics on lookup may create it) to check that
the broker answers. One producer per Pulsar topic (the most recently used 256 are kept),
created on first use. A batch is sent at once with `send_async`; the receipts arrive on
the client's threads and are handed to the event loop with `call_soon_threadsafe`, so the
loop never blocks. Blocking client calls (a lookup, creating a producer, closing) run in
worker threads, bounded by `timeout`. Outcomes:

- acked: a receipt without error (the broker has persisted the message).
- reject (dead-letter): too large (checked first, or the client's `MessageTooBig`), a topic
  the broker refuses (`InvalidTopicName`, `TopicNotFound` when it does not create topics,
  `AuthorizationError`, `NotAllowedError`, `TopicTerminated`).
- unreachable (the relay pauses, no attempt counted): the client cannot connect, a producer
  is disconnected (answered at once, nothing queued: the client reconnects by itself), an
  authentication failure, or a timeout (`Timeout`, or no receipt at all within `timeout`
  plus 5 s) while the broker answers nothing: neither another message of the batch nor a
  topic lookup made right then.
- retry: anything else, including a timeout while the broker is demonstrably up (another
  message was acked, or the lookup is answered): then the message itself is stuck.

A send that got no receipt at all may stay stuck in its producer, resent on every
reconnect, stalling the messages behind it. pulsar-lite, for one, drops the connection on
a message over its own limit (which it does not tell clients: set `max_message_bytes` to
it), and the other sends on that connection may fail with it (retried, attempts counted).
A connection that died silently stalls everything too. In both cases the client (with its
producers) is replaced on the next call and the old one closed in the background.

The client's own log is discarded (the adapter logs outages itself). It cannot go through
Python's logging: pulsar-client keeps a per-thread wrapper of a Python logger whose
destructor takes the GIL, and a worker thread ending while the interpreter finalizes then
aborts the process (seen here in about one run in six). A log file is no option either:
the client's logger is process-wide, set by the first client of a process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import pulsar

from outboxkit.brokers.publishing import Capabilities, Outcome
from outboxkit.brokers.pulsar import options as pulsar_url
from outboxkit.brokers.pulsar.options import FRAME_PADDING, PulsarOptions
from outboxkit.outbox.envelope import to_headers
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError
from outboxkit.outbox.message import Message

_log = logging.getLogger(__name__)

_GRACE = 5.0  # seconds beyond the client's own timeouts before we stop waiting (hang guard)
_MAX_PRODUCERS = 256
_MAX_PENDING = 100_000  # sends one producer may have in flight: more than any batch
_METADATA_OVERHEAD = 256  # bytes of message metadata besides key and properties (bound)
_PROPERTY_OVERHEAD = 8  # protobuf framing per property (bound)
_PROBE_TOPIC = "outboxkit-connection-probe"  # looked up (never created) by connect()

_REJECT = frozenset(
    {
        pulsar.Result.MessageTooBig,
        pulsar.Result.InvalidTopicName,
        pulsar.Result.TopicNotFound,
        pulsar.Result.AuthorizationError,
        pulsar.Result.NotAllowedError,
        pulsar.Result.TopicTerminated,
        pulsar.Result.InvalidMessage,
    }
)
_UNREACHABLE = frozenset(
    {
        pulsar.Result.ConnectError,
        pulsar.Result.NotConnected,
        pulsar.Result.AlreadyClosed,
        pulsar.Result.AuthenticationError,
        pulsar.Result.ErrorGettingAuthenticationData,
        pulsar.Result.LookupError,
        pulsar.Result.ServiceUnitNotReady,
        pulsar.Result.TooManyLookupRequestException,
        pulsar.Result.ProducerNotInitialized,
    }
)


def parse_url(url: str) -> PulsarOptions:
    """`PulsarOptions` from a broker URL; `ConfigurationError` for anything malformed."""
    return pulsar_url.parse_url(url, "publisher")


def client_logger() -> Any:
    """The client's own log: discarded (see the module docstring)."""
    return pulsar.FileLogger(pulsar.LoggerLevel.Error, os.devnull)


def new_client(options: PulsarOptions) -> pulsar.Client:
    """A pulsar-client `Client` for `options` (it connects lazily); `ConfigurationError`."""
    auth: Any = None
    if options.user is not None:
        auth = pulsar.AuthenticationBasic(options.user, options.password or "")
    elif options.password is not None:
        auth = pulsar.AuthenticationToken(options.password)
    try:
        return pulsar.Client(
            options.service_url,
            authentication=auth,
            logger=client_logger(),
            **options.client_settings(),
        )
    except (ValueError, pulsar.PulsarException) as exc:
        raise ConfigurationError(
            f"invalid Pulsar settings for {options.display}: {options.scrub(exc)}"
        ) from None


def result_of(exc: pulsar.PulsarException) -> pulsar.Result:
    """The `pulsar.Result` a client exception stands for (its class has the result's name)."""
    result: pulsar.Result = pulsar.Result.__members__.get(
        type(exc).__name__, pulsar.Result.UnknownError
    )
    return result


class PulsarPublisher:
    """Publishes to one Pulsar cluster through one client and a producer per topic."""

    def __init__(self, options: PulsarOptions) -> None:
        self.options = options
        self.capabilities = Capabilities(
            ordered_per_key=True,
            broker_dedup=False,
            max_message_bytes=options.max_message_bytes - FRAME_PADDING,
        )
        self._client: pulsar.Client | None = None
        self._producers: collections.OrderedDict[str, pulsar.Producer] = collections.OrderedDict()
        self._stale: str | None = None  # why the client must be replaced before reuse
        self._closing: set[asyncio.Task[None]] = set()
        self._probe_topic = options.full_name(options.topic or _PROBE_TOPIC)
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        """Create the client and check the broker answers a lookup; `BrokerUnavailable` if not."""
        async with self._lock:
            await self._connect()

    async def _connect(self) -> None:
        if self._client is not None and self._stale is None:
            return
        if self._client is not None:
            _log.warning("replacing the Pulsar client: %s", self._stale)
            self._discard()
        client = new_client(self.options)
        o = self.options
        try:
            async with asyncio.timeout(o.operation_timeout + _GRACE):
                await asyncio.to_thread(client.get_topic_partitions, self._probe_topic)
        except (TimeoutError, pulsar.PulsarException) as exc:
            self._close_later(client)
            reason = "timed out" if isinstance(exc, TimeoutError) else o.scrub(exc)
            raise BrokerUnavailable(f"cannot reach Pulsar at {o.display}: {reason}") from None
        self._client, self._stale = client, None

    async def publish(self, batch: Sequence[Message]) -> list[Outcome]:
        """Send the whole batch, then wait for every receipt (one deadline)."""
        if not batch:
            return []
        async with self._lock:
            try:
                await self._connect()
            except (BrokerUnavailable, ConfigurationError) as exc:
                # Nothing is wrong with the messages: the relay pauses and tries again later.
                return [Outcome.unreachable(str(exc))] * len(batch)
            return await self._publish(batch)

    async def _publish(self, batch: Sequence[Message]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        by_topic: dict[str, list[int]] = {}
        properties = [to_headers(message) for message in batch]
        for index, message in enumerate(batch):
            refusal = self._refusal(message, properties[index])
            if refusal is not None:
                outcomes[index] = refusal
            else:
                by_topic.setdefault(self.options.pulsar_topic(message.topic), []).append(index)
        producers = await self._producers_for(list(by_topic))
        loop = asyncio.get_running_loop()
        receipts: dict[int, asyncio.Future[pulsar.Result]] = {}
        for topic, indexes in by_topic.items():
            producer = producers[topic]
            if isinstance(producer, Outcome):
                for index in indexes:
                    outcomes[index] = producer
                continue
            if not producer.is_connected():
                down = Outcome.unreachable(f"disconnected from Pulsar at {self.options.display}")
                for index in indexes:
                    outcomes[index] = down
                continue
            for index in indexes:
                receipts[index] = _send(loop, producer, batch[index], properties[index])
        if receipts:
            await asyncio.wait(receipts.values(), timeout=self.options.timeout + _GRACE)
        results: dict[int, pulsar.Result | None] = {}
        for index, receipt in receipts.items():
            results[index] = receipt.result() if receipt.done() else None
            receipt.cancel()
        if any(r is None for r in results.values()):
            # A send that never completed (not even with the client's own Timeout) can
            # stay stuck in its producer, resent on every reconnect, stalling what follows
            # (pulsar-lite drops the connection on a message over its limit): start afresh.
            self._stale = "a send got no receipt"
        answered = any(r == pulsar.Result.Ok for r in results.values())
        silent = [i for i, r in results.items() if r is None or r == pulsar.Result.Timeout]
        broker_up = answered or (bool(silent) and await self._answers())
        if silent and not broker_up:
            # A connection that died silently may look alive to the client for a long
            # time: start afresh next time.
            self._stale = "the broker answered neither sends nor a lookup"
        for index, result in results.items():
            outcomes[index] = self._outcome(result, broker_up)
        return [o or Outcome.retry("not sent") for o in outcomes]

    async def _answers(self) -> bool:
        """Whether the broker answers a lookup: tells a dead broker from stuck messages."""
        client, o = self._client, self.options
        if client is None:
            return False
        try:
            async with asyncio.timeout(o.operation_timeout + _GRACE):
                await asyncio.to_thread(client.get_topic_partitions, self._probe_topic)
        except (TimeoutError, pulsar.PulsarException):
            return False
        return True

    def _refusal(self, message: Message, properties: dict[str, str]) -> Outcome | None:
        """Why `message` can never be sent, or None."""
        local = self.options.local_name(message.topic)
        if not pulsar_url.valid_topic(local):
            return Outcome.reject(f"topic {message.topic!r} maps to no valid Pulsar topic")
        size = _message_size(message, properties)
        budget = self.capabilities.max_message_bytes
        if budget is not None and size > budget:
            return Outcome.reject(
                f"message is about {size} bytes with its key and properties; Pulsar takes "
                f"{budget} (max_message_bytes {self.options.max_message_bytes} less "
                f"{FRAME_PADDING} of framing)"
            )
        return None

    def _outcome(self, result: pulsar.Result | None, broker_up: bool) -> Outcome:
        """The outcome of one send: `result` None when no receipt came at all."""
        if result == pulsar.Result.Ok:
            return Outcome.ok()
        if result is None or result == pulsar.Result.Timeout:
            text = f"no Pulsar receipt within {self.options.timeout:g}s"
            # A timeout is the message's fault only if the broker is demonstrably up.
            return Outcome.retry(text) if broker_up else Outcome.unreachable(text)
        text = f"Pulsar error {result.name}"
        if result in _REJECT:
            return Outcome.reject(text)
        if result in _UNREACHABLE:
            return Outcome.unreachable(f"{text} from {self.options.display}")
        return Outcome.retry(text)

    async def _producers_for(self, topics: list[str]) -> dict[str, pulsar.Producer | Outcome]:
        """The producer of each topic, created as needed; an `Outcome` where that failed."""
        found: dict[str, pulsar.Producer | Outcome] = {}
        missing = []
        for topic in topics:
            producer = self._producers.get(topic)
            if producer is None:
                missing.append(topic)
            else:
                self._producers.move_to_end(topic)
                found[topic] = producer
        if missing:
            created = await asyncio.gather(*(self._create_producer(t) for t in missing))
            found.update(zip(missing, created, strict=True))
            self._evict(set(topics))
        return found

    async def _create_producer(self, topic: str) -> pulsar.Producer | Outcome:
        client = self._client
        assert client is not None
        o = self.options
        try:
            async with asyncio.timeout(o.operation_timeout + _GRACE):
                producer = await asyncio.to_thread(
                    client.create_producer,
                    topic,
                    send_timeout_millis=max(1, round(o.timeout * 1000)),
                    batching_enabled=False,
                    block_if_queue_full=False,
                    max_pending_messages=_MAX_PENDING,
                    max_pending_messages_across_partitions=_MAX_PENDING,
                )
        except TimeoutError:
            return Outcome.unreachable(f"creating a Pulsar producer for {topic} timed out")
        except pulsar.PulsarException as exc:
            result = result_of(exc)
            text = f"cannot create a Pulsar producer for {topic}: {result.name}"
            if result in _REJECT:
                return Outcome.reject(text)
            if result in _UNREACHABLE or result == pulsar.Result.Timeout:
                return Outcome.unreachable(text)
            return Outcome.retry(text)
        self._producers[topic] = producer
        return producer

    def _evict(self, keep: set[str]) -> None:
        """Drop the least recently used producers beyond `_MAX_PRODUCERS` (closed later)."""
        excess = len(self._producers) - _MAX_PRODUCERS
        old = [t for t in self._producers if t not in keep][: max(excess, 0)]
        for topic in old:
            producer = self._producers.pop(topic)
            task = asyncio.create_task(_close_producer(producer, self.options))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _discard(self) -> None:
        """Drop the client and its producers; they close in the background."""
        client, self._client = self._client, None
        self._producers.clear()
        if client is not None:
            self._close_later(client)

    def _close_later(self, client: pulsar.Client) -> None:
        task = asyncio.create_task(_close_quietly(client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close the producers and the client (bounded by `timeout`); safe to call twice."""
        async with self._lock:
            self._discard()
            if self._closing:
                await asyncio.gather(*self._closing)


def _send(
    loop: asyncio.AbstractEventLoop,
    producer: pulsar.Producer,
    message: Message,
    properties: dict[str, str],
) -> asyncio.Future[pulsar.Result]:
    """Hand `message` to the producer; its receipt's result arrives in the future."""
    receipt: asyncio.Future[pulsar.Result] = loop.create_future()

    def on_receipt(result: pulsar.Result, _message_id: object) -> None:
        # On a client thread: hand over to the loop (which may be gone by now).
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, receipt, result)

    try:
        producer.send_async(
            message.payload,
            on_receipt,
            properties=properties,
            partition_key=message.key,
        )
    except pulsar.PulsarException as exc:
        receipt.set_result(result_of(exc))
    return receipt


def _settle(receipt: asyncio.Future[pulsar.Result], result: pulsar.Result) -> None:
    if not receipt.done():
        receipt.set_result(result)


def _message_size(message: Message, properties: dict[str, str]) -> int:
    """An upper bound of the bytes the client counts: payload plus metadata."""
    block = sum(
        len(k.encode()) + len(v.encode()) + _PROPERTY_OVERHEAD for k, v in properties.items()
    )
    key = len(message.key.encode()) if message.key is not None else 0
    return _METADATA_OVERHEAD + len(message.payload) + key + block


async def _close_producer(producer: pulsar.Producer, options: PulsarOptions) -> None:
    """Close `producer` in a worker thread; give up waiting after the operation timeout."""

    def close() -> None:
        try:
            producer.close()
        except pulsar.PulsarException as exc:
            _log.debug("closing a Pulsar producer: %s", exc)

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(options.operation_timeout + _GRACE):
            await asyncio.to_thread(close)


async def _close_quietly(client: pulsar.Client) -> None:
    """Close `client` in a worker thread; give up waiting after the operation timeout."""

    def close() -> None:
        try:
            client.close()
        except pulsar.PulsarException as exc:
            _log.debug("closing the Pulsar client: %s", exc)

    try:
        async with asyncio.timeout(_GRACE * 2):
            await asyncio.to_thread(close)
    except TimeoutError:
        _log.warning("closing the Pulsar client timed out")


def create(url: str) -> PulsarPublisher:
    """A publisher for a `pulsar://` URL (see the module docstring for its options)."""
    return PulsarPublisher(parse_url(url))
