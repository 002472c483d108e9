"""Redis Streams consumer (redis-py asyncio): one consumer group per inbox consumer name.

URL: the publisher's (see `redis.publisher` and `redis.options`: credentials, db,
`stream=outboxkit` or `per_topic=true` + `prefix=outboxkit:`, `timeout`, `connect_timeout`,
TLS), plus:

- `claim_idle=30`: seconds an entry may stay delivered but unacked before any consumer of
  the group takes it over (XAUTOCLAIM): the redelivery of a crashed or stuck consumer's
  messages. A fetched batch should be handled within it; a late ack only costs a
  redelivery, which the inbox absorbs.

The group is named after the inbox consumer and created on connect at id `0` with MKSTREAM:
a new group reads the whole stream, including what was published before it existed (as
far as `maxlen` trimming left it). To start a new group at the end instead, create it
yourself first (`XGROUP CREATE <stream> <consumer> $ MKSTREAM`): an existing group is
never changed. The consumer inside the group is `hostname-pid-random`; on `close()` it
removes itself from the group if it holds no pending entries (a crashed one stays listed,
holding nothing once its entries were taken over).

Topics: with the single stream, every handler pattern (`*` = any run of characters) is
matched here against the entry's topic field; an entry no handler wants is acked and
skipped (logged at debug). With `per_topic=true` the group reads the streams
`prefix + topic` of the handlers' topics, which must be exact (a pattern cannot name
streams); `ConfigurationError` otherwise.

Deliveries: XREADGROUP (BLOCK up to `wait`) gives new entries; `attempt` is the entry's
delivery count (XPENDING), 1 for a new one. `ack()` is an XACK. Redis has no delayed
redelivery, so `nak(delay)` leaves the entry pending, claims it again at once (resetting
its idle time) and remembers locally when it is due; a later `fetch` claims it back with
XCLAIM (which counts a delivery) once due, and meanwhile keeps claiming it every
`claim_idle / 3` seconds so that nobody takes it over early. If this process dies, the
group's other consumers take the entry over after `claim_idle`: the delay is only kept
while the consumer that nakked lives.

Outages: while Redis is down or silent, `fetch` waits `wait` seconds and returns nothing
(the failure logged once until a fetch succeeds); the client reconnects on the next call.
A group that vanished (a server that lost its data) is created again. An ack that cannot
be sent is logged and the entry is redelivered after `claim_idle`.

Requires Redis 6.2 or later (XAUTOCLAIM); 7.0 or later also clears entries that trimming
removed while they were pending (logged as lost). ACL: PING, XGROUP, XREADGROUP, XACK,
XCLAIM, XAUTOCLAIM and XPENDING on the stream keys; INFO (version check) and EVAL (leaving
the group on close) are used when allowed. The publisher needs only PING and XADD.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
import redis.exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from outboxkit.brokers.consuming import Delivery, Subscription
from outboxkit.brokers.redis import options as redis_url
from outboxkit.brokers.redis.options import PAYLOAD_FIELD, RedisOptions
from outboxkit.outbox.envelope import Malformed, from_headers, native_text, salvage
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError, InvalidMessage
from outboxkit.outbox.message import Message
from outboxkit.outbox.topics import any_of

_log = logging.getLogger(__name__)

MIN_VERSION = (6, 2)
_DOWN = (rex.ConnectionError, rex.TimeoutError, OSError, TimeoutError)
# Delete this consumer from its group only if it holds no pending entry (atomically).
_LEAVE_GROUP = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""

Entry = tuple[str, str]  # (stream key, entry id)


def parse_url(url: str) -> RedisOptions:
    """`RedisOptions` from a broker URL; `ConfigurationError` for anything malformed."""
    return redis_url.parse_url(url)


def consumer_name() -> str:
    """This process's consumer name inside a group: `hostname-pid-random`."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _matcher(patterns: Iterable[str]) -> re.Pattern[str]:
    return any_of(patterns)


