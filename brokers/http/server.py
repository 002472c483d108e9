"""`AsgiServer`: the small HTTP/1.1 server (asyncio streams) the webhook consumers run on.

Not a general-purpose web server: it serves webhooks, behind a proxy for TLS. It parses
with `http.wire` and bounds what a client can make it hold:

- `max_connections` connections at once: past it the connection idle the longest (between
  requests, or still sending its head) is closed to make room; if every one is busy the
  newcomer gets 503 + `Retry-After` and is closed unread;
- a head of at most `max_header_bytes` (431), sent within `head_timeout` of its first byte
  (408); an idle keep-alive connection is closed after `idle_timeout`;
- a body of at most `max_body` bytes (413), sent within `read_timeout` (408), and at most
  `max_buffered` body bytes held by all requests together (beyond: 503 + `Retry-After`);
- the body is read only when the app asks for it (ASGI `receive()`), so an app can refuse
  a request on its head (401) without reading the body; the connection is then closed.

Malformed bytes get 400 (or 431, 501, 505), never an exception out of the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from outboxkit.brokers.http.options import (
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_CONNECTIONS,
)
from outboxkit.brokers.http.wire import HttpRefusal, Request, body_length, parse_head, read_chunked

_log = logging.getLogger("outboxkit.brokers.http.consumer")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_LINGER_SECONDS = 1.0


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


class _Budget:
    """Body bytes all requests may hold at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, size: int) -> None:
        if self.used + size > self.limit:
            raise HttpRefusal(HTTPStatus.SERVICE_UNAVAILABLE, "too many request bytes at once")
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size


@dataclass(eq=False)
class _Connection:
    task: asyncio.Task[None] | None = None
    busy: bool = False
    idle_since: float = field(default_factory=lambda: asyncio.get_running_loop().time())


