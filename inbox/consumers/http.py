"""HTTP webhook consumers: receive what `relay.brokers.http` POSTs, effectively exactly once.

Two ways to receive, configured by the same URL as the publisher (see `outbox.http_url` for
the headers and the signature scheme):

1. `webhook_app(inbox, settings)`: a plain ASGI app (no framework) to mount in your web
   server, or to serve with `AsgiServer`. Each POST runs the inbox transaction (dedup row +
   handler) and is answered only after the commit:

   - 200 `{"status": "handled"}`, `{"status": "duplicate"}` (seen before: nothing done) or
     `{"status": "dead-lettered"}` (the handler failed on the `max_attempts`-th attempt,
     as told by `Outboxkit-Attempt`: it is in the inbox's dead letters, dedup key kept);
   - 500 when the handler failed (rolled back): the relay retries with backoff;
   - 503 + `Retry-After` when the database is unavailable: the relay retries;
   - 422 when no handler is registered for the topic, 400 for a malformed envelope, 413 for
     a body over `outboxkit_max_bytes`, 405 for another method: the relay dead-letters;
   - 401 for a missing or wrong signature (when `outboxkit_secret_env` is set) or Basic
     credentials (when the URL has a user): the relay pauses, it dead-letters nothing.

   `settings` is a `ConsumerSettings`: `dsn`, `concurrency` (transactions at once),
   `max_attempts`, and `broker_url`, whose `outboxkit_*` options apply (its path does not:
   where the app is mounted decides). The secret is read when the app is created.

2. `create(url, subscription)`: a `Consumer` for `ConsumerRunner` / `outboxkit consume
   --broker http://0.0.0.0:8080/hooks`. It LISTENS on the URL's host, port and path (a
   `{topic}` path matches any one segment) and turns each POST into a `Delivery` whose HTTP
   answer is held until the runner acks it (200, after the inbox commit) or naks it (503 with
   `Retry-After`: the relay retries). Requests are checked like the app's (401, 400, 413,
   405, 404 for another path, 422 for a topic no handler pattern matches). A request held
   longer than `outboxkit_hold_timeout` is answered 503, and one whose sender hung up is
   dropped: the sender's retry comes back and the inbox dedups. While more than
   `MAX_PENDING` requests wait, new ones get 503 at once. `Delivery.attempt` is the larger
   of the sender's `Outboxkit-Attempt` and the deliveries of that message this process saw.

Consumer options (besides the publisher's `outboxkit_secret_env` and `outboxkit_max_bytes`):

- `outboxkit_listen=host:port`: bind here instead of the URL's host and port (the URL is
  where senders post, e.g. through a proxy or load balancer; TLS ends there: the consumer
  speaks plain HTTP, so only `http://` URLs have a consumer).
- `outboxkit_tolerance=300`: seconds a signature's timestamp may be off (the replay window).
- `outboxkit_hold_timeout=60`: seconds a request waits for the runner's answer.

There is no broker behind a webhook: the sender's outbox is the queue. While no consumer
listens the relay gets "connection refused" (`unreachable`) and pauses; nothing is lost.

`AsgiServer` is the small HTTP/1.1 server (asyncio streams, keep-alive, Content-Length and
chunked bodies, `Expect: 100-continue`, size limits and timeouts) both of them run on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from functools import cache
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote
from uuid import UUID

import psycopg

from inbox.consumers.base import Delivery, Subscription
from inbox.inbox import Inbox
from inbox.settings import ConsumerSettings
from inbox.slots import Slot
from outbox import http_url
from outbox.errors import BrokerUnavailable, ConfigurationError, DatabaseUnavailable, InvalidMessage
from outbox.http_url import HttpOptions
from outbox.message import Message

_log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_PENDING = 1000  # requests waiting for the runner at once; beyond: 503
_SEND_TIMEOUT = 5.0  # an ack waits this long at most for its answer to be written
_MAX_SEEN = 10_000  # messages whose deliveries are counted
_DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailable)


def parse_url(url: str) -> HttpOptions:
    """`HttpOptions` from a webhook URL; `ConfigurationError` for anything malformed."""
    return http_url.parse_url(url)


# -- the HTTP/1.1 server --------------------------------------------------------------------


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LINGER_SECONDS = 1.0
_CHUNK_LINE_LIMIT = 1024


class _HttpError(Exception):
    """The request cannot be served: answer `status` and close the connection."""

    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status = status


class _Reader(asyncio.StreamReader):
    """A stream reader that also tells when the peer hung up (`gone`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit=limit)
        self.gone = asyncio.Event()

    def feed_eof(self) -> None:
        super().feed_eof()
        self.gone.set()

    def set_exception(self, exc: Exception) -> None:
        super().set_exception(exc)
        self.gone.set()


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n == name]
        return b", ".join(values) if values else None

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip() for t in (self.header(b"connection") or b"").lower().split(b",")}
        return self.version == "HTTP/1.1" and b"close" not in tokens


