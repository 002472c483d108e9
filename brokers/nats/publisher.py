"""NATS JetStream publisher (nats-py): a message is acked once its stream sent a PubAck.

URL: `nats://[user:password@ | token@]host[:port][?option=value&...]`. Options:

- `stream=OUTBOXKIT`: the JetStream stream the messages go to.
- `subject_prefix=outboxkit.`: the subject is `subject_prefix + topic` (include the dot).
- `subjects=a.>,b.*`: the subjects of a stream we create; default `<subject_prefix>>`.
  JetStream refuses catch-alls (`>`, `*.>`), so an empty prefix needs explicit `subjects`.
- `create_stream=true`: create the stream if it is missing; an existing stream is never altered.
- `duplicate_window=120`, `max_age=0` (0: forever), `replicas=1`, `storage=file`: the
  configuration of a stream we create (seconds for the durations).
- `timeout=5`: seconds to wait for a PubAck and for stream management calls.
- `connect_timeout=5`, `reconnect_wait=2`: seconds.

Each message carries the envelope headers plus `Nats-Msg-Id: <message_id>`, so JetStream
drops a republished message within `duplicate_window` (its PubAck says `duplicate`). NATS
trims header values, so leading/trailing blanks in a user header do not survive. A subject
that no subject of the stream covers is rejected before sending (a misrouted topic is
permanent for that message). A batch is pipelined: all messages are sent, each with its own
reply subject under one subscription (`nats.acks`), then all PubAcks
awaited. After the first connect the client reconnects forever; while it is disconnected
`publish` answers `unreachable` at once instead of buffering. When not one PubAck of a batch
comes back in time, a PING tells a silent broker (blackholed, partitioned: the connection
looks alive to the client) from slow JetStream: no PONG either means `unreachable`, no
attempt counted, and the connection is dropped so that the next batch connects afresh.
A broker that stops reading mid-batch (the client's 2 MB buffer full, its inline flushes
blocked) cannot hold a batch for long either: the deadline is checked between sends, never
enforced by cancelling into nats-py (which swallows such cancellations), so the batch ends
after a few multiples of `timeout` (the PING check, then a close bounded at 5 s).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from outboxkit.brokers.nats import options as nats_url
from outboxkit.brokers.nats.acks import AckInbox, AckRound, ack_error, no_responders
from outboxkit.brokers.nats.options import NatsOptions, subject_matches, valid_subject
from outboxkit.brokers.publishing import Capabilities, Outcome
from outboxkit.outbox.bounded import settle_within, wait_until
from outboxkit.outbox.envelope import MESSAGE_ID, to_headers
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError
from outboxkit.outbox.message import Message

_log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
_HEADER_OVERHEAD = len(b"NATS/1.0\r\n\r\n")
_MAX_ROUTES = 10_000  # topics whose subject is remembered
# What the client refuses to send, whatever the broker's state: permanent for the message.
_CLIENT_REFUSALS = (
    nats.errors.BadHeaderError,
    nats.errors.BadSubjectError,
    nats.errors.MaxPayloadError,
)


def parse_url(url: str) -> NatsOptions:
    """`NatsOptions` from a broker URL; `ConfigurationError` for anything malformed."""
    return nats_url.parse_url(url, NatsOptions, "publisher")


def _wire_size(headers: dict[str, str], payload: bytes) -> int:
    """Bytes the server counts against `max_payload`: the header block plus the payload."""
    block = sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())
    return _HEADER_OVERHEAD + block + len(payload)


class NatsPublisher:
    """Publishes to one JetStream stream over one connection."""

    def __init__(self, options: NatsOptions) -> None:
        self.options = options
        self.capabilities = Capabilities(
            ordered_per_key=True, broker_dedup=True, max_message_bytes=None
        )
        self._nc: Client | None = None
        self._stream_subjects: tuple[str, ...] = ()
        self._routes: dict[str, Outcome | str] = {}
        self._connect_error: Exception | None = None
        self._lock = asyncio.Lock()
        self._acks = AckInbox(self._read_ack)

    async def connect(self) -> None:
        """Connect (failing fast), then make sure the stream exists."""
        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                await self._connect()

    async def _connect(self) -> None:
        o = self.options
        nc = Client()
        self._nc, self._connect_error = None, None
        try:
            async with asyncio.timeout(3 * o.connect_timeout + 1):
                # nats-py retries inside connect(); these settings make it give up after two
                # immediate attempts. Endless reconnection is switched on once connected.
                await nc.connect(
                    servers=[o.server],
                    user=o.user,
                    password=o.password,
                    token=o.token,
                    name="outboxkit-relay",
                    connect_timeout=o.connect_timeout,
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    flush_timeout=o.timeout,
                )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            await _close_quietly(nc)
            detail = self._connect_error or exc
            raise BrokerUnavailable(
                f"cannot connect to NATS at {o.display}: {self._scrub(detail)}"
            ) from exc
        nc.options.update(
            allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=o.reconnect_wait
        )
        js = nc.jetstream(timeout=o.timeout)
        try:
            max_msg_size = await self._ensure_stream(js)
        except nats.js.errors.BadRequestError as exc:  # e.g. subjects overlap another stream
            await _close_quietly(nc)
            raise ConfigurationError(
                f"JetStream refused stream {o.stream} at {o.display}: {exc.description}"
            ) from exc
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            await _close_quietly(nc)
            raise BrokerUnavailable(
                f"JetStream stream {o.stream} at {o.display} unavailable: {self._scrub(exc)}"
            ) from exc
        except ConfigurationError:
            await _close_quietly(nc)
            raise
        try:
            await self._acks.open(nc)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            await _close_quietly(nc)
            raise BrokerUnavailable(
                f"cannot subscribe for PubAcks at {o.display}: {self._scrub(exc)}"
            ) from exc
        limit = nc.max_payload if max_msg_size <= 0 else min(nc.max_payload, max_msg_size)
        self.capabilities = replace(self.capabilities, max_message_bytes=limit)
        self._nc = nc

    async def _ensure_stream(self, js: JetStreamContext) -> int:
        """Look the stream up (creating it if allowed); its max_msg_size."""
        o = self.options
        try:
            info = await js.stream_info(o.stream)
        except nats.js.errors.NotFoundError:
            if not o.create_stream:
                raise ConfigurationError(
                    f"JetStream stream {o.stream} does not exist at {o.display} "
                    "and create_stream=false"
                ) from None
            info = await js.add_stream(StreamConfig(**nats_url.stream_fields(o)))
            _log.info("created JetStream stream %s at %s", o.stream, o.display)
        self._stream_subjects = tuple(info.config.subjects or ())
        self._routes.clear()
        return info.config.max_msg_size or -1

    async def publish(self, batch: Sequence[Message]) -> list[Outcome]:
        """Send the whole batch pipelined, then wait for every PubAck (one shared deadline)."""
        if not batch:
            return []
        try:
            await self.connect()
        except (BrokerUnavailable, ConfigurationError) as exc:
            # Nothing is wrong with the messages: the relay pauses and tries again later.
            return [Outcome.unreachable(str(exc))] * len(batch)
        nc = self._nc
        assert nc is not None
        if not nc.is_connected:
            down = Outcome.unreachable(f"disconnected from NATS at {self.options.display}")
            return [down] * len(batch)
        late = Outcome.retry(f"no PubAck within {self.options.timeout:g}s")
        outcomes: list[Outcome] = [late] * len(batch)
        acks = AckRound(outcomes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.timeout
        # No asyncio.timeout here: its cancellation can land in nats-py's inline flush (a
        # batch over the client's pending buffer), which swallows it, and the PubAck wait
        # after it would then never end on a broker that stopped reading. The deadline is
        # checked instead, and every await below is bounded on its own.
        try:
            for index, message in enumerate(batch):
                if loop.time() >= deadline:
                    break  # what was not sent in time stays `late`
                request = self._request(message, nc.max_payload)
                if isinstance(request, Outcome):
                    outcomes[index] = request
                    continue
                reply = self._acks.reply_subject(acks, index)
                try:
                    # Queues the bytes (the batch goes out pipelined); past the client's
                    # pending buffer it flushes inline, bounded by its flush timeout.
                    await nc.publish(request[0], message.payload, reply, request[1])
                except (*_CLIENT_REFUSALS, OSError, nats.errors.Error) as exc:
                    outcomes[index] = self._failed(exc)
                    self._acks.withdraw(reply)
            await wait_until(acks.complete, deadline)  # what is not acked by then stays `late`
        finally:
            self._acks.forget(acks)
        if late in outcomes and not any(o.acked for o in outcomes):
            await self._check_silence(nc, outcomes, late)
        return outcomes

    async def _check_silence(self, nc: Client, outcomes: list[Outcome], late: Outcome) -> None:
        """Not one PubAck came back: tell a silent broker from slow messages.

        A blackholed or partitioned connection looks healthy to the client (it notices only
        after missed PINGs, minutes later), so without this every message of every batch
        would time out as a per-message failure: attempts counted against healthy messages,
        dead letters after a long enough silence, and the broker reported fine. If the
        server does not answer a PING either, the broker is unreachable: no attempt is
        counted, and the connection is dropped so that the next batch connects afresh.
        """
        wait = max(1, round(self.options.timeout))  # nats-py wants whole seconds
        try:
            await nc.flush(timeout=wait)
            return  # the server answers: JetStream itself was slow, a per-message failure
        except (OSError, TimeoutError, nats.errors.Error):
            pass
        down = Outcome.unreachable(
            f"NATS at {self.options.display} answered neither PubAcks nor a PING within {wait}s"
        )
        outcomes[:] = [down if outcome == late else outcome for outcome in outcomes]
        if self._nc is nc:
            self._nc = None
        await _close_quietly(nc)

    def _request(self, message: Message, limit: int) -> Outcome | tuple[str, dict[str, str]]:
        """The subject and headers for `message`, or why it can never be sent."""
        subject = self._routes.get(message.topic) or self._route(message.topic)
        if isinstance(subject, Outcome):
            return subject
        headers = to_headers(message)
        headers[MSG_ID] = headers[MESSAGE_ID]  # the same id, formatted once
        size = _wire_size(headers, message.payload)
        if size > limit:
            return Outcome.reject(
                f"message is {size} bytes with its headers; the NATS max_payload is {limit}"
            )
        return subject, headers

    def _route(self, topic: str) -> Outcome | str:
        """The subject for `topic`, or the rejection of an unroutable topic; remembered."""
        subject = self.options.subject_prefix + topic
        route: Outcome | str = subject
        if not valid_subject(subject):
            route = Outcome.reject(f"topic {topic!r} is not a valid NATS subject")
        elif not any(subject_matches(p, subject) for p in self._stream_subjects):
            route = Outcome.reject(
                f"no subject of stream {self.options.stream} matches {subject!r}"
            )
        if len(self._routes) < _MAX_ROUTES:
            self._routes[topic] = route
        return route

    def _read_ack(self, reply: Msg) -> Outcome:
        """The outcome a PubAck reports; one marked `duplicate` counts as acked too."""
        if no_responders(reply):
            return Outcome.unreachable(f"JetStream did not answer for stream {self.options.stream}")
        error = ack_error(reply)
        return Outcome.ok() if error is None else _api_error(*error)

    def _failed(self, exc: BaseException) -> Outcome:
        """The outcome for an error from sending a message or from its PubAck."""
        if isinstance(exc, _CLIENT_REFUSALS):
            return Outcome.reject(f"refused by the NATS client: {type(exc).__name__} {exc}")
        if isinstance(exc, OSError | nats.errors.Error):
            return Outcome.unreachable(f"NATS connection failed: {self._scrub(exc)}")
        raise exc

    async def close(self) -> None:
        """Close the connection; safe to call twice."""
        nc, self._nc = self._nc, None
        if nc is not None:
            await _close_quietly(nc)

    def _scrub(self, error: object) -> str:
        return nats_url.scrub(error, self.options)

    async def _on_error(self, exc: Exception) -> None:
        if self._nc is None:  # still connecting: the error goes into BrokerUnavailable
            self._connect_error = exc
        quiet = self._nc is None or self._nc.is_reconnecting
        level = logging.DEBUG if quiet else logging.WARNING
        _log.log(level, "NATS %s: %s", self.options.display, self._scrub(exc))

    async def _on_disconnected(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            _log.warning("disconnected from NATS at %s; reconnecting", self.options.display)

    async def _on_reconnected(self) -> None:
        _log.info("reconnected to NATS at %s", self.options.display)


def _api_error(code: int | None, err_code: int | None, description: str) -> Outcome:
    """A 4xx from JetStream refuses this message for good; anything else may pass later."""
    error = f"JetStream error {code}/{err_code}: {description}"
    if code is not None and 400 <= code < 500:
        return Outcome.reject(error)
    return Outcome.retry(error)


async def _close_quietly(nc: Client) -> None:
    try:
        if not await settle_within(nc.close(), 5):
            _log.debug("closing the NATS connection took over 5s; left to finish")
    except (OSError, nats.errors.Error) as exc:
        _log.debug("closing the NATS connection: %r", exc)


def create(url: str) -> NatsPublisher:
    """A publisher for a `nats://` URL (see the module docstring for its options)."""
    return NatsPublisher(parse_url(url))