def decode_entry(fields: Mapping[Any, Any], *, topic: str | None = None) -> Message | Malformed:
    """The message a publisher sent in a stream entry's fields (bytes as Redis gives them),
    or why it is broken (see `redis.options` for the layout).

    Names and values that are not UTF-8 are refused by `from_headers`, which names them;
    a missing payload field leaves the rest of the envelope to identify the entry.
    """
    payload: bytes | None = None
    headers: dict[str, str] = {}
    for raw_name, raw_value in fields.items():
        name = native_text(raw_name)
        if name == PAYLOAD_FIELD:
            payload = _as_bytes(raw_value)
        else:
            headers.setdefault(name, native_text(raw_value))
    if payload is None:
        return salvage(headers, b"", f"no {PAYLOAD_FIELD} field", topic=topic)
    try:
        return from_headers(headers, payload, topic=topic)
    except InvalidMessage as exc:
        return Malformed.of(exc, payload)


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return native_text(value).encode("utf-8", "surrogatepass")  # decoded by the client


@dataclass(eq=False)
class RedisDelivery:
    """A stream entry and its decoded envelope."""

    consumer: RedisConsumer
    entry: Entry
    message: Message | None
    malformed: Malformed | None
    attempt: int

    async def ack(self) -> None:
        """XACK the entry (a failed ack is logged: the entry comes back after claim_idle)."""
        await self.consumer.settle(self.entry, None)

    async def nak(self, delay: float) -> None:
        """Leave the entry pending and claim it back after `delay` seconds."""
        await self.consumer.settle(self.entry, delay)


@dataclass
class _Nakked:
    due: float  # event loop time
    claimed: float  # when we last (re)claimed it: its idle time started then