@dataclass(eq=False)
class _Connection:
    task: asyncio.Task[None] | None = None
    busy: bool = False


class AsgiServer:
    """Serves one ASGI app (HTTP only) over HTTP/1.1 on asyncio streams.

        server = AsgiServer(webhook_app(inbox, settings))
        port = await server.start("0.0.0.0", 8080)
        ...
        await server.close()

    Keep-alive connections, Content-Length and chunked request bodies, `Expect:
    100-continue`. The head is limited to `max_header_bytes` (431) and the body to `max_body`
    (413); a body must arrive within `read_timeout` (408), an idle connection is closed after
    `idle_timeout`. `receive()` gives the app `http.disconnect` once the client hangs up.
    The response body is buffered and sent with a Content-Length. No lifespan events are
    sent: start and close the app yourself. Not a general-purpose web server: it serves
    webhooks on a trusted network, behind a proxy for TLS.
    """

    def __init__(
        self,
        app: AsgiApp,
        *,
        max_body: int = http_url.DEFAULT_MAX_BYTES,
        max_header_bytes: int = 65536,
        read_timeout: float = 30.0,
        idle_timeout: float = 60.0,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_header_bytes = max_header_bytes
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen on `host:port`; returns the bound port (give 0 for any free one)."""
        if self._server is not None:
            raise RuntimeError("AsgiServer already started")
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.StreamReaderProtocol:
            return asyncio.StreamReaderProtocol(_Reader(self.max_header_bytes), self._accept)

        self._server = await loop.create_server(protocol, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self, grace: float = 5.0) -> None:
        """Stop listening; requests in progress get `grace` seconds to finish, then are dropped."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = []
        for connection in list(self._connections):
            if connection.task is None:
                continue
            if not connection.busy:
                connection.task.cancel()  # idle keep-alive connection
            tasks.append(connection.task)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Our own task, so close() can cancel it (start_server's would log a spurious error).
        connection = _Connection()
        connection.task = asyncio.create_task(self._serve(connection, reader, writer))
        self._connections.add(connection)
        connection.task.add_done_callback(lambda _: self._connections.discard(connection))

    async def _serve(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert isinstance(reader, _Reader)
        try:
            keep = True
            while keep:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return  # the client left, or stayed silent
                except asyncio.LimitOverrunError:
                    await _refuse(reader, writer, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
                    return
                connection.busy = True
                try:
                    keep = await self._exchange(head, reader, writer)
                except _HttpError as exc:
                    await _refuse(reader, writer, exc.status)
                    return
                finally:
                    connection.busy = False
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up mid-request
        except Exception:  # noqa: BLE001 - one connection's surprise must not stop the server
            _log.exception("webhook server: unexpected error on a connection")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _exchange(self, head: bytes, reader: _Reader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; whether the connection may serve another."""
        request = _parse_head(head)
        try:
            async with asyncio.timeout(self.read_timeout):
                body = await self._body(request, reader, writer)
        except TimeoutError:
            raise _HttpError(HTTPStatus.REQUEST_TIMEOUT) from None
        path, _, query = request.target.partition("?")
        peer = writer.get_extra_info("peername")
        sock = writer.get_extra_info("sockname")
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.version.removeprefix("HTTP/"),
            "method": request.method,
            "scheme": "http",
            "path": unquote(path),
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": request.headers,
            "client": tuple(peer[:2]) if isinstance(peer, tuple) else None,
            "server": tuple(sock[:2]) if isinstance(sock, tuple) else None,
        }
        exchange = _Exchange(body, reader, writer, request.keep_alive, request.method == "HEAD")
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except Exception:  # noqa: BLE001 - the app's bug becomes a 500, logged
            _log.exception("webhook app failed on %s %s", request.method, path)
            if not exchange.started:
                exchange.keep_alive = False
                await exchange.send_error()
            return False  # after half an answer only closing tells the client
        finally:
            exchange.done.set()
        # No answer (the client hung up) or an unfinished one: close.
        return exchange.keep_alive and exchange.written and not reader.gone.is_set()

    async def _body(
        self, request: _Request, reader: _Reader, writer: asyncio.StreamWriter
    ) -> bytes:
        encoding = request.header(b"transfer-encoding")
        length = request.header(b"content-length")
        if encoding is not None and length is not None:
            raise _HttpError(HTTPStatus.BAD_REQUEST)  # ambiguous: a smuggling attempt
        if encoding is not None and encoding.strip().lower() != b"chunked":
            raise _HttpError(HTTPStatus.NOT_IMPLEMENTED)
        size = 0
        if length is not None:
            if not length.strip().isdigit():
                raise _HttpError(HTTPStatus.BAD_REQUEST)
            size = int(length)
            if size > self.max_body:
                raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        elif encoding is None:
            return b""
        if (request.header(b"expect") or b"").strip().lower() == b"100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if encoding is None:
            return await reader.readexactly(size)
        return await self._chunked(reader)

    async def _chunked(self, reader: _Reader) -> bytes:
        body = bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _HttpError(HTTPStatus.BAD_REQUEST) from None
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers: ignored
                return bytes(body)
            if len(body) + size > self.max_body:
                raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise _HttpError(HTTPStatus.BAD_REQUEST)


def _parse_head(head: bytes) -> _Request:
    lines = head.lstrip(b"\r\n").split(b"\r\n")
    parts = lines[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
        raise _HttpError(HTTPStatus.BAD_REQUEST)
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):  # also refuses obsolete line folding
            raise _HttpError(HTTPStatus.BAD_REQUEST)
        headers.append((name.lower(), value.strip(b" \t")))
    return _Request(method, target, version, headers)


class _Exchange:
    """One request's ASGI `receive` and `send`; the answer is written when its body is
    complete, so `send()` returns once the bytes are handed to the socket."""

    def __init__(
        self,
        body: bytes,
        reader: _Reader,
        writer: asyncio.StreamWriter,
        keep_alive: bool,
        head: bool = False,
    ) -> None:
        self._request: bytes | None = body
        self.head = head
        self._reader = reader
        self._writer = writer
        self.keep_alive = keep_alive
        self.done = asyncio.Event()
        self.started = False
        self.written = False
        self._status = 500
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    async def receive(self) -> MutableMapping[str, Any]:
        if self._request is not None:
            body, self._request = self._request, None
            return {"type": "http.request", "body": body, "more_body": False}
        # Then wait for the client to hang up (or for the exchange to end).
        gone = asyncio.create_task(self._reader.gone.wait())
        done = asyncio.create_task(self.done.wait())
        try:
            await asyncio.wait([gone, done], return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            done.cancel()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if self.written:
            return
        if message["type"] == "http.response.start" and not self.started:
            self.started = True
            self._status = int(message["status"])
            self._headers = [(bytes(n).lower(), bytes(v)) for n, v in message.get("headers", ())]
        elif message["type"] == "http.response.body" and self.started:
            self._body.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                await self._write()

    async def send_error(self) -> None:
        self.started = True
        self._status, self._headers = 500, [(b"content-type", b"text/plain")]
        self._body = [b"internal server error"]
        await self._write()

    async def _write(self) -> None:
        self.written = True
        if self._reader.gone.is_set():
            return  # nobody to tell
        with contextlib.suppress(ConnectionError):
            self._writer.write(self._encode())
            await self._writer.drain()

    def _encode(self) -> bytes:
        try:
            reason = HTTPStatus(self._status).phrase
        except ValueError:
            reason = ""
        body = b"".join(self._body)
        skip = {b"content-length", b"connection", b"transfer-encoding"}
        lines = [f"HTTP/1.1 {self._status} {reason}".encode("latin-1")]
        lines += [n + b": " + v for n, v in self._headers if n not in skip]
        if self._status < 200 or self._status in (204, 304):
            body = b""  # these answers have no body: a client would read it as the next one
        else:
            lines.append(b"content-length: %d" % len(body))
            if self.head:
                body = b""
        lines.append(b"connection: keep-alive" if self.keep_alive else b"connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def _refuse(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: HTTPStatus
) -> None:
    """Answer `status` and close, letting the client read the answer before the reset."""
    body = status.phrase.encode()
    writer.write(
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status.value, status.phrase.encode(), len(body), body)
    )
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(_LINGER_SECONDS):
            await writer.drain()
            writer.write_eof()
            while await reader.read(65536):
                pass


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


class Endpoint:
    """Checks webhook requests against one URL's options: method, path, size, credentials,
    signature, envelope."""

    def __init__(self, options: HttpOptions, secrets: list[bytes]) -> None:
        self.options = options
        self.secrets = secrets
        self._basic: bytes | None = None
        if options.user is not None:
            pair = f"{options.user}:{options.password or ''}".encode()
            self._basic = b"Basic " + base64.b64encode(pair)

    def check(self, scope: Scope, body: bytes, *, match_path: bool) -> Received | Answer:
        """The message a request carries, or the answer refusing it."""
        if scope.get("method") != "POST":
            return _answer(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")
        topic = None
        if match_path:
            raw_path = bytes(scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
            found, topic = self.options.match_path(raw_path)
            if not found:
                return _answer(HTTPStatus.NOT_FOUND, "not found")
        if len(body) > self.options.max_bytes:
            return _answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too large")
        pairs = [
            (bytes(n).decode("latin-1").lower(), bytes(v).decode("latin-1"))
            for n, v in scope["headers"]
        ]
        headers: dict[str, str] = {}
        for name, value in pairs:
            headers.setdefault(name, value)
        refused = self._refused(headers, body)
        if refused is not None:
            _log.warning("webhook from %s refused: %s", _client(scope), refused)
            return _answer(HTTPStatus.UNAUTHORIZED, "unauthorized", error=refused)
        try:
            message = http_url.message_from_headers(pairs, body, topic=topic)
        except InvalidMessage as exc:
            _log.warning("malformed webhook from %s: %s", _client(scope), exc)
            return _answer(HTTPStatus.BAD_REQUEST, "malformed", error=str(exc))
        return Received(message, http_url.attempt_of(headers))

    def _refused(self, headers: dict[str, str], body: bytes) -> str | None:
        if self._basic is not None:
            given = headers.get("authorization", "").encode("latin-1")
            if not hmac.compare_digest(given, self._basic):
                return "missing or wrong credentials"
        if self.secrets:
            return http_url.verify(
                self.secrets, headers, body, now=time.time(), tolerance=self.options.tolerance
            )
        return None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it grows past `limit` (or the client left)."""
    body = bytearray()
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            return None
        body += event.get("body", b"")
        if len(body) > limit:
            return None
        if not event.get("more_body", False):
            return bytes(body)


# -- the runner's consumer ------------------------------------------------------------------


@cache
def _topic_pattern(pattern: str) -> re.Pattern[str]:
    # The rule of inbox.registry.HandlerRegistry: `*` is any run of characters.
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


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
        server = AsgiServer(self._app, max_body=self.options.max_bytes)
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
        body = await _read_body(receive, self.options.max_bytes)
        if body is None:
            return
        assert self._endpoint is not None
        checked = self._endpoint.check(scope, body, match_path=True)
        if isinstance(checked, Answer):
            await checked.send(send)
            return
        answer = await self._hold(checked, receive, send)
        if answer is not None:
            await answer.send(send)

    async def _hold(self, checked: Received, receive: Receive, send: Send) -> Answer | None:
        """Queue the delivery and wait for the runner's answer (None: the sender left)."""
        message = checked.message
        if not any(_topic_pattern(p).fullmatch(message.topic) for p in self.subscription.topics):
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
    return HttpConsumer(options, subscription)


# -- the ASGI app ---------------------------------------------------------------------------


class WebhookApp:
    """An ASGI app running each webhook through an `Inbox` (see the module docstring)."""

    def __init__(self, inbox: Inbox, settings: ConsumerSettings) -> None:
        inbox.is_async  # noqa: B018 - refuse mixed sync/async handlers up front
        self.inbox = inbox
        self.settings = settings
        self.options = parse_url(settings.broker_url)
        self.endpoint = Endpoint(self.options, self.options.secrets())
        self._idle: asyncio.Queue[Slot] | None = None
        self._slots: list[Slot] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await _read_body(receive, self.options.max_bytes)
        if body is None:
            answer = _answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too large")
        else:
            answer = await self.answer(scope, body)
        await answer.send(send)

    async def answer(self, scope: Scope, body: bytes) -> Answer:
        """Check, dedup and handle one request; the answer is given after the commit."""
        checked = self.endpoint.check(scope, body, match_path=False)
        if isinstance(checked, Answer):
            return checked
        message, attempt = checked.message, checked.attempt
        if self.inbox.handler_for(message.topic) is None:
            return _answer(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "no handler",
                error=f"consumer {self.inbox.consumer!r} has no handler for topic "
                f"{message.topic!r}",
            )
        slot = await self._take()
        try:
            return await self._handle(slot, message, attempt)
        except _DB_ERRORS as exc:
            _log.warning(
                "database unavailable (%s); asking the sender to retry", type(exc).__name__
            )
            await slot.reset()
            return _answer(HTTPStatus.SERVICE_UNAVAILABLE, "database unavailable", retry_after=1)
        finally:
            self._give(slot)

    async def _handle(self, slot: Slot, message: Message, attempt: int) -> Answer:
        [result] = await slot.handle_many([message], cautious=attempt > 1)
        ident = str(message.message_id)
        if not isinstance(result, Exception):
            return _answer(HTTPStatus.OK, "handled" if result else "duplicate", message_id=ident)
        error = f"{type(result).__name__}: {result}"
        if attempt >= self.settings.max_attempts:
            await slot.bury(message, attempt, error)
            _log.error("message %s dead-lettered: %s", ident, error)
            return _answer(HTTPStatus.OK, "dead-lettered", message_id=ident)
        _log.warning("message %s failed (attempt %d): %s", ident, attempt, error)
        # Only the exception's type: its text may hold data the sender should not see.
        return _answer(
            HTTPStatus.INTERNAL_SERVER_ERROR,
            "failed",
            message_id=ident,
            error=type(result).__name__,
        )

    async def _take(self) -> Slot:
        if self._idle is None:
            self._idle = asyncio.Queue()
        if self._idle.empty() and len(self._slots) < self.settings.concurrency:
            slot = Slot(self.inbox, self.settings)
            self._slots.append(slot)
            return slot
        return await self._idle.get()

    def _give(self, slot: Slot) -> None:
        assert self._idle is not None
        self._idle.put_nowait(slot)

    async def aclose(self) -> None:
        """Close the database connections (they reopen on the next request)."""
        slots, self._slots, self._idle = self._slots, [], None
        for slot in slots:
            await slot.reset()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def webhook_app(inbox: Inbox, settings: ConsumerSettings) -> WebhookApp:
    """An ASGI app receiving webhooks into `inbox`, answering only after the commit."""
    return WebhookApp(inbox, settings)


__all__ = [
    "AsgiServer",
    "Endpoint",
    "HttpConsumer",
    "HttpDelivery",
    "WebhookApp",
    "create",
    "parse_url",
    "webhook_app",
]
