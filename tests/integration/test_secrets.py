"""Credentials never reach /readyz, the relay's or the consumer's logs, or their errors:
real PostgreSQL, real sockets, the real relay process entry point (`relay.process.serve`).

The URL forms are those of tests/support/secrets.py; what the parsers and `redact_dsn`
make of every form is tested in tests/unit/test_redact.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
from collections.abc import AsyncIterator
from urllib.parse import quote

import psycopg
import pytest

from outboxkit import outbox
from outboxkit.brokers.http.consumer import AsgiServer, Receive, Scope, Send
from outboxkit.devservers import free_port
from outboxkit.inbox.inbox import Inbox
from outboxkit.inbox.runner import ConsumerRunner
from outboxkit.inbox.settings import ConsumerSettings
from outboxkit.outbox.errors import BrokerUnavailable
from outboxkit.relay.process import serve
from outboxkit.relay.runner import Relay
from outboxkit.relay.settings import RelaySettings
from tests.support.secrets import SECRET, SECRET_QUERY_NAMES
from tests.support.waiting import eventually

# A password with every character that ends a userinfo, percent-encoded so the URL parses.
PASSWORD = quote(f"p@ss/#?:{SECRET}", safe="")
QUERY = "&".join(f"{name}={SECRET}" for name in SECRET_QUERY_NAMES)


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


@pytest.fixture(autouse=True)
async def _collect_failed_connections() -> AsyncIterator[None]:
    # aio-pika's Connection.__del__ schedules close() on the running loop; when a failed
    # connect is collected after the loop is gone, that coroutine is never awaited and
    # the warning fails some later test. Collect while the loop still runs.
    yield
    gc.collect()
    await asyncio.sleep(0.01)


async def refusing_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """A webhook endpoint that refuses the credentials and quotes the request back,
    as some do: the relay must mask it all the same."""
    while (await receive()).get("more_body"):
        pass
    body = f"bad credentials for {scope['path']}?{scope['query_string'].decode()}".encode()
    await send({"type": "http.response.start", "status": 401, "headers": []})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def endpoint() -> AsyncIterator[int]:
    server = AsgiServer(refusing_endpoint)
    port = await server.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await server.close()


async def readyz(port: int) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def test_readyz_and_the_relay_log_never_show_the_secret(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    ops_port = free_port()
    async with endpoint() as port:
        broker = f"http://app:{PASSWORD}@127.0.0.1:{port}/hook?{QUERY}"
        with psycopg.connect(dsn) as conn:
            outbox.write(conn, "orders.created", {"n": 1})
        settings = RelaySettings(
            dsn=dsn,
            broker_url=broker,
            http_port=ops_port,
            poll_interval=0.05,
            backoff_base=0.05,
            backoff_max=0.2,
        )
        task = asyncio.create_task(serve(settings))
        seen: list[bytes] = []

        async def broker_down() -> bool:
            with contextlib.suppress(OSError):
                status, body = await readyz(ops_port)
                seen.append(body)
                return status == 503 and b"401" in body
            return False

        try:
            await eventually(broker_down, within=60)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
    checks = json.loads(seen[-1])["checks"]
    assert checks["broker"].startswith("down: credentials or signature refused: http://app:***@")
    assert "code=***" in checks["broker"]
    assert all(SECRET.encode() not in body for body in seen)
    assert "broker unavailable" in caplog.text
    assert SECRET not in caplog.text


UNREACHABLE = {
    "nats": f"nats://app:{PASSWORD}@127.0.0.1:1?connect_timeout=1&reconnect_wait=0",
    "nats-token": f"nats://{PASSWORD}@127.0.0.1:1?connect_timeout=1",
    "amqp": f"amqp://app:{PASSWORD}@127.0.0.1:1/vh?connect_timeout=1",
    "redis": f"redis://:{PASSWORD}@127.0.0.1:1/0?connect_timeout=1",
    "kafka": f"kafka://app:{PASSWORD}@127.0.0.1:1?connect_timeout=1&timeout=1",
    "sqs": f"sqs://AKIDEXAMPLE:{PASSWORD}@127.0.0.1:1?tls=false&connect_timeout=1&timeout=1",
    "pulsar": f"pulsar://app:{PASSWORD}@127.0.0.1:1?connect_timeout=1&timeout=1",
    "pulsar-token": f"pulsar://:{PASSWORD}@127.0.0.1:1?connect_timeout=1&timeout=1",
    "http": f"http://app:{PASSWORD}@127.0.0.1:1/hook?{QUERY}&outboxkit_connect_timeout=1",
    "postgresql": f"postgresql://app:{PASSWORD}@127.0.0.1:1/x?consumer=c&timeout=1",
    # libpq reads the host `S3cr3t…@127.0.0.1` and quotes it
    "postgresql-misread": f"postgresql://app:pa@{SECRET}@127.0.0.1:1/x?consumer=c&timeout=1",
}


@pytest.mark.parametrize("broker", UNREACHABLE.values(), ids=UNREACHABLE)
async def test_relay_start_up_against_an_unreachable_broker(
    dsn: str, broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    relay = Relay(RelaySettings(dsn=dsn, broker_url=broker))
    with pytest.raises(BrokerUnavailable) as caught:
        async with asyncio.timeout(60):
            await relay.start()
    await relay.publisher.close()
    assert SECRET not in str(caught.value)
    assert SECRET not in caplog.text


CONSUMED = {k: v for k, v in UNREACHABLE.items() if k != "http" and "postgresql" not in k}


@pytest.mark.parametrize("broker", CONSUMED.values(), ids=CONSUMED)
async def test_consumer_start_up_against_an_unreachable_broker(
    dsn: str, broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox(consumer="billing")

    @inbox.handler("orders.*")
    async def handle(tx: object, message: object) -> None:
        return None

    runner = ConsumerRunner(inbox, ConsumerSettings(dsn=dsn, broker_url=broker, prune_interval=0))
    with pytest.raises(BrokerUnavailable) as caught:
        async with asyncio.timeout(60):
            await runner.run()
    assert SECRET not in str(caught.value)
    assert SECRET not in caplog.text


async def test_relay_start_up_against_an_unreachable_database(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for dsn in (
        f"postgresql://app:pa@ss/{SECRET}@127.0.0.1:1/x",  # misread by libpq: host `ss/...`
        f"host=127.0.0.1 port=1 password='pa ss://{SECRET}'",
    ):
        relay = Relay(RelaySettings(dsn=dsn, broker_url="nats://127.0.0.1:1"))
        with pytest.raises(outbox.OutboxkitError) as caught:
            await relay.start()
        assert SECRET not in str(caught.value)
    assert SECRET not in caplog.text
