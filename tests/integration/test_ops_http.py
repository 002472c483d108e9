"""The ops HTTP server over real loopback sockets: routes, readiness, and hostile clients."""

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from outboxkit.relay.metrics import CONTENT_TYPE, RelayMetrics
from outboxkit.relay.ops_http import OpsServer, Readiness

HOST = "127.0.0.1"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeRelay:
    """What the relay would hand the server: its metrics and a readiness it can flip."""

    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    readiness: Readiness = field(
        default_factory=lambda: Readiness(True, {"database": "ok", "partitions": "4 owned"})
    )
    delay: float = 0.0
    error: Exception | None = None

    async def check(self) -> Readiness:
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.readiness


@dataclass
class Running:
    relay: FakeRelay
    server: OpsServer
    port: int


@contextlib.asynccontextmanager
async def serving(read_timeout: float) -> AsyncIterator[Running]:
    relay = FakeRelay()
    server = OpsServer(relay.metrics, relay.check, readiness_timeout=0.3, read_timeout=read_timeout)
    port = await server.start(HOST, 0)
    try:
        yield Running(relay, server, port)
    finally:
        await server.close()


@pytest.fixture
async def ops() -> AsyncIterator[Running]:
    # A read timeout that a stall of a loaded machine does not reach (the client shares
    # the server's event loop); the test of the timeout itself starts its own server.
    async with serving(read_timeout=5) as running:
        yield running


async def exchange(port: int, raw: bytes) -> bytes:
    """Send `raw`, half-close, and return everything the server writes until it closes."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(raw)
        writer.write_eof()
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


def parse(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status), headers, body)


async def get(port: int, path: str, method: str = "GET") -> Reply:
    request = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: test\r\n\r\n"
    return parse(await exchange(port, request.encode()))


async def test_healthz(ops: Running) -> None:
    reply = await get(ops.port, "/healthz")
    assert reply.status == 200
    assert reply.body == b"ok"
    assert reply.headers["connection"] == "close"
    assert reply.headers["content-length"] == "2"


async def test_healthz_with_a_real_client(ops: Running) -> None:
    def fetch() -> tuple[int, bytes]:
        with urllib.request.urlopen(f"http://{HOST}:{ops.port}/healthz?probe=1", timeout=5) as r:
            return r.status, r.read()

    assert await asyncio.to_thread(fetch) == (200, b"ok")


async def test_readyz_ready_then_not(ops: Running) -> None:
    reply = await get(ops.port, "/readyz")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert json.loads(reply.body) == {
        "ready": True,
        "checks": {"database": "ok", "partitions": "4 owned"},
    }

    ops.relay.readiness = Readiness(False, {"database": "ok", "broker": "down: refused"})
    reply = await get(ops.port, "/readyz")
    assert reply.status == 503
    assert json.loads(reply.body)["checks"]["broker"] == "down: refused"


async def test_a_slow_readiness_check_times_out_as_503(ops: Running) -> None:
    ops.relay.delay = 30
    started = time.monotonic()
    reply = await get(ops.port, "/readyz")
    assert reply.status == 503
    assert time.monotonic() - started < 10  # a hang guard: the check itself takes 30 s
    assert json.loads(reply.body) == {
        "ready": False,
        "checks": {"readiness": "timed out after 0.3s"},
    }


async def test_a_failing_readiness_check_is_503(
    ops: Running, caplog: pytest.LogCaptureFixture
) -> None:
    ops.relay.error = ConnectionRefusedError("postgresql://user:secret@db/app")
    reply = await get(ops.port, "/readyz")
    assert reply.status == 503
    assert b"secret" not in reply.body  # only the exception type reaches the client
    assert json.loads(reply.body)["checks"] == {"readiness": "error: ConnectionRefusedError"}
    assert "readiness check raised" in caplog.text


async def test_metrics(ops: Running) -> None:
    ops.relay.metrics.published_counts({"order.created": 3})
    reply = await get(ops.port, "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"] == CONTENT_TYPE
    assert reply.headers["content-length"] == str(len(reply.body))
    assert b'outboxkit_relay_published_total{topic="order.created"} 3.0\n' in reply.body


async def test_unknown_path_is_404(ops: Running) -> None:
    assert (await get(ops.port, "/nope")).status == 404
    assert (await get(ops.port, "/healthz/extra")).status == 404


async def test_post_is_405(ops: Running) -> None:
    reply = await get(ops.port, "/metrics", method="POST")
    assert reply.status == 405
    assert reply.headers["allow"] == "GET"


async def test_a_request_body_is_never_read_yet_the_reply_arrives(ops: Running) -> None:
    body = b"x" * 500_000
    head = f"POST /readyz HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    assert parse(await exchange(ops.port, head + body)).status == 405


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"\x00\xff\xfe garbage\r\n\r\n", 400),
        (b"GET\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /healthz HTTP/9.9\r\n\r\n", 505),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", 400),  # EOF before the blank line
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X-Pad: y\r\n" * 1_000 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X-Pad: y\r\n" * 200_000 + b"\r\n", 431),
    ],
)
async def test_garbage_gets_an_error_and_the_server_carries_on(
    ops: Running, raw: bytes, status: int
) -> None:
    assert parse(await exchange(ops.port, raw)).status == status
    assert (await get(ops.port, "/healthz")).status == 200


async def test_a_client_that_sends_nothing_is_dropped(ops: Running) -> None:
    assert await exchange(ops.port, b"") == b""
    assert (await get(ops.port, "/healthz")).status == 200


async def test_a_silent_client_times_out_and_others_are_served_meanwhile() -> None:
    async with serving(read_timeout=0.5) as ops:
        reader, writer = await asyncio.open_connection(HOST, ops.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\n")  # and never the blank line
            assert (await get(ops.port, "/healthz")).status == 200
            async with asyncio.timeout(5):
                assert parse(await reader.read()).status == 408
        finally:
            writer.close()
            await writer.wait_closed()


async def test_close_drops_a_connection_in_progress() -> None:
    relay = FakeRelay()
    server = OpsServer(relay.metrics, relay.check, read_timeout=60)
    port = await server.start(HOST, 0)
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # let the server start reading
        async with asyncio.timeout(2):
            await server.close()
            assert await reader.read() == b""
    finally:
        writer.close()
        await writer.wait_closed()
    with pytest.raises(OSError):
        await asyncio.open_connection(HOST, port)


async def test_start_twice_is_an_error(ops: Running) -> None:
    with pytest.raises(RuntimeError, match="already started"):
        await ops.server.start(HOST, 0)
