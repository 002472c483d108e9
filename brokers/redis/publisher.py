"""Redis Streams publisher (redis-py asyncio): a message is acked once its XADD succeeded.

URL: `redis://[[user]:password@]host[:port][/db][?option=value&...]`, or `rediss://` for
TLS. Connection, layout and TLS options are in `redis.options`; the publisher's own:

- `maxlen=N`: trim each stream to about N entries on every XADD (`MAXLEN ~ N`). Default:
  no trimming. Trimming does not know about consumer groups: it can drop entries that a
  group has not read or not acked yet, which are then lost for it. Size N for the longest
  consumer outage you want to survive, or trim yourself (XTRIM MINID) behind your slowest
  group.
- `max_message_bytes=N`: refuse a message whose payload (or any other field) is larger,
  before sending it. Default and upper bound: the server's `proto-max-bulk-len` (512 MiB
  unless configured; read with CONFIG GET at connect). Redis would answer a larger bulk
  string with a protocol error and drop the connection, failing the whole batch.
- `replicas=0`: with N > 0, the batch ends with `WAIT N` (timeout: half of `timeout`), and
  its messages count as acked only if N replicas confirmed them. Fewer confirmations give
  `unreachable` outcomes (the messages are in the stream already: republishing them adds
  duplicates, which the inbox absorbs).

Topic to stream: by default every topic goes to one stream (`stream=outboxkit`), the topic
travelling in a field. One stream keeps the order of a key across topics and lets a
consumer group follow topic patterns (`orders.*`) by filtering on its side; each group
reads (and acks at once) the entries it has no handler for. `per_topic=true` writes each
topic to its own stream `prefix + topic` (`prefix=outboxkit:`): groups read only the
streams they handle, but only exact topics can be consumed and order holds per key within
a topic only (`capabilities.ordered_per_key` is False).

Entry layout (see `redis.options`): one field per envelope header plus the payload in
`outboxkit-payload`. A batch is one pipeline (no MULTI): all XADDs are written at once and
their replies read in order; each reply is the ack of its message.

Durability: Redis replies after it has executed the XADD and, with `appendonly yes`,
normally after it has written the AOF buffer to the file. With `appendfsync always` the
reply waits for the fsync too: nothing acked is lost. With `appendfsync everysec` (Redis'
default) a crash of the Redis process normally loses nothing acked, a crash of the machine
up to about a second (two when a slow disk makes Redis postpone its AOF writes).
Without AOF an ack means "in memory" only: the publisher logs a warning at connect when
INFO says the AOF is off. A failover to a replica can lose acked entries unless
`replicas=N` is set. Redis Cluster is not supported (one node or a primary/replica set).

Errors: a refused connection, a timeout, a failed authentication, a loading, read-only or
out-of-memory server, or too few replica confirmations are `unreachable` (the relay pauses,
no attempt counted); a message over the size limit or with a header named
`outboxkit-payload` is rejected; WRONGTYPE or NOPERM are rejected with `per_topic=true` (the
topic's key is unusable) and `unreachable` for the single stream (nothing could pass);
other error replies are retried. Redis has no broker-side dedup: a message republished
after a lost reply is stored twice, and the inbox drops the second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import redis.asyncio
import redis.exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from outboxkit.brokers.publishing import Capabilities, Outcome
from outboxkit.brokers.redis import options as redis_url
from outboxkit.brokers.redis.options import PAYLOAD_FIELD, RedisOptions
from outboxkit.outbox.envelope import to_headers
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError
from outboxkit.outbox.message import Message

_log = logging.getLogger(__name__)

DEFAULT_MAX_BULK = 512 * 1024 * 1024  # Redis' default proto-max-bulk-len
# What a pipeline can fail with as a whole: the server is not there or not answering.
_DOWN = (rex.ConnectionError, rex.TimeoutError, OSError, TimeoutError)
# Error replies that are about the server's state, never about the message.
_SERVER_STATE = (rex.ReadOnlyError, rex.OutOfMemoryError, rex.ClusterDownError)
_SERVER_STATE_CODES = ("BUSY", "TRYAGAIN", "MOVED", "ASK", "CLUSTERDOWN", "MASTERDOWN")


def parse_url(url: str) -> RedisOptions:
    """`RedisOptions` from a broker URL; `ConfigurationError` for anything malformed."""
    return redis_url.parse_url(url)


def new_client(options: RedisOptions, **overrides: Any) -> redis.asyncio.Redis:
    """A client for `options` that fails fast: one immediate retry, on a dropped connection.

    The retry lets a command go through on a fresh connection when the pooled one died
    with a restarted server; timeouts are not retried (a silent server costs one timeout).
    """
    kwargs = options.client_kwargs() | overrides
    retry = Retry(NoBackoff(), 1, supported_errors=(rex.ConnectionError,))
    return redis.asyncio.Redis(**kwargs, retry=retry)


class RedisPublisher:
    """Publishes to Redis streams over one connection pool."""

    def __init__(self, options: RedisOptions) -> None:
        self.options = options
        self.capabilities = Capabilities(
            ordered_per_key=not options.per_topic,
            broker_dedup=False,
            max_message_bytes=options.max_message_bytes or DEFAULT_MAX_BULK,
        )
        self._client: redis.asyncio.Redis | None = None
        self._lock = asyncio.Lock()

    @property
    def _guard(self) -> float:
        """A hang guard for one exchange: connect, write, read (the socket has its own)."""
        return self.options.connect_timeout + 3 * self.options.timeout + 1

    async def connect(self) -> None:
        """Connect and check the server: PING, the bulk size limit, the stream's type."""
        async with self._lock:
            if self._client is None:
                await self._connect()

    async def _connect(self) -> None:
        o = self.options
        client = new_client(o)
        try:
            async with asyncio.timeout(self._guard):
                await client.ping()
                limit = await _bulk_limit(client)
                await self._check(client)
        except (*_DOWN, rex.RedisError) as exc:
            await _close_quietly(client)
            raise BrokerUnavailable(
                f"cannot connect to Redis at {o.display}: {self._scrub(exc)}"
            ) from exc
        except ConfigurationError:
            await _close_quietly(client)
            raise
        if o.max_message_bytes is not None:
            limit = min(limit, o.max_message_bytes)
        self.capabilities = replace(self.capabilities, max_message_bytes=limit)
        self._client = client

    async def _check(self, client: redis.asyncio.Redis) -> None:
        """Warn about a server without AOF; refuse a single stream key of another type.

        Both checks are skipped where the server refuses them (ACLs, renamed commands):
        the XADDs then say what is wrong.
        """
        o = self.options
        with contextlib.suppress(rex.ResponseError):
            info: Mapping[str, Any] = await client.info("persistence")
            if str(info.get("aof_enabled", "1")) != "1":
                _log.warning(
                    "Redis at %s runs without appendonly: an acked message lives in memory "
                    "only and a restart loses it",
                    o.display,
                )
        if not o.per_topic:
            with contextlib.suppress(rex.ResponseError):
                kind = _text(await client.type(o.stream))
                if kind not in ("none", "stream"):
                    raise ConfigurationError(
                        f"key {o.stream!r} at {o.display} is a {kind}, not a stream"
                    )

    async def publish(self, batch: Sequence[Message]) -> list[Outcome]:
        """XADD the batch in one pipeline; one outcome per message from its reply."""
        if not batch:
            return []
        try:
            await self.connect()
        except (BrokerUnavailable, ConfigurationError) as exc:
            return [Outcome.unreachable(str(exc))] * len(batch)
        client = self._client
        assert client is not None
        outcomes: list[Outcome | None] = [None] * len(batch)
        sent: list[int] = []
        pipe = client.pipeline(transaction=False)
        for index, message in enumerate(batch):
            entry = self._entry(message)
            if isinstance(entry, Outcome):
                outcomes[index] = entry
                continue
            pipe.xadd(
                self.options.stream_for(message.topic),
                entry,  # type: ignore[arg-type]  # bytes -> bytes is a valid field map
                maxlen=self.options.maxlen,
                approximate=True,
            )
            sent.append(index)
        if not sent:
            return [o for o in outcomes if o is not None]
        if self.options.replicas:
            pipe.wait(self.options.replicas, int(self.options.timeout * 500))
        try:
            async with asyncio.timeout(self._guard):
                replies = await pipe.execute(raise_on_error=False)
        except _DOWN as exc:
            down = Outcome.unreachable(
                f"Redis at {self.options.display} failed: {self._scrub(exc)}"
            )
            return [down if o is None else o for o in outcomes]
        for index, reply in zip(sent, replies, strict=False):
            outcomes[index] = self._outcome(reply)
        if self.options.replicas:
            self._require_replicas(replies[-1], outcomes)
        return [o if o is not None else Outcome.retry("no reply from Redis") for o in outcomes]

    def _entry(self, message: Message) -> Outcome | dict[bytes, bytes]:
        """The stream entry for `message`, or why it can never be sent."""
        if PAYLOAD_FIELD in message.headers:
            return Outcome.reject(f"header {PAYLOAD_FIELD!r} is reserved for the payload")
        entry = redis_url.to_fields(to_headers(message), message.payload)
        limit = self.capabilities.max_message_bytes or DEFAULT_MAX_BULK
        largest = max(max(len(name), len(value)) for name, value in entry.items())
        if largest > limit:
            return Outcome.reject(
                f"message field of {largest} bytes; the Redis limit is {limit} "
                "(proto-max-bulk-len or max_message_bytes)"
            )
        return entry

    def _outcome(self, reply: object) -> Outcome:
        """The outcome of one XADD reply: an entry id, or an error."""
        if isinstance(reply, bytes | str):
            return Outcome.ok()
        if not isinstance(reply, rex.ResponseError):
            return Outcome.retry(f"unexpected XADD reply {type(reply).__name__}")
        error = f"Redis refused the XADD ({type(reply).__name__}): {self._scrub(reply)}"
        text = str(reply)
        if isinstance(reply, _SERVER_STATE) or text.startswith(_SERVER_STATE_CODES):
            return Outcome.unreachable(error)
        if isinstance(reply, rex.NoPermissionError) or text.startswith("WRONGTYPE"):
            # Only this topic's key is unusable with per-topic streams; with one stream
            # nothing could pass, so pause rather than dead-letter everything.
            return Outcome.reject(error) if self.options.per_topic else Outcome.unreachable(error)
        return Outcome.retry(error)

    def _require_replicas(self, reply: object, outcomes: list[Outcome | None]) -> None:
        wanted = self.options.replicas
        if isinstance(reply, int) and reply >= wanted:
            return
        seen = reply if isinstance(reply, int) else self._scrub(reply)
        short = Outcome.unreachable(
            f"only {seen} of {wanted} Redis replicas confirmed the batch in time"
        )
        for index, outcome in enumerate(outcomes):
            if outcome is not None and outcome.acked:
                outcomes[index] = short

    async def close(self) -> None:
        """Close the connection pool; safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            await _close_quietly(client)

    def _scrub(self, error: object) -> str:
        return redis_url.scrub(error, self.options)


async def _bulk_limit(client: redis.asyncio.Redis) -> int:
    """The server's proto-max-bulk-len; Redis' default where CONFIG is not allowed."""
    try:
        found: Mapping[Any, Any] = await client.config_get("proto-max-bulk-len")
    except rex.ResponseError:  # CONFIG renamed or denied (managed services)
        return DEFAULT_MAX_BULK
    raw = found.get("proto-max-bulk-len") or found.get(b"proto-max-bulk-len")
    try:
        return int(raw) if raw is not None else DEFAULT_MAX_BULK
    except ValueError:
        return DEFAULT_MAX_BULK


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _close_quietly(client: redis.asyncio.Redis) -> None:
    try:
        async with asyncio.timeout(5):
            await client.aclose()
    except (*_DOWN, rex.RedisError) as exc:
        _log.debug("closing the Redis client: %r", exc)


def create(url: str) -> RedisPublisher:
    """A publisher for a `redis://` or `rediss://` URL (see the module docstring)."""
    return RedisPublisher(parse_url(url))
