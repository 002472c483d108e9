"""HTTP webhook consumers: receive what `http.publisher` POSTs, effectively exactly once.

Two ways to receive, configured by the same URL as the publisher (see `http.options` for
the headers, `http.signature` for the signature scheme):

1. `webhook_app(inbox, settings)`: a plain ASGI app (no framework) to mount in your web
   server, or to serve with `AsgiServer`. Each POST runs the inbox transaction (dedup row +
   handler) and is answered only after the commit:

   - 200 `{"status": "handled"}`, `{"status": "duplicate"}` (seen before: nothing done) or
     `{"status": "dead-lettered"}` (the handler failed on the `max_attempts`-th attempt,
     as told by `Outboxkit-Attempt`: it is in the inbox's dead letters, dedup key kept);
   - 500 when the handler failed (rolled back): the relay retries with backoff;
   - 503 + `Retry-After` when the database is unavailable: the relay retries;
   - 422 when no handler is registered for the topic, 400 for a malformed envelope (or a
     field the inbox cannot store: a NUL, a lone surrogate, an over-long key), 413 for a
     body over `outboxkit_max_bytes`, 405 for another method: the relay dead-letters;
   - 401 for a missing or wrong signature (when `outboxkit_secret_env` is set) or Basic
     credentials (when the URL has a user), decided on the head, before the body is read:
     the relay pauses, it dead-letters nothing.

   `settings` is a `ConsumerSettings`: `dsn`, `concurrency` (transactions at once),
   `max_attempts`, and `broker_url`, whose `outboxkit_*` options apply (its path does not:
   where the app is mounted decides). The secret is read when the app is created.

2. `create(url, subscription)`: a `Consumer` for `ConsumerRunner` / `outboxkit consume
   --broker 'http://127.0.0.1:8080/hooks?outboxkit_secret_env=WEBHOOK_SECRET'`. It LISTENS
   on the URL's host, port and path (a `{topic}` path matches any one segment) and turns
   each POST into a `Delivery` whose HTTP answer is held until the runner acks it (200,
   after the inbox commit) or naks it (503 with `Retry-After`: the relay retries). Requests
   are checked like the app's (401, 400, 413, 405, 404 for another path, 422 for a topic no
   handler pattern matches). A request held longer than `outboxkit_hold_timeout` is
   answered 503, and one whose sender hung up is dropped: the sender's retry comes back and
   the inbox dedups. While more than `MAX_PENDING` requests wait, new ones get 503 at once.
   `Delivery.attempt` is the larger of the sender's `Outboxkit-Attempt` and the deliveries
   of that message this process saw.

Both refuse to start (`ConfigurationError`) without credentials: a signing secret
(`outboxkit_secret_env`) or a user and password in the URL. `outboxkit_insecure_no_auth=true`
starts anyway, logging a warning: anyone who can reach the port can then post messages into
the inbox, so use it only on loopback or a network where every peer is trusted.

Consumer options (besides the publisher's `outboxkit_secret_env` and `outboxkit_max_bytes`):

- `outboxkit_listen=host:port`: bind here instead of the URL's host and port (the URL is
  where senders post, e.g. through a proxy or load balancer; TLS ends there: the consumer
  speaks plain HTTP, so only `http://` URLs have a consumer).
- `outboxkit_tolerance=300`: seconds a signature's timestamp may be off (the replay window).
- `outboxkit_accept_v1=false`: also accept the old `v1` signature (a rolling upgrade from
  a relay that signs v1; it leaves the attempt and the user headers unsigned).
- `outboxkit_insecure_no_auth=false`: see above.
- `outboxkit_hold_timeout=60`: seconds a request waits for the runner's answer.
- `outboxkit_max_connections=256`: connections at once (the longest idle one is closed to
  make room; when all are busy a newcomer gets 503).
- `outboxkit_max_buffered_bytes=67108864`: request body bytes held at once by all requests
  (at least `outboxkit_max_bytes`); beyond, 503 + `Retry-After`.

There is no broker behind a webhook: the sender's outbox is the queue. While no consumer
listens the relay gets "connection refused" (`unreachable`) and pauses; nothing is lost.

`AsgiServer` (`http.server`) is the small HTTP/1.1 server both of them run
on: keep-alive, Content-Length and chunked bodies, `Expect: 100-continue`, and bounds on
connections, sizes, buffered bytes and time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from uuid import UUID

from outboxkit.brokers.consuming import Delivery, Subscription
from outboxkit.brokers.http import options as http_url
from outboxkit.brokers.http.options import HttpOptions
from outboxkit.brokers.http.server import AsgiApp, AsgiServer, Receive, Scope, Send
from outboxkit.brokers.http.signature import BodyCheck, SignatureRefused, Verifier
from outboxkit.outbox.errors import (
    BrokerUnavailable,
    ConfigurationError,
    InvalidMessage,
)
from outboxkit.outbox.message import Message
from outboxkit.outbox.topics import matches_any

_log = logging.getLogger(__name__)

MAX_PENDING = 1000  # requests waiting for the runner at once; beyond: 503
_SEND_TIMEOUT = 5.0  # an ack waits this long at most for its answer to be written
_MAX_SEEN = 10_000  # messages whose deliveries are counted


def parse_url(url: str) -> HttpOptions:
    """`HttpOptions` from a webhook URL; `ConfigurationError` for anything malformed."""
    return http_url.parse_url(url)


# -- checking a webhook request -------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """An HTTP answer to a webhook request."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()

    async def send(self, send: Send) -> None:
        data = json.dumps(self.body).encode()
        headers = [(b"content-type", b"application/json")]
        headers += [(n.encode("latin-1"), v.encode("latin-1")) for n, v in self.headers]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


