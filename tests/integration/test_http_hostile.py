"""The webhook receiver under hostile requests, over real sockets on loopback.

Raw TCP clients send the hostile bytes, httpx and the real publisher the normal requests,
so these tests are about HTTP behaviour, not about the server's code: they hold for any
server the consumer runs on. Covered: credentials are required and checked before the body
is read, connections and buffered bytes are capped, slow clients time out, malformed
framing is a 400, an envelope the inbox cannot store is a 400 (never a crash of the
runner), the signature covers every envelope field, a topic stays in its path segment, and
a consumer that went through a hostile corpus still handles a good message exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from outboxkit import migrations, outbox
from outboxkit.brokers import Subscription, create_consumer
from outboxkit.brokers.http import options as http_url
from outboxkit.brokers.http.consumer import AsgiServer, Receive, Scope, Send
from outboxkit.devservers.ports import free_port
from outboxkit.inbox import ConsumerRunner, ConsumerSettings, Inbox
from outboxkit.inbox.settings import Mode
from outboxkit.inbox.webhook import webhook_app
from outboxkit.outbox.errors import ConfigurationError
from outboxkit.outbox.message import Message
from tests.conftest import Database
from tests.integration.test_http import listening, publisher
from tests.support import hostile
from tests.support.publishers import publish_until_acked
from tests.support.waiting import eventually

SECRET_ENV = "OUTBOXKIT_TEST_HOSTILE_SECRET"
INSECURE = "outboxkit_insecure_no_auth=true"
GUARD = 30  # seconds: a hang guard, never a threshold


@pytest.fixture
def secret() -> Iterator[str]:
    value = f"whsec-{uuid.uuid4().hex}"
    os.environ[SECRET_ENV] = value
    try:
        yield value
    finally:
        os.environ.pop(SECRET_ENV, None)


# -- raw HTTP ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes] | None:
    """The next response (status, headers, body), or None if the server closed instead."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", 0))
    body = await asyncio.wait_for(reader.readexactly(length), GUARD)
    return int(lines[0].split(" ")[1]), headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server ends the connection (after what it still had to say)."""
    with contextlib.suppress(ConnectionError):
        while await asyncio.wait_for(reader.read(65536), GUARD):
            pass
    return True


async def until(condition: Callable[[], bool]) -> None:
    async def check() -> bool:
        return condition()

    await eventually(check, within=GUARD)


async def status_of(port: int, request: bytes) -> int | None:
    async with raw(port) as (reader, writer):
        writer.write(request)
        got = await answer(reader)
    return got[0] if got else None


class Recorder:
    """An ASGI app that reads the body and answers 200; it notes each request it starts."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.started.append(scope["path"])
        body = b""
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def serving(app: Any, **limits: Any) -> AsyncIterator[AsgiServer]:
    server = AsgiServer(app, **limits)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close(grace=0.5)


# -- consumers, publishers and a real inbox -------------------------------------------------


def consumer_url(port: int, *options: str) -> str:
    return f"http://127.0.0.1:{port}/hooks/{{topic}}" + ("?" + "&".join(options) if options else "")