class RedisConsumer:
    """Reads one consumer group over a connection pool (blocking reads get their own)."""

    def __init__(self, options: RedisOptions, subscription: Subscription) -> None:
        self.options = options
        self.group = subscription.consumer
        self.name = consumer_name()
        self.wanted = _matcher(subscription.topics)
        self.streams: tuple[str, ...] = (
            tuple(dict.fromkeys(options.prefix + t for t in subscription.topics))
            if options.per_topic
            else (options.stream,)
        )
        self._client: redis.asyncio.Redis | None = None
        self._reader: redis.asyncio.Redis | None = None  # no socket timeout: BLOCK reads
        self._buffer: deque[RedisDelivery] = deque()
        self._nakked: dict[Entry, _Nakked] = {}
        self._cursors = dict.fromkeys(self.streams, "0-0")
        self._next_sweep = 0.0
        self._stale = False  # create the groups again before the next read
        self._failing = False  # a failed fetch was logged; quiet until one succeeds

    @property
    def _guard(self) -> float:
        return self.options.connect_timeout + 3 * self.options.timeout + 1

    @property
    def _claim_idle_ms(self) -> int:
        return max(1, int(self.options.claim_idle * 1000))

    # -- connecting --------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect (failing fast), check the server and create the group where missing."""
        if self._client is not None:
            return
        client, reader = _new_client(self.options), _new_client(self.options, socket_timeout=None)
        try:
            async with asyncio.timeout(self._guard):
                await client.ping()
                await self._check_version(client)
                await self._create_groups(client)
        except ConfigurationError:
            await _close_quietly(client, reader)
            raise
        except (*_DOWN, rex.RedisError) as exc:
            await _close_quietly(client, reader)
            raise BrokerUnavailable(
                f"cannot connect to Redis at {self.options.display}: {self._scrub(exc)}"
            ) from exc
        self._client, self._reader = client, reader
        _log.info(
            "consuming Redis stream%s %s at %s as group %s, consumer %s",
            "s" if len(self.streams) > 1 else "",
            ", ".join(self.streams),
            self.options.display,
            self.group,
            self.name,
        )

    async def _check_version(self, client: redis.asyncio.Redis) -> None:
        try:
            info: Mapping[str, Any] = await client.info("server")
        except rex.ResponseError:  # INFO denied: the commands will tell
            return
        version = str(info.get("redis_version", "0"))
        found = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
        if found < MIN_VERSION:
            raise ConfigurationError(
                f"Redis at {self.options.display} is {version}; the consumer needs 6.2 or later"
            )

    async def _create_groups(self, client: redis.asyncio.Redis) -> None:
        for stream in self.streams:
            try:
                await client.xgroup_create(stream, self.group, id="0", mkstream=True)
                _log.info("created consumer group %s on Redis stream %s", self.group, stream)
            except rex.ResponseError as exc:
                if str(exc).startswith("BUSYGROUP"):
                    continue
                if str(exc).startswith("WRONGTYPE"):
                    raise ConfigurationError(
                        f"key {stream!r} at {self.options.display} is not a stream"
                    ) from None
                raise

    # -- fetching ----------------------------------------------------------------------

    async def fetch(self, max_messages: int, wait: float) -> list[Delivery]:
        """Up to `max_messages` deliveries; [] after about `wait` seconds or while Redis is down."""
        client, reader = self._client, self._reader
        if client is None or reader is None:
            raise RuntimeError("RedisConsumer.fetch() before connect() or after close()")
        wait = max(wait, 0.001)
        found = self._take(max_messages)
        try:
            async with asyncio.timeout(wait + self._guard):
                if self._stale:
                    await self._create_groups(client)
                    self._stale = False
                if len(found) < max_messages:
                    found += await self._reclaim(client, max_messages - len(found))
                if len(found) < max_messages:
                    block = 0.0 if found else self._block_time(wait)
                    found += await self._read(reader, max_messages - len(found), block)
        except (*_DOWN, rex.RedisError, ConfigurationError) as exc:
            self._fetch_failed(exc)
            if not found:
                await asyncio.sleep(wait)
            return list(found)
        if self._failing:
            self._failing = False
            _log.info("fetching from Redis at %s again", self.options.display)
        return list(found)

    def _take(self, count: int) -> list[RedisDelivery]:
        taken: list[RedisDelivery] = []
        while self._buffer and len(taken) < count:
            taken.append(self._buffer.popleft())
        return taken

    def _block_time(self, wait: float) -> float:
        """`wait`, shortened to the next nakked entry's due or re-claim time."""
        now = self._now()
        until = now + wait
        touch = self.options.claim_idle / 3
        for nakked in self._nakked.values():
            until = min(until, nakked.due, nakked.claimed + touch)
        return max(until - now, 0.001)

    async def _read(
        self, reader: redis.asyncio.Redis, count: int, block: float
    ) -> list[RedisDelivery]:
        """New entries (XREADGROUP >), blocking up to `block` seconds if `block` > 0."""
        reply = await reader.xreadgroup(
            self.group,
            self.name,
            dict.fromkeys(self.streams, ">"),
            count=count,
            block=max(1, round(block * 1000)) if block > 0 else None,
        )
        found: list[RedisDelivery] = []
        for stream, entries in _stream_lists(reply):
            found += await self._deliveries(stream, entries, None)
        if len(found) > count:  # COUNT is per stream: keep the rest for the next fetch
            self._buffer.extend(found[count:])
            del found[count:]
        return found

    async def _reclaim(self, client: redis.asyncio.Redis, room: int) -> list[RedisDelivery]:
        """Nakked entries that are due, and entries idle longer than `claim_idle`.

        Nakked entries not due yet are claimed again (JUSTID: no delivery counted) so that
        their idle time never reaches `claim_idle`.
        """
        now = self._now()
        touch: list[tuple[Entry, float]] = []  # (entry, when we last claimed it)
        due: list[tuple[Entry, float]] = []
        for entry, nakked in list(self._nakked.items()):
            if nakked.due <= now and len(due) < room:
                # Taken off the list before any await: a concurrent fetch cannot claim
                # it too. Should the claim fail, XAUTOCLAIM finds it after claim_idle.
                del self._nakked[entry]
                due.append((entry, nakked.claimed))
            elif now - nakked.claimed >= self.options.claim_idle / 3:
                touch.append((entry, nakked.claimed))
        sweep = now >= self._next_sweep and len(due) < room
        if not (touch or due or sweep):
            return []
        pipe = client.pipeline(transaction=False)
        for justid, entries in ((True, touch), (False, due)):
            for (stream, entry_id), claimed_at in entries:
                # Only if idle since our own claim: whoever claimed it since keeps it.
                min_idle = int((now - claimed_at) * 500)
                pipe.xclaim(stream, self.group, self.name, min_idle, [entry_id], justid=justid)
        if sweep:
            self._next_sweep = now + self.options.claim_idle / 2
            for stream in self.streams:
                pipe.xautoclaim(
                    stream,
                    self.group,
                    self.name,
                    self._claim_idle_ms,
                    start_id=self._cursors[stream],
                    count=room - len(due),
                )
        replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, rex.ResponseError):
                raise reply
        for (entry, _), reply in zip(touch, replies, strict=False):
            still = self._nakked.get(entry)
            if still is None:
                continue
            if _ids(reply):
                still.claimed = now
            else:  # acked, trimmed or taken over meanwhile: not ours to track any more
                del self._nakked[entry]
        claimed: list[tuple[str, list[Any]]] = [
            (entry[0], reply)
            for (entry, _), reply in zip(due, replies[len(touch) :], strict=False)
            if reply
        ]
        if sweep:
            claimed += self._swept(replies[len(touch) + len(due) :], now)
        return await self._claimed(client, claimed)

    def _swept(self, replies: Sequence[Any], now: float) -> list[tuple[str, list[Any]]]:
        """The entries of the XAUTOCLAIM replies; their cursors kept for the next sweep."""
        claimed: list[tuple[str, list[Any]]] = []
        for stream, reply in zip(self.streams, replies, strict=True):
            cursor, entries = _text(reply[0]), list(reply[1] or ())
            self._cursors[stream] = cursor
            if cursor != "0-0":
                self._next_sweep = now  # more to scan: go on at the next fetch
            deleted = [_text(i) for i in reply[2]] if len(reply) > 2 and reply[2] else []
            if deleted:
                _log.warning(
                    "%d pending entries of group %s were trimmed from Redis stream %s before "
                    "being acked (maxlen too small?): %s",
                    len(deleted),
                    self.group,
                    stream,
                    ", ".join(deleted[:10]),
                )
            for entry_id, _ in entries:
                if entry_id is not None:
                    self._nakked.pop((stream, _text(entry_id)), None)
            claimed.append((stream, entries))
        return claimed

    async def _claimed(
        self, client: redis.asyncio.Redis, claimed: list[tuple[str, list[Any]]]
    ) -> list[RedisDelivery]:
        """Deliveries for claimed entries, with their delivery counts from XPENDING."""
        wanted = [
            (stream, _text(entry_id))
            for stream, entries in claimed
            for entry_id, fields in entries
            if entry_id is not None and fields is not None
        ]
        if not wanted:
            return []
        pipe = client.pipeline(transaction=False)
        for stream, entry_id in wanted:
            pipe.xpending_range(stream, self.group, entry_id, entry_id, 1)
        counts: dict[Entry, int] = {}
        for entry, reply in zip(wanted, await pipe.execute(), strict=True):
            if reply:  # no longer pending (acked meanwhile): nothing to deliver
                counts[entry] = int(reply[0]["times_delivered"])
        found: list[RedisDelivery] = []
        for stream, entries in claimed:
            found += await self._deliveries(stream, entries, counts)
        return found

    async def _deliveries(
        self, stream: str, entries: Iterable[Any], counts: Mapping[Entry, int] | None
    ) -> list[RedisDelivery]:
        """Decode entries; ack at once those whose topic no handler wants.

        `counts`: the delivery counts of claimed entries (one missing: no longer pending,
        skipped); None for new entries, delivered once so far.
        """
        found: list[RedisDelivery] = []
        unwanted: list[str] = []
        for raw_id, fields in entries:
            if raw_id is None or fields is None:
                continue  # a deleted entry (Redis 6.2): nothing to deliver
            entry = (stream, _text(raw_id))
            attempt = 1 if counts is None else counts.get(entry, 0)
            if not attempt:
                continue
            delivery = self._decode(entry, fields, attempt)
            message = delivery.message
            if message is not None and not self.wanted.fullmatch(message.topic):
                _log.debug("group %s: no handler for %s; acked", self.group, message.topic)
                unwanted.append(entry[1])
                continue
            found.append(delivery)
        if unwanted:
            await self._client_or_fail().xack(stream, self.group, *unwanted)
        return found

    def _decode(self, entry: Entry, fields: Mapping[Any, Any], attempt: int) -> RedisDelivery:
        topic = entry[0][len(self.options.prefix) :] if self.options.per_topic else None
        found = decode_entry(fields, topic=topic)
        if isinstance(found, Malformed):
            where = f"(Redis stream {entry[0]}, entry {entry[1]})"
            return RedisDelivery(self, entry, None, found.at(where), attempt)
        return RedisDelivery(self, entry, found, None, attempt)

    def _fetch_failed(self, exc: BaseException) -> None:
        if isinstance(exc, rex.ResponseError) and str(exc).startswith("NOGROUP"):
            self._stale = True  # the stream or group vanished: create them again
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        _log.log(
            level,
            "fetching from Redis at %s failed (%s: %s); retrying",
            self.options.display,
            type(exc).__name__,
            self._scrub(exc),
        )

    # -- acks --------------------------------------------------------------------------

    async def settle(self, entry: Entry, delay: float | None) -> None:
        """Ack `entry` (`delay` None) or nak it for `delay` seconds."""
        self._nakked.pop(entry, None)
        verb = "ack" if delay is None else "nak"
        try:
            client = self._client_or_fail()
            async with asyncio.timeout(self._guard):
                if delay is None:
                    await client.xack(entry[0], self.group, entry[1])
                    return
                now = self._now()
                mine = await client.xclaim(
                    entry[0], self.group, self.name, 0, [entry[1]], justid=True
                )
        except (*_DOWN, rex.RedisError, RuntimeError) as exc:
            _log.warning(
                "could not %s Redis entry %s of %s (%s: %s); it is redelivered after claim_idle",
                verb,
                entry[1],
                entry[0],
                type(exc).__name__,
                self._scrub(exc),
            )
            return
        if _ids(mine):  # still pending: claim it back once due
            self._nakked[entry] = _Nakked(due=now + max(delay, 0.0), claimed=now)

    # -- closing -----------------------------------------------------------------------

    async def close(self) -> None:
        """Leave the group if nothing is pending here, then close; safe to call twice."""
        client, reader, self._client, self._reader = self._client, self._reader, None, None
        self._buffer.clear()
        self._nakked.clear()
        if client is None or reader is None:
            return
        try:
            async with asyncio.timeout(self._guard):
                for stream in self.streams:
                    await client.eval(_LEAVE_GROUP, 1, stream, self.group, self.name)
        except (*_DOWN, rex.RedisError) as exc:
            _log.debug("leaving Redis group %s: %s", self.group, self._scrub(exc))
        await _close_quietly(client, reader)

    def _client_or_fail(self) -> redis.asyncio.Redis:
        if self._client is None:
            raise RuntimeError("the Redis consumer is closed")
        return self._client

    def _scrub(self, error: object) -> str:
        return redis_url.scrub(error, self.options)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()