def _answer(status: HTTPStatus, state: str, **details: Any) -> Answer:
    headers: tuple[tuple[str, str], ...] = ()
    if status is HTTPStatus.UNAUTHORIZED:
        headers = (("www-authenticate", 'Basic realm="outboxkit"'),)
    elif status is HTTPStatus.METHOD_NOT_ALLOWED:
        headers = (("allow", "POST"),)
    retry_after = details.pop("retry_after", None)
    if retry_after is not None:
        headers += (("retry-after", str(max(1, math.ceil(retry_after)))),)
    return Answer(status.value, {"status": state, **details}, headers)


@dataclass(frozen=True)
class Received:
    """A webhook request that passed the checks."""

    message: Message
    attempt: int


@dataclass(frozen=True)
class Admitted:
    """A request whose head passed the checks; its body is still to be read and checked."""

    headers: list[tuple[str, str]]  # lower-case names, latin-1 values, in order
    first: dict[str, str]  # each header's first value
    topic: str | None  # the path's, when the URL has `{topic}`
    body_check: BodyCheck | None  # what the signature still requires of the body


class Endpoint:
    """Checks webhook requests against one URL's options: method, path, size, credentials,
    signature, envelope. The head is checked before the body is read (`admit`), so a
    request without valid credentials is refused unread; then the body (`accept`).

    `ConfigurationError` when the options have no credentials (no secret, no user) and do
    not say `outboxkit_insecure_no_auth=true`.
    """

    def __init__(self, options: HttpOptions, secrets: list[bytes]) -> None:
        require_credentials(options)
        self.options = options
        self.secrets = secrets
        self.verifier = (
            Verifier(secrets, tolerance=options.tolerance, accept_v1=options.accept_v1)
            if secrets
            else None
        )
        self._basic: bytes | None = None
        if options.user is not None:
            pair = f"{options.user}:{options.password or ''}".encode()
            self._basic = b"Basic " + base64.b64encode(pair)

    def check(self, scope: Scope, body: bytes, *, match_path: bool) -> Received | Answer:
        """The message a request carries, or the answer refusing it (head and body)."""
        admitted = self.admit(scope, match_path=match_path)
        return admitted if isinstance(admitted, Answer) else self.accept(scope, admitted, body)

    def admit(self, scope: Scope, *, match_path: bool) -> Admitted | Answer:
        """Check what the head tells: method, path, declared size, credentials, signature."""
        if scope.get("method") != "POST":
            return _answer(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")
        topic = None
        if match_path:
            raw_path = bytes(scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
            found, topic = self.options.match_path(raw_path)
            if not found:
                return _answer(HTTPStatus.NOT_FOUND, "not found")
        pairs = [
            (bytes(n).decode("latin-1").lower(), bytes(v).decode("latin-1"))
            for n, v in scope["headers"]
        ]
        first: dict[str, str] = {}
        for name, value in pairs:
            first.setdefault(name, value)
        if _declared_length(first.get("content-length", "")) > self.options.max_bytes:
            return _answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too large")
        body_check = None
        try:
            if self._basic is not None:
                given = first.get("authorization", "").encode("latin-1")
                if not hmac.compare_digest(given, self._basic):
                    raise SignatureRefused("missing or wrong credentials")
            if self.verifier is not None:
                body_check = self.verifier.head(pairs, now=time.time())
        except SignatureRefused as exc:
            return self._unauthorized(scope, exc)
        return Admitted(pairs, first, topic, body_check)

    def accept(self, scope: Scope, admitted: Admitted, body: bytes) -> Received | Answer:
        """Check the body of an admitted request and decode its message."""
        if len(body) > self.options.max_bytes:
            return _answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too large")
        if admitted.body_check is not None:
            try:
                admitted.body_check.check(body)
            except SignatureRefused as exc:
                return self._unauthorized(scope, exc)
        try:
            message = http_url.message_from_headers(admitted.headers, body, topic=admitted.topic)
        except InvalidMessage as exc:
            _log.warning("malformed webhook from %s: %s", _client(scope), exc)
            return _answer(HTTPStatus.BAD_REQUEST, "malformed", error=str(exc))
        return Received(message, http_url.attempt_of(admitted.first))

    def _unauthorized(self, scope: Scope, exc: SignatureRefused) -> Answer:
        _log.warning("webhook from %s refused: %s", _client(scope), exc)
        return _answer(HTTPStatus.UNAUTHORIZED, "unauthorized", error=str(exc))


def require_credentials(options: HttpOptions, *, warn: bool = True) -> None:
    """`ConfigurationError` unless a receiver with these options checks credentials, or is
    told explicitly not to (then a warning is logged, if `warn`)."""
    if options.authenticated:
        return
    if not options.insecure_no_auth:
        raise ConfigurationError(
            f"{options.display}: a webhook receiver needs credentials, or anyone who can "
            "reach it can post messages into its inbox: set outboxkit_secret_env=NAME (the "
            "signing secret, shared with the relay) or user:password@ in the URL "
            "(outboxkit_insecure_no_auth=true accepts unauthenticated requests)"
        )
    if not warn:
        return
    _log.warning(
        "webhook receiver %s accepts UNAUTHENTICATED requests (outboxkit_insecure_no_auth="
        "true): anyone who can reach it can post messages into the inbox",
        options.display,
    )


def _declared_length(raw: str) -> int:
    """A Content-Length value as a number (0 if malformed: the server refuses those)."""
    if not (raw.isascii() and raw.isdigit()):
        return 0
    return int(raw) if len(raw) <= 18 else 10**18


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"


async def _read_body(receive: Receive, limit: int) -> bytes | Answer | None:
    """The request body, 413 once it grows past `limit`, or None if the client left (or
    the server refused the body and answered itself)."""
    body = bytearray()
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            return None
        body += event.get("body", b"")
        if len(body) > limit:
            return _answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too large")
        if not event.get("more_body", False):
            return bytes(body)


# -- the runner's consumer ------------------------------------------------------------------


@dataclass(eq=False)
class HttpDelivery:
    """A POST held open until the runner acks (200) or naks (503) it."""

    message: Message | None  # never None here; typed as the `Delivery` protocol says
    attempt: int
    malformed: str | None = None
    answer: asyncio.Future[Answer] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    abandoned: bool = False  # the sender hung up or gave up waiting
    sent: asyncio.Event = field(default_factory=asyncio.Event)  # the answer left (or can't)

    async def ack(self) -> None:
        """Answer 200 (the sender may forget the message); returns once it is sent."""
        ident = str(self.message.message_id) if self.message is not None else None
        await self._settle(_answer(HTTPStatus.OK, "acked", message_id=ident))

    async def nak(self, delay: float) -> None:
        """Answer 503 with `Retry-After: delay` (the sender retries); returns once sent."""
        await self._settle(_answer(HTTPStatus.SERVICE_UNAVAILABLE, "retry", retry_after=delay))

    def give(self, answer: Answer) -> None:
        """Answer unless already answered (without waiting for it to be sent)."""
        if not self.answer.done():
            self.answer.set_result(answer)

    async def _settle(self, answer: Answer) -> None:
        self.give(answer)
        # Wait for the answer to reach the socket: a caller that stops its event loop (or
        # the process) right after an ack must not leave the 200 unsent.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_SEND_TIMEOUT):
                await self.sent.wait()


class HttpConsumer:
    """Listens for webhooks and hands each POST to the runner as a held delivery."""

    def __init__(self, options: HttpOptions, subscription: Subscription) -> None:
        self.options = options
        self.subscription = subscription
        self.server: AsgiServer | None = None
        self._endpoint: Endpoint | None = None
        self._queue: deque[HttpDelivery] = deque()
        self._arrived = asyncio.Event()
        self._held: set[HttpDelivery] = set()
        self._seen: OrderedDict[UUID, int] = OrderedDict()
        self._closing = False

    @property
    def port(self) -> int:
        """The port listened on (useful with port 0)."""
        return self.server.port if self.server is not None else 0

    async def connect(self) -> None:
        """Read the secret and start listening; `BrokerUnavailable` if the address is taken."""
        if self.server is not None:
            return
        self._endpoint = Endpoint(self.options, self.options.secrets())
        server = AsgiServer(
            self._app,
            max_body=self.options.max_bytes,
            max_connections=self.options.max_connections,
            max_buffered=self.options.max_buffered_bytes,
        )
        host, port = self.options.listen_address
        try:
            await server.start(host, port)
        except OSError as exc:
            raise BrokerUnavailable(
                f"cannot listen on {host}:{port} for {self.options.display}: {exc.strerror or exc}"
            ) from exc
        self.server, self._closing = server, False
        _log.info(
            "consumer %s listening for webhooks on %s:%d (%s)",
            self.subscription.consumer,
            host,
            server.port,
            self.options.display,
        )

    async def fetch(self, max_messages: int, wait: float) -> list[Delivery]:
        """Up to `max_messages` held requests, waiting at most `wait` seconds for the first."""
        if self.server is None:
            raise RuntimeError("HttpConsumer.fetch() before connect() or after close()")
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            while self._queue and self._queue[0].abandoned:
                self._queue.popleft()
            if self._queue or self._closing:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._arrived.wait()
            if asyncio.get_running_loop().time() >= deadline and not self._queue:
                return []
        taken: list[Delivery] = []
        while self._queue and len(taken) < max_messages:
            delivery = self._queue.popleft()
            if not delivery.abandoned:
                taken.append(delivery)
        return taken

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        assert self._endpoint is not None
        admitted = self._endpoint.admit(scope, match_path=True)
        if isinstance(admitted, Answer):
            await admitted.send(send)  # unread: the server closes the connection
            return
        body = await _read_body(receive, self.options.max_bytes)
        if not isinstance(body, bytes):
            if body is not None:
                await body.send(send)
            return
        checked = self._endpoint.accept(scope, admitted, body)
        if isinstance(checked, Answer):
            await checked.send(send)
            return
        answer = await self._hold(checked, receive, send)
        if answer is not None:
            await answer.send(send)

    async def _hold(self, checked: Received, receive: Receive, send: Send) -> Answer | None:
        """Queue the delivery and wait for the runner's answer (None: the sender left)."""
        message = checked.message
        if not matches_any(self.subscription.topics, message.topic):
            return _answer(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "no handler",
                error=f"consumer {self.subscription.consumer!r} has no handler for "
                f"topic {message.topic!r}",
            )
        if self._closing or len(self._held) >= MAX_PENDING:
            return _answer(HTTPStatus.SERVICE_UNAVAILABLE, "busy", retry_after=1)
        delivery = HttpDelivery(message, max(checked.attempt, self._count(message.message_id)))
        try:
            answer = await self._wait(delivery, receive)
            if answer is not None:
                await answer.send(send)
        finally:
            delivery.sent.set()
        return None

    async def _wait(self, delivery: HttpDelivery, receive: Receive) -> Answer | None:
        message = delivery.message
        assert message is not None
        self._held.add(delivery)
        self._queue.append(delivery)
        self._arrived.set()
        hung_up: asyncio.Future[Any] = asyncio.ensure_future(receive())
        waiting: list[asyncio.Future[Any]] = [delivery.answer, hung_up]
        try:
            await asyncio.wait(
                waiting,
                timeout=self.options.hold_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            hung_up.cancel()
            self._held.discard(delivery)
        if delivery.answer.done():
            answer = delivery.answer.result()
            if answer.status == HTTPStatus.OK:
                self._seen.pop(message.message_id, None)
            return answer
        delivery.abandoned = True  # an ack or nak that still comes changes nothing
        if hung_up.done():
            return None
        return _answer(HTTPStatus.SERVICE_UNAVAILABLE, "not handled in time", retry_after=1)

    def _count(self, message_id: UUID) -> int:
        """Deliveries of `message_id` seen by this process, this one included."""
        count = self._seen.pop(message_id, 0) + 1
        self._seen[message_id] = count
        if len(self._seen) > _MAX_SEEN:
            self._seen.popitem(last=False)
        return count

    async def close(self) -> None:
        """Stop listening; requests still waiting are answered 503. Safe to call twice."""
        server, self.server = self.server, None
        self._closing = True
        self._arrived.set()
        for delivery in list(self._held):
            delivery.give(_answer(HTTPStatus.SERVICE_UNAVAILABLE, "closing", retry_after=1))
        self._queue.clear()
        if server is not None:
            await server.close(grace=2.0)


def create(url: str, subscription: Subscription) -> HttpConsumer:
    """A consumer listening at an `http://` URL (see the module docstring)."""
    options = parse_url(url)
    if options.scheme != "http":
        raise ConfigurationError(
            f"{options.display}: the webhook consumer speaks plain HTTP; end TLS in a proxy "
            "and give the consumer an http:// URL (outboxkit_listen sets where it binds)"
        )
    if not subscription.topics:
        raise ConfigurationError(
            f"consumer {subscription.consumer!r} has no handlers: nothing to subscribe to"
        )
    require_credentials(options, warn=False)  # early; connect() warns when it starts
    return HttpConsumer(options, subscription)


__all__ = [
    "Admitted",
    "Answer",
    "AsgiApp",
    "AsgiServer",
    "Endpoint",
    "HttpConsumer",
    "HttpDelivery",
    "Receive",
    "Scope",
    "Send",
    "create",
    "parse_url",
    "require_credentials",
]