@pytest.fixture
async def effects(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE effects (message_id uuid NOT NULL, topic text)")


async def count_effects(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        row = await (await conn.execute("SELECT count(*) FROM effects")).fetchone()
        assert row is not None
        return int(row[0])


def effect_inbox() -> Inbox:
    ib = Inbox(consumer="billing")

    @ib.handler("*")
    async def record(tx: psycopg.AsyncConnection[Any], message: Message) -> None:
        await tx.execute("INSERT INTO effects VALUES (%s, %s)", (message.message_id, message.topic))

    return ib


def settings(dsn: str, url: str, **overrides: Any) -> ConsumerSettings:
    base: dict[str, Any] = {"dsn": dsn, "broker_url": url, "fetch_wait": 0.2, "prune_interval": 0}
    base.update(poll_interval=0.05, backoff_base=0.05, backoff_max=0.2)
    return ConsumerSettings(**(base | overrides))


@contextlib.asynccontextmanager
async def running(runner: ConsumerRunner, url: str) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(runner.run())
    options = http_url.parse_url(url)

    async def up() -> bool:
        if task.done():
            return True
        try:
            _, writer = await asyncio.open_connection(options.host, options.port)
        except OSError:
            return False
        writer.close()
        return True

    await eventually(up, within=GUARD)
    try:
        yield task
    finally:
        runner.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, GUARD)


async def captured_request(url: str, message: Message) -> tuple[dict[str, str], bytes]:
    """The headers and body the real publisher sends for `message` to `url`'s options."""
    recorder_seen: list[tuple[dict[str, str], bytes]] = []

    async def capture(scope: Scope, receive: Receive, send: Send) -> None:
        event = await receive()
        headers = {
            bytes(n).decode("latin-1"): bytes(v).decode("latin-1") for n, v in scope["headers"]
        }
        recorder_seen.append((headers, event.get("body", b"")))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serving(capture) as server:
        query = url.partition("?")[2]
        async with publisher(f"http://127.0.0.1:{server.port}/capture?{query}") as pub:
            [outcome] = await pub.publish([message])
    assert outcome.acked, outcome
    [(headers, body)] = recorder_seen
    hop = {"host", "content-length", "connection", "accept", "accept-encoding", "user-agent"}
    return {k: v for k, v in headers.items() if k not in hop}, body


# -- item 4: secure by default ------------------------------------------------------------


async def test_a_receiver_without_credentials_refuses_to_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ConfigurationError, match="credentials"):
        create_consumer("http://127.0.0.1:8080/hooks", Subscription("c", ["*"]))
    dead = "postgresql://nobody@127.0.0.1:1/x"
    with pytest.raises(ConfigurationError, match="insecure_no_auth"):
        webhook_app(effect_inbox(), ConsumerSettings(dsn=dead, broker_url="http://0.0.0.0:80/"))
    # A Basic user is credentials too; an explicit opt-out starts, with a warning.
    assert create_consumer("http://u:p@127.0.0.1:1/hooks", Subscription("c", ["*"])) is not None
    caplog.set_level(logging.WARNING, logger="outboxkit.brokers.http.consumer")
    async with listening(consumer_url(free_port(), INSECURE)):
        pass
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("UNAUTHENTICATED" in r.getMessage() for r in warnings), caplog.text


@pytest.mark.parametrize("auth", ["secret", "basic"])
async def test_credentials_are_checked_before_the_body_is_read(secret: str, auth: str) -> None:
    port = free_port()
    if auth == "secret":
        url = consumer_url(port, f"outboxkit_secret_env={SECRET_ENV}")
    else:
        url = f"http://u:pw@127.0.0.1:{port}/hooks/{{topic}}"
    async with listening(url):
        for expect in (b"", b"expect: 100-continue\r\n"):
            async with raw(port) as (reader, writer):
                # Announces the largest body allowed and sends none of it.
                writer.write(
                    b"POST /hooks/orders.created HTTP/1.1\r\nhost: x\r\n"
                    b"authorization: Basic eDp5\r\ncontent-length: 10485760\r\n" + expect + b"\r\n"
                )
                got = await answer(reader)
                assert got is not None and got[0] == 401, got
                assert got[1]["connection"] == "close"
                assert await closed(reader)


async def test_webhook_app_refuses_on_the_head_too(secret: str) -> None:
    dead = "postgresql://nobody@127.0.0.1:1/x"
    url = f"http://ignored/?outboxkit_secret_env={SECRET_ENV}"
    app = webhook_app(effect_inbox(), ConsumerSettings(dsn=dead, broker_url=url))
    async with serving(app) as server, raw(server.port) as (reader, writer):
        writer.write(b"POST /w HTTP/1.1\r\ncontent-length: 10485760\r\n\r\n")
        got = await answer(reader)
        assert got is not None and got[0] == 401 and b"missing signature" in got[2]


# -- item 4: connections, bytes and time are bounded --------------------------------------