def _new_client(options: RedisOptions, **overrides: Any) -> redis.asyncio.Redis:
    """A client that fails fast: one immediate retry, on a dropped connection only."""
    retry = Retry(NoBackoff(), 1, supported_errors=(rex.ConnectionError,))
    return redis.asyncio.Redis(**(options.client_kwargs() | overrides), retry=retry)


def _stream_lists(reply: Any) -> list[tuple[str, list[Any]]]:
    """XREADGROUP's reply as (stream, entries) pairs, whatever the client's shape."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, Mapping) else reply
    return [(_text(stream), list(entries or ())) for stream, entries in pairs]


def _ids(reply: Any) -> bool:
    return bool(reply) and not isinstance(reply, Exception)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _close_quietly(*clients: redis.asyncio.Redis) -> None:
    for client in clients:
        try:
            async with asyncio.timeout(5):
                await client.aclose()
        except (*_DOWN, rex.RedisError) as exc:
            _log.debug("closing the Redis client: %r", exc)


def create(url: str, subscription: Subscription) -> RedisConsumer:
    """A consumer for a `redis://` or `rediss://` URL (see the module docstring)."""
    options = parse_url(url)
    if not subscription.topics:
        raise ConfigurationError(
            f"consumer {subscription.consumer!r} has no handlers: nothing to subscribe to"
        )
    if options.per_topic and any("*" in topic for topic in subscription.topics):
        raise ConfigurationError(
            f"{options.display}: per_topic=true needs exact handler topics, not patterns "
            f"({', '.join(t for t in subscription.topics if '*' in t)}); use the single stream"
        )
    return RedisConsumer(options, subscription)