class AsgiServer:
    """Serves one ASGI app (HTTP only) over HTTP/1.1 on asyncio streams.

        server = AsgiServer(webhook_app(inbox, settings))
        port = await server.start("127.0.0.1", 8080)
        ...
        await server.close()

    Keep-alive connections, Content-Length and chunked request bodies, `Expect:
    100-continue` (answered when the app first calls `receive()`), and the limits of the
    module docstring. `receive()` gives the app `http.disconnect` once the client hangs up
    (or when its body was refused: the server answered it). The response body is buffered
    and sent with a Content-Length. No lifespan events are sent: start and close the app
    yourself.
    """

    def __init__(
        self,
        app: AsgiApp,
        *,
        max_body: int = DEFAULT_MAX_BYTES,
        max_header_bytes: int = 65536,
        read_timeout: float = 30.0,
        idle_timeout: float = 60.0,
        head_timeout: float = 10.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_buffered: int = DEFAULT_MAX_BUFFERED_BYTES,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_header_bytes = max_header_bytes
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.head_timeout = head_timeout
        self.max_connections = max_connections
        # At least one largest body must fit, or such a request could never be served.
        self.budget = _Budget(max(max_buffered, max_body))
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._refusing: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._connections)

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
        for refusing in list(self._refusing):
            refusing.cancel()
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
        if len(self._connections) >= self.max_connections and not self._evict():
            refusing = asyncio.create_task(
                _refuse(reader, writer, HTTPStatus.SERVICE_UNAVAILABLE, close=True)
            )
            self._refusing.add(refusing)
            refusing.add_done_callback(self._refusing.discard)
            return
        connection = _Connection()
        connection.task = asyncio.create_task(self._serve(connection, reader, writer))
        self._connections.add(connection)
        connection.task.add_done_callback(lambda _: self._connections.discard(connection))

    def _evict(self) -> bool:
        """Close the connection idle the longest to make room; False if all are busy."""
        idle = [c for c in self._connections if not c.busy and c.task is not None]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.idle_since)
        assert oldest.task is not None
        oldest.task.cancel()
        self._connections.discard(oldest)
        return True

    async def _serve(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert isinstance(reader, _Reader)
        loop = asyncio.get_running_loop()
        try:
            keep = True
            while keep:
                connection.busy, connection.idle_since = False, loop.time()
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        first = await reader.readexactly(1)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return  # the client left, or stayed silent
                try:
                    async with asyncio.timeout(self.head_timeout):
                        head = first + await reader.readuntil(b"\r\n\r\n")
                except TimeoutError:
                    await _refuse(reader, writer, HTTPStatus.REQUEST_TIMEOUT)
                    return
                except asyncio.LimitOverrunError:
                    await _refuse(reader, writer, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
                    return
                connection.busy = True
                try:
                    keep = await self._exchange(head, reader, writer)
                except HttpRefusal as exc:
                    await _refuse(reader, writer, exc.status)
                    return
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
        request = parse_head(head)
        length = body_length(request, self.max_body)
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
        exchange = _Exchange(self, request, length, reader, writer)
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
            self.budget.release(exchange.reserved)
        if exchange.body_pending and exchange.written:
            # Answered without reading the body (a refusal on the head): the connection
            # cannot serve another request; let the client read the answer, then close.
            await _linger(reader, writer)
            return False
        # No answer (the client hung up) or an unfinished one: close.
        return exchange.keep_alive and exchange.written and not reader.gone.is_set()


class _Exchange:
    """One request's ASGI `receive` and `send`. The body is read on the first `receive()`;
    the answer is written when its body is complete, so `send()` returns once the bytes
    are handed to the socket."""

    def __init__(
        self,
        server: AsgiServer,
        request: Request,
        length: int | None,
        reader: _Reader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._server = server
        self._request = request
        self._length = length  # None: chunked
        self.body_pending = length != 0
        self.head = request.method == "HEAD"
        self._reader = reader
        self._writer = writer
        self.keep_alive = request.keep_alive
        self.reserved = 0
        self.done = asyncio.Event()
        self.started = False
        self.written = False
        self._asked = False
        self._status = 500
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    async def receive(self) -> MutableMapping[str, Any]:
        if not self._asked:
            self._asked = True
            try:
                body = await self._read_body()
            except HttpRefusal as exc:
                await self._fail(exc.status)
            except TimeoutError:
                await self._fail(HTTPStatus.REQUEST_TIMEOUT)
            except (asyncio.IncompleteReadError, ConnectionError):
                self.keep_alive = False  # the client hung up mid-body
            else:
                self.body_pending = False
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}
        # Then wait for the client to hang up (or for the exchange to end).
        gone = asyncio.create_task(self._reader.gone.wait())
        done = asyncio.create_task(self.done.wait())
        try:
            await asyncio.wait([gone, done], return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            done.cancel()
        return {"type": "http.disconnect"}

    async def _read_body(self) -> bytes:
        if self._length == 0:
            return b""
        if self._request.expects_continue:
            self._writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        async with asyncio.timeout(self._server.read_timeout):
            if self._length is None:
                return await read_chunked(self._reader, self._server.max_body, self._reserve)
            self._reserve(self._length)
            return await self._reader.readexactly(self._length)

    def _reserve(self, size: int) -> None:
        self._server.budget.reserve(size)
        self.reserved += size

    async def _fail(self, status: HTTPStatus) -> None:
        """Answer `status` for a body that cannot be read, and end the connection."""
        self.keep_alive = False
        if self.written or self.started:
            return
        self.written = True
        with contextlib.suppress(ConnectionError):
            self._writer.write(_refusal(status))
            await self._writer.drain()

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
        if self.body_pending:
            self.keep_alive = False  # the unread body stands where the next request would
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


def _refusal(status: HTTPStatus) -> bytes:
    """A complete `connection: close` answer for `status` (503 says when to come back)."""
    body = status.phrase.encode()
    retry = b"retry-after: 1\r\n" if status is HTTPStatus.SERVICE_UNAVAILABLE else b""
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%s"
        b"connection: close\r\n\r\n%s"
        % (status.value, status.phrase.encode(), len(body), retry, body)
    )


async def _refuse(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    status: HTTPStatus,
    *,
    close: bool = False,
) -> None:
    """Answer `status`, letting the client read the answer before the connection ends
    (`close`: and close it: the caller does not)."""
    try:
        writer.write(_refusal(status))
        await _linger(reader, writer)
    finally:
        if close:
            writer.close()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send what is buffered, end our side, and discard what the client still sends for a
    moment: closing with unread input would reset the connection before the client read
    the answer. Nothing read here is kept."""
    with contextlib.suppress(OSError, TimeoutError, asyncio.LimitOverrunError):
        async with asyncio.timeout(_LINGER_SECONDS):
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            while await reader.read(65536):
                pass