async def test_connections_over_the_cap_evict_idle_ones_or_get_503() -> None:
    app = Recorder()
    async with serving(app, max_connections=4) as server:
        port = server.port
        async with contextlib.AsyncExitStack() as stack:
            idle = [await stack.enter_async_context(raw(port)) for _ in range(4)]
            for _, writer in idle:
                writer.write(b"POST /slow HTTP/1.1\r\nx: ")  # a head that never ends
            await until(lambda: server.connections == 4)
            assert await status_of(port, b"POST /a HTTP/1.1\r\ncontent-length: 0\r\n\r\n") == 200
            # To make room, the connection idle the longest was closed.
            assert await closed(idle[0][0])
        async with contextlib.AsyncExitStack() as stack:
            busy = [await stack.enter_async_context(raw(port)) for _ in range(4)]
            for _, writer in busy:
                writer.write(b"POST /busy HTTP/1.1\r\ncontent-length: 10\r\n\r\nab")
            await until(lambda: app.started.count("/busy") == 4)
            async with raw(port) as (reader, writer):
                writer.write(b"POST /b HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
                got = await answer(reader)
                assert got is not None and got[0] == 503 and got[1]["retry-after"] == "1"
        # The busy ones hung up: there is room again.
        await until(lambda: server.connections == 0)
        assert await status_of(port, b"POST /c HTTP/1.1\r\ncontent-length: 0\r\n\r\n") == 200


async def test_body_bytes_held_at_once_are_capped() -> None:
    app = Recorder()
    mib = 1024 * 1024
    async with serving(app, max_body=mib, max_buffered=2 * mib) as server:
        port = server.port
        head = b"POST /big HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % mib
        async with raw(port) as first, raw(port) as second:
            for _, writer in (first, second):
                writer.write(head + b"x" * 1000)  # then nothing: the rest is owed
            await until(lambda: app.started.count("/big") == 2)
            async with raw(port) as (reader, writer):
                writer.write(head)
                got = await answer(reader)
                assert got is not None and got[0] == 503 and got[1]["retry-after"] == "1"
            for reader, writer in (first, second):
                writer.write(b"x" * (mib - 1000))
                got = await answer(reader)
                assert got is not None and got[0] == 200
        assert server.budget.used == 0
        async with raw(port) as (reader, writer):
            writer.write(head + b"y" * mib)
            got = await answer(reader)
            assert got is not None and got[0] == 200
    assert app.bodies == [b"x" * mib, b"x" * mib, b"y" * mib]


async def test_slow_heads_and_slow_bodies_get_408() -> None:
    async with serving(Recorder(), head_timeout=0.3, read_timeout=0.3) as server:
        for request in (
            b"POST /slow HTTP/1.1\r\nx: ",
            b"POST /slow HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc",
            b"POST /slow HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
        ):
            async with raw(server.port) as (reader, writer):
                writer.write(request)
                got = await answer(reader)
                assert got is not None and got[0] == 408, (request, got)


MALFORMED = [
    b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX",
    b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n" + b"5" * 2000 + b"\r\n",
    b"POST /x HTTP/1.1\r\nx: a\x00b\r\ncontent-length: 0\r\n\r\n",
    b"POST /x HTTP/1.1\r\nx: a\nb: c\r\ncontent-length: 0\r\n\r\n",
    b"POST /x\x00 HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
    b"POST /x HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
    b"POST /x HTTP/1.1\r\ncontent-length: \xd9\xa1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello, more or less
]


async def test_malformed_requests_get_400_never_an_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    app = Recorder()
    async with serving(app) as server:
        for request in MALFORMED:
            assert await status_of(server.port, request) == 400, request
        assert (
            await status_of(server.port, b"POST /ok HTTP/1.1\r\ncontent-length: 0\r\n\r\n") == 200
        )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert app.bodies == [b""]


# -- item 4: envelopes the inbox cannot store ---------------------------------------------


@pytest.mark.usefixtures("effects")
@pytest.mark.parametrize("mode", [Mode.DURABLE, Mode.IDEMPOTENT])
async def test_a_bad_envelope_header_is_a_400_and_the_runner_survives(dsn: str, mode: Mode) -> None:
    url = consumer_url(free_port(), INSECURE)
    runner = ConsumerRunner(effect_inbox(), settings(dsn, url, mode=mode))
    async with running(runner, url) as task:
        message = outbox.message("orders.created", {"n": 1}, key="k")
        good = http_url.envelope_headers(message)
        base = url.replace("{topic}", "orders.created").partition("?")[0]
        bad = [
            {"outboxkit-key": "a%00b"},
            {"outboxkit-header-x": "%00"},
            {"outboxkit-header-%ed%a0%80": "v"},  # a lone surrogate as a name
            {"outboxkit-key": "k" * 2000},
        ]
        async with httpx.AsyncClient(timeout=GUARD) as client:
            for extra in bad:
                response = await client.post(base, content=message.payload, headers=good | extra)
                assert response.status_code == 400, (extra, response.text)
        async with publisher(url) as pub:
            await publish_until_acked(pub, [message])
        await eventually(lambda: _effects_are(dsn, 1), within=GUARD)
        assert not task.done()


async def _effects_are(dsn: str, n: int) -> bool:
    return await count_effects(dsn) == n


# -- item 5: the signature covers every field ---------------------------------------------


@pytest.mark.usefixtures("effects")
async def test_a_replayed_signed_request_with_a_changed_field_is_refused(
    dsn: str, secret: str
) -> None:
    url = consumer_url(free_port(), f"outboxkit_secret_env={SECRET_ENV}")
    runner = ConsumerRunner(effect_inbox(), settings(dsn, url, mode=Mode.DURABLE))
    message = outbox.message("orders.created", {"n": 1}, key="k", headers={"trace": "t1"})
    headers, body = await captured_request(url, message)
    target = url.replace("{topic}", "orders.created").partition("?")[0]
    forged = [
        {"outboxkit-header-x": "%00"},  # would have reached the inbox's INSERT
        {"outboxkit-attempt": "99"},  # would dead-letter on the first failure
        {"outboxkit-header-trace": "t2"},
        {"content-type": "text/plain"},
        {"outboxkit-created-at": "2000-01-01T00:00:00+00:00"},
    ]
    async with running(runner, url) as task, httpx.AsyncClient(timeout=GUARD) as client:
        for extra in forged:
            response = await client.post(target, content=body, headers=headers | extra)
            assert response.status_code == 401, (extra, response.text)
        response = await client.post(target, content=body, headers=headers)
        assert response.status_code == 200
        await eventually(lambda: _effects_are(dsn, 1), within=GUARD)
        assert not task.done()


# -- item 9b: a topic stays inside its path segment ---------------------------------------


async def test_dot_topics_stay_inside_their_path_segment() -> None:
    url = consumer_url(free_port(), INSECURE)
    topics = ["..", ".", "a/../b"]
    async with listening(url) as consumer, publisher(url) as pub:
        publishing = asyncio.create_task(pub.publish([outbox.message(t, {}) for t in topics]))
        deliveries: list[Any] = []
        while len(deliveries) < len(topics) and not publishing.done():
            deliveries += await consumer.fetch(10, 1)
        for delivery in deliveries:
            await delivery.ack()
        outcomes = await asyncio.wait_for(publishing, GUARD)
    assert all(o.acked for o in outcomes), outcomes
    assert sorted(d.message.topic for d in deliveries) == sorted(topics)


# -- a hostile corpus against a running consumer ------------------------------------------


def corpus(secret: str) -> list[bytes]:
    path = b"/hooks/orders.created"
    post = b"POST " + path + b" HTTP/1.1\r\nhost: x\r\n"
    return [
        *MALFORMED,
        post + b"content-length: 99999999999\r\n\r\n",  # over the body limit: 413
        post + b"transfer-encoding: chunked\r\n\r\nffffffffff\r\n",  # a huge chunk: 413
        post + b"content-length: 2\r\n\r\n{}",  # no signature: 401
        post + b"outboxkit-signature: t=1,v2=" + b"0" * 64 + b"\r\ncontent-length: 0\r\n\r\n",
        post + b"outboxkit-key: a%00b\r\noutboxkit-signature: junk\r\ncontent-length: 0\r\n\r\n",
        post + b"x: " + b"y" * 70_000 + b"\r\n\r\n",  # a head over the limit: 431
        b"GET " + path + b" HTTP/1.1\r\n\r\n",  # 405
        b"POST /elsewhere HTTP/1.1\r\ncontent-length: 0\r\n\r\n",  # 404
        post.replace(b"1.1", b"3.0") + b"\r\n",  # 505
    ]


@pytest.mark.hostile
@pytest.mark.usefixtures("effects")
async def test_a_hostile_corpus_leaves_the_consumer_up_and_a_good_message_is_handled_once(
    dsn: str, secret: str
) -> None:
    port = free_port()
    url = consumer_url(port, f"outboxkit_secret_env={SECRET_ENV}", "outboxkit_max_connections=8")
    runner = ConsumerRunner(effect_inbox(), settings(dsn, url, mode=Mode.DURABLE))
    message = outbox.message("orders.created", {"n": 1}, key="k")
    async with running(runner, url) as task:
        for request in corpus(secret):
            status = await status_of(port, request)
            hostile.tried("webhook consumer (raw TCP corpus)", refused=True, reason=str(status))
            assert status is not None and 400 <= status < 600, (request[:80], status)
        async with contextlib.AsyncExitStack() as stack:
            # Slowloris: more idle connections than the cap, each holding half a head.
            for _ in range(12):
                _, writer = await stack.enter_async_context(raw(port))
                writer.write(b"POST /hooks/orders.created HTTP/1.1\r\nx: ")
            async with publisher(url) as pub:
                failures = await publish_until_acked(pub, [message])
                assert all(f.retriable for f in failures)
                [again] = await pub.publish([message])  # a duplicate: acked, no new effect
                assert again.acked
        await eventually(lambda: _effects_are(dsn, 1), within=GUARD)
        assert not task.done()
    hostile.tried("webhook consumer (raw TCP corpus)", refused=False)
    hostile.lost("webhook consumer (raw TCP corpus)", 1 - await count_effects(dsn))


@pytest.mark.usefixtures("effects")
@pytest.mark.parametrize("path", ["runner", "mounted app"])
async def test_a_statement_failing_on_a_live_connection_is_a_503_and_the_receiver_survives(
    dsn: str, path: str
) -> None:
    """A dead letter the database refuses (here a trigger) is not a lost database and never an
    exception out of the app: the sender is asked to retry, and the receiver keeps serving."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'refused by a trigger'; END $$"
        )
        await conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON outboxkit.inbox_dead_letters"
            " FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    ib = effect_inbox()

    @ib.handler("poison")
    async def poison(tx: psycopg.AsyncConnection[Any], message: Message) -> None:
        raise ValueError("poison")

    message = outbox.message("poison", {"n": 1}, key="k")
    headers = http_url.envelope_headers(message)
    good = outbox.message("orders.created", {"n": 2}, key="k2")
    if path == "runner":
        url = consumer_url(free_port(), INSECURE)
        runner = ConsumerRunner(ib, settings(dsn, url, max_attempts=1))
        async with running(runner, url) as task:
            base = url.replace("{topic}", "poison").partition("?")[0]
            async with httpx.AsyncClient(timeout=GUARD) as client:
                response = await client.post(base, content=message.payload, headers=headers)
            assert response.status_code == 503, response.text
            assert not task.done()
            async with publisher(url) as pub:
                await publish_until_acked(pub, [good])
            await eventually(lambda: _effects_are(dsn, 1), within=GUARD)
            assert not task.done()
        return
    app = webhook_app(ib, settings(dsn, f"http://ignored/?{INSECURE}", max_attempts=1))
    try:
        async with serving(app) as server, httpx.AsyncClient(timeout=GUARD) as client:
            base = f"http://127.0.0.1:{server.port}/hooks"
            poisoned = await client.post(f"{base}/poison", content=message.payload, headers=headers)
            assert poisoned.status_code == 503, poisoned.text
            assert poisoned.json()["status"] == "database error", poisoned.text
            handled = await client.post(
                f"{base}/orders.created",
                content=good.payload,
                headers=http_url.envelope_headers(good),
            )
            assert handled.status_code == 200, handled.text
    finally:
        await app.aclose()
    assert await count_effects(dsn) == 1


async def test_a_mounted_webhook_app_refuses_a_schema_missing_a_migration(
    empty_db: Database,
) -> None:
    """A mounted app gets no lifespan events: the first authenticated request checks the
    schema like a relay or a consumer at start-up, and a 503 asks the sender to come back."""
    migrations.apply(empty_db.dsn, target=migrations.LATEST - 1)
    app = webhook_app(effect_inbox(), settings(empty_db.dsn, f"http://ignored/?{INSECURE}"))
    message = outbox.message("orders.created", {"n": 1})
    try:
        async with serving(app) as server, httpx.AsyncClient(timeout=GUARD) as client:
            response = await client.post(
                f"http://127.0.0.1:{server.port}/hooks/orders.created",
                content=message.payload,
                headers=http_url.envelope_headers(message),
            )
        assert response.status_code == 503, response.text
        assert response.json()["status"] == "schema not migrated"
    finally:
        await app.aclose()
