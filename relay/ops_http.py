"""A tiny HTTP/1.1 server for operating the relay: liveness, readiness and metrics.

    GET /healthz  200 "ok" while the event loop runs (a wedged loop cannot answer)
    GET /readyz   200 or 503 with {"ready": ..., "checks": {...}} from the readiness callback
    GET /metrics  200, the Prometheus text format of `RelayMetrics.render()`
    other paths   404; other methods 405

Built on `asyncio.start_server`, no threads and no dependencies. One request per connection
(`Connection: close`); the request line and headers are read under a size limit (431) and a
timeout (408), and a request body, if any, is discarded unparsed. Garbage gets a 400, a
client that connects and leaves is dropped, and none of it affects the next request.

    server = OpsServer(metrics, readiness=check_ready)
    port = await server.start("0.0.0.0", 9000)
    ...
    await server.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

from outboxkit.outbox.redact import redact_text
from outboxkit.relay.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from outboxkit.relay.metrics import RelayMetrics

logger = logging.getLogger(__name__)

_LINGER_SECONDS = 1.0
_DISCARD_CHUNK = 65536


@dataclass(frozen=True)
class Readiness:
    """The relay's answer to "can you do your job?", with one line per dependency.

    For example `Readiness(False, {"database": "ok", "broker": "down: timeout"})`. /readyz
    serves `checks` to anyone who can reach the port: never put a secret in it. As a last
    line of defence every URL and `password=` in it is redacted (`outbox.redact.redact_text`)
    before it is served.
    """

    ready: bool
    checks: dict[str, str] = field(default_factory=dict)


ReadinessCheck = Callable[[], Awaitable[Readiness]]
"""An async callable awaited on every GET /readyz; cancelled when it overruns its timeout."""


@dataclass(frozen=True)
class _Response:
    status: HTTPStatus
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    extra_headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        head = [
            f"HTTP/1.1 {self.status.value} {self.status.phrase}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.extra_headers),
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


class _BadRequest(Exception):
    """The request cannot be parsed; answered with `status`."""

    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status = status


class OpsServer:
    """Serves /healthz, /readyz and /metrics for one relay process."""

    def __init__(
        self,
        metrics: RelayMetrics,
        readiness: ReadinessCheck,
        *,
        readiness_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_header_bytes: int = 8192,
    ) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._readiness_timeout = readiness_timeout
        self._read_timeout = read_timeout
        self._max_header_bytes = max_header_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen on `host:port` and return the bound port (useful with port 0).

        With port 0, give a literal address: a name resolving to several addresses would bind
        each to a different port, and only the first is returned.
        """
        if self._server is not None:
            raise RuntimeError("OpsServer already started")
        self._server = await asyncio.start_server(
            self._on_connection, host, port, limit=self._max_header_bytes
        )
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def close(self) -> None:
        """Stop listening and drop connections still in progress."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Serve in a task of our own, so close() can cancel it: Python 3.11's start_server
        # logs a spurious error when the task it created for the callback is cancelled.
        task = asyncio.create_task(self._serve(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            response = await self._respond(reader)
            if response is not None:
                await self._send(reader, writer, response)
        except Exception:
            # One connection's surprise must never take the server down.
            logger.exception("ops server: unexpected error handling a request")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> _Response | None:
        try:
            async with asyncio.timeout(self._read_timeout):
                request_line = await self._read_head(reader)
        except TimeoutError:
            return _Response(HTTPStatus.REQUEST_TIMEOUT)
        except _BadRequest as exc:
            return _Response(exc.status)
        if request_line is None:
            return None  # the client connected and left without a word
        try:
            method, path = _parse_request_line(request_line)
        except _BadRequest as exc:
            return _Response(exc.status)
        return await self._route(method, path)

    async def _read_head(self, reader: asyncio.StreamReader) -> str | None:
        """Read the request line and headers; return the request line, None on a silent EOF."""
        request_line: str | None = None
        total = 0
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # one line longer than the stream limit
                raise _BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE) from None
            total += len(line)
            if total > self._max_header_bytes:
                raise _BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            if not line.endswith(b"\n"):  # EOF before the blank line
                if request_line is None and not line:
                    return None
                raise _BadRequest(HTTPStatus.BAD_REQUEST)
            if line in (b"\r\n", b"\n"):
                if request_line is None:
                    continue  # RFC 9112 2.2: ignore empty lines before the request line
                return request_line
            if request_line is None:
                request_line = line.decode("latin-1").rstrip("\r\n")
            elif b":" not in line:  # a header line must be `name: value`
                raise _BadRequest(HTTPStatus.BAD_REQUEST)

    async def _route(self, method: str, path: str) -> _Response:
        if method != "GET":
            status = HTTPStatus.METHOD_NOT_ALLOWED
            return _Response(status, b"method not allowed", extra_headers=(("Allow", "GET"),))
        handlers: dict[str, Callable[[], Awaitable[_Response]]] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics_page,
        }
        handler = handlers.get(path)
        if handler is None:
            return _Response(HTTPStatus.NOT_FOUND, b"not found")
        return await handler()

    async def _healthz(self) -> _Response:
        return _Response(HTTPStatus.OK, b"ok")

    async def _metrics_page(self) -> _Response:
        body = self._metrics.render().encode("utf-8")
        return _Response(HTTPStatus.OK, body, content_type=METRICS_CONTENT_TYPE)

    async def _readyz(self) -> _Response:
        readiness = await self._check_readiness()
        status = HTTPStatus.OK if readiness.ready else HTTPStatus.SERVICE_UNAVAILABLE
        checks = {redact_text(k): redact_text(v) for k, v in readiness.checks.items()}
        body = json.dumps({"ready": readiness.ready, "checks": checks}).encode()
        return _Response(status, body, content_type="application/json")

    async def _check_readiness(self) -> Readiness:
        try:
            async with asyncio.timeout(self._readiness_timeout):
                return await self._readiness()
        except TimeoutError:
            return Readiness(False, {"readiness": f"timed out after {self._readiness_timeout}s"})
        except Exception as exc:
            logger.warning("ops server: readiness check raised", exc_info=True)
            return Readiness(False, {"readiness": f"error: {type(exc).__name__}"})

    async def _send(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: _Response
    ) -> None:
        writer.write(response.encode())
        # A client that stopped reading or hung up must not hold the connection open
        # (TimeoutError and ConnectionError are both OSErrors).
        with contextlib.suppress(OSError):
            async with asyncio.timeout(self._read_timeout):
                await writer.drain()
            # Closing a socket with unread input sends a reset, which can destroy the response
            # before the client reads it (an oversized request, a body): half-close, then
            # discard what still arrives for a moment.
            writer.write_eof()
            async with asyncio.timeout(min(self._read_timeout, _LINGER_SECONDS)):
                while await reader.read(_DISCARD_CHUNK):
                    pass


def _parse_request_line(line: str) -> tuple[str, str]:
    """Split `GET /path?query HTTP/1.1` into method and path; raise _BadRequest if malformed."""
    parts = line.split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
        raise _BadRequest(HTTPStatus.BAD_REQUEST)
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
    return method, target.split("?", 1)[0]
