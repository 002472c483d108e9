"""HTTP webhooks over real HTTP on loopback: the publisher against endpoints answering chosen
statuses (or nothing), the listening consumer, `webhook_app` with a real inbox, the server.

Everything here talks through real sockets: the publisher's httpx pool, our `AsgiServer`,
raw asyncio streams for the protocol edge cases. `httpx.ASGITransport` is used only for the
app-level answers of `webhook_app`, which are also checked end to end through the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from outboxkit import outbox
from outboxkit.brokers import Outcome, Subscription, create_consumer, create_publisher
from outboxkit.brokers.http import consumer as http_consumer
from outboxkit.brokers.http import options as http_url
from outboxkit.brokers.http.consumer import AsgiServer, HttpConsumer, Receive, Scope, Send
from outboxkit.brokers.http.publisher import HttpPublisher
from outboxkit.brokers.http.signature import Verifier, signature_headers
from outboxkit.devservers.ports import free_port
from outboxkit.inbox import ConsumerRunner, ConsumerSettings, Inbox
from outboxkit.inbox.webhook import webhook_app
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError, InvalidMessage
from outboxkit.outbox.ids import uuid7
from outboxkit.outbox.message import BYTES_CONTENT_TYPE, Message
from outboxkit.relay import Relay, RelaySettings
from tests.integration.brokers import sample_messages
from tests.support.publishers import publish_until_acked
from tests.support.waiting import eventually

PASSWORD = "s3cr3t-pw"
SECRET_ENV = "OUTBOXKIT_TEST_HTTP_SECRET"
# These tests are about something else than authentication: an explicitly open receiver.
INSECURE = "outboxkit_insecure_no_auth=true"
OPEN_APP_URL = f"http://ignored/?{INSECURE}"
ROOT = Path(__file__).resolve().parents[2]

# -- harness -----------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the scripted endpoint received it."""

    method: str
    raw_path: str
    query: str
    headers: dict[str, str]
    body: bytes


Script = Callable[[Seen], Awaitable[tuple[int, dict[str, str], bytes] | None]]


async def ok(_: Seen) -> tuple[int, dict[str, str], bytes]:
    return 200, {}, b'{"ok": true}'


@dataclass
class Endpoint:
    """A real HTTP endpoint (our AsgiServer) answering what `script` says; None: never."""

    script: Script = ok
    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    server: AsgiServer | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        request = Seen(
            scope["method"],
            bytes(scope["raw_path"]).decode(),
            bytes(scope["query_string"]).decode(),
            {bytes(n).decode("latin-1"): bytes(v).decode("latin-1") for n, v in scope["headers"]},
            body,
        )
        self.seen.append(request)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            answer = await self.script(request)
            if answer is None:
                await receive()  # never answer: wait for the client to hang up
                return
        finally:
            self.in_flight -= 1
        status, headers, data = answer
        raw = [(n.encode(), v.encode()) for n, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": data})

    async def start(self, port: int = 0) -> str:
        self.server = AsgiServer(self)
        port = await self.server.start("127.0.0.1", port)
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close(grace=0.5)


@contextlib.asynccontextmanager
async def endpoint(script: Script = ok, port: int = 0) -> AsyncIterator[tuple[Endpoint, str]]:
    app = Endpoint(script)
    url = await app.start(port)
    try:
        yield app, url
    finally:
        await app.stop()


@contextlib.asynccontextmanager
async def publisher(url: str) -> AsyncIterator[HttpPublisher]:
    created = create_publisher(url)
    assert isinstance(created, HttpPublisher)
    try:
        yield created
    finally:
        await created.close()


@contextlib.asynccontextmanager
async def listening(url: str, *topics: str) -> AsyncIterator[HttpConsumer]:
    consumer = create_consumer(url, Subscription("billing", list(topics) or ["*"]))
    assert isinstance(consumer, HttpConsumer)
    await consumer.connect()
    try:
        yield consumer
    finally:
        await consumer.close()


@pytest.fixture
def secret() -> Iterator[str]:
    value = f"whsec-{uuid.uuid4().hex}"
    os.environ[SECRET_ENV] = value
    try:
        yield value
    finally:
        os.environ.pop(SECRET_ENV, None)


def tricky() -> Message:
    """Non-ASCII, `%`, blanks and upper case where HTTP headers would mangle them."""
    return Message(
        message_id=uuid7(),
        topic="orders/é 100%.created",
        payload=bytes(range(256)),
        key=" clé: 50% ",
        headers={"X-Trace": "  a b  ", "é": "ü%20", "traceparent": "00-ab-01", "": "empty"},
        content_type=BYTES_CONTENT_TYPE,
        created_at=outbox.message("t", {}).created_at,
    )


def same(got: Message | None, sent: Message) -> bool:
    assert got is not None
    fields = ("message_id", "topic", "payload", "key", "content_type", "created_at")
    return all(getattr(got, f) == getattr(sent, f) for f in fields) and dict(got.headers) == dict(
        sent.headers
    )


# -- URLs, headers, signatures -----------------------------------------------------------


def test_url_options_are_removed_and_the_endpoint_query_kept() -> None:
    url = (
        f"https://u:{PASSWORD}@hooks.example:8443/a/%7Btopic%7D/in?key=v%20w&outboxkit_timeout=2"
        "&x=1&outboxkit_concurrency=3&outboxkit_retry_status=404,409"
    )
    o = http_url.parse_url(url)
    assert (o.scheme, o.host, o.port, o.user, o.password) == (
        "https",
        "hooks.example",
        8443,
        "u",
        PASSWORD,
    )
    assert (o.timeout, o.concurrency, o.retry_status) == (2.0, 3, frozenset({404, 409}))
    assert o.url_for("a/b c") == "https://hooks.example:8443/a/a%2Fb%20c/in?key=v%20w&x=1"
    assert PASSWORD not in o.display and PASSWORD not in repr(o)
    assert http_url.parse_url("http://h/x/{topic}").url_for("t") == "http://h/x/t"
    assert http_url.parse_url("http://h").url_for("t") == "http://h/"


@pytest.mark.parametrize(
    "url",
    [
        "http://h/x?outboxkit_nope=1",
        "http://h/x?outboxkit_timeout=0",
        "http://h/x?outboxkit_concurrency=0",
        "http://h/x?outboxkit_retry_status=500",
        "http://h/x?outboxkit_secret_env=not-a-name",
        "http://h/{topic}/{topic}",
        "http://h/x?t={topic}",
        "ftp://h/x",
        "http:///x",
        "http://h/x#frag",
    ],
)
def test_bad_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        http_url.parse_url(url)


def test_consumer_path_matching() -> None:
    o = http_url.parse_url("http://h/events/{topic}/in")
    assert o.match_path("/events/a%2Fb%20c/in") == (True, "a/b c")
    assert o.match_path("/events/x/y/in") == (False, None)
    assert o.match_path("/events//in") == (False, None)
    assert o.match_path("/other/x/in") == (False, None)
    fixed = http_url.parse_url("http://h/hooks/")
    assert fixed.match_path("/hooks") == (True, None) and fixed.match_path("/hook")[0] is False


def test_header_values_and_names_round_trip() -> None:
    message = tricky()
    headers = http_url.envelope_headers(message)
    assert all(v.isascii() and v == v.strip() for v in headers.values())
    assert all(n == n.lower() for n in headers)
    assert headers["idempotency-key"] == str(message.message_id)
    assert headers["outboxkit-topic"] == "orders/%C3%A9%20100%25.created"
    assert same(http_url.message_from_headers(headers.items(), message.payload), message)


def test_malformed_envelopes_are_refused() -> None:
    good = http_url.envelope_headers(outbox.message("t.x", {"a": 1}))
    with pytest.raises(InvalidMessage):
        http_url.message_from_headers(
            [(k, v) for k, v in good.items() if k != "outboxkit-message-id"], b"{}"
        )
    with pytest.raises(InvalidMessage):
        http_url.message_from_headers([*good.items(), ("outboxkit-topic", "other")], b"{}")
    with pytest.raises(InvalidMessage):
        http_url.message_from_headers([*good.items(), ("outboxkit-header-x", "%ff")], b"{}")
    with pytest.raises(InvalidMessage):  # the path's topic must agree with the header
        http_url.message_from_headers(good.items(), b"{}", topic="t.y")
    bad_type = Message(message_id=uuid7(), topic="t", payload=b"", content_type="a\nb")
    with pytest.raises(InvalidMessage):
        http_url.envelope_headers(bad_type)


# -- the publisher -----------------------------------------------------------------------


async def test_posts_the_envelope_signed_with_basic_auth(secret: str) -> None:
    async with endpoint() as (app, base):
        url = (
            f"{base.replace('http://', f'http://u:{PASSWORD}@')}/in/{{topic}}?token=abc"
            f"&outboxkit_secret_env={SECRET_ENV}"
        )
        async with publisher(url) as pub:
            await pub.connect()
            batch = [*sample_messages(20), tricky()]
            outcomes = await pub.publish(batch)
    assert all(o.acked for o in outcomes), outcomes
    assert len(app.seen) == len(batch)
    by_id = {r.headers["outboxkit-message-id"]: r for r in app.seen}
    for message in batch:
        request = by_id[str(message.message_id)]
        assert request.method == "POST" and request.query == "token=abc"
        assert request.raw_path == "/in/" + http_url.quote(message.topic, safe="")
        assert request.headers["idempotency-key"] == str(message.message_id)
        assert request.headers["outboxkit-attempt"] == "1"
        assert request.headers["content-type"] == message.content_type
        assert request.headers["authorization"].startswith("Basic ")
        assert request.body == message.payload
        assert same(http_url.message_from_headers(request.headers.items(), request.body), message)
        verifier = Verifier([secret.encode()], tolerance=60)
        verifier.verify(request.headers, request.body, now=time.time())  # v2, by default
        assert ",v2=" in request.headers["outboxkit-signature"]


STATUSES = [
    (200, "acked"),
    (201, "acked"),
    (204, "acked"),
    (400, "reject"),
    (404, "reject"),
    (409, "reject"),
    (413, "reject"),
    (422, "reject"),
    (408, "retry"),
    (425, "retry"),
    (429, "retry"),
    (500, "retry"),
    (502, "retry"),
    (503, "retry"),
    (504, "retry"),
    (401, "unreachable"),
    (403, "unreachable"),
    (301, "unreachable"),
    (308, "unreachable"),
]


def kind(outcome: Outcome) -> str:
    if outcome.acked:
        return "acked"
    if outcome.unavailable:
        return "unreachable"
    return "retry" if outcome.retriable else "reject"


async def test_statuses_map_to_outcomes() -> None:
    async def answer(request: Seen) -> tuple[int, dict[str, str], bytes]:
        status = int(request.raw_path.rsplit("/", 1)[1])
        extra = {"retry-after": "7"} if status in (429, 503) else {}
        if 300 <= status < 400:
            extra["location"] = "/elsewhere"
        return status, extra, b"why:  " + b"x" * 500

    async with endpoint(answer) as (_, base), publisher(f"{base}/s/{{topic}}") as pub:
        batch = [Message(message_id=uuid7(), topic=str(s), payload=b"{}") for s, _ in STATUSES]
        outcomes = await pub.publish(batch)
    assert [kind(o) for o in outcomes] == [k for _, k in STATUSES], outcomes
    by_status = dict(zip((s for s, _ in STATUSES), outcomes, strict=True))
    assert "answered 429 (Retry-After: 7): why: xxx" in str(by_status[429].error)
    assert len(str(by_status[500].error)) < 400  # the body is quoted, briefly


async def test_retry_status_option_turns_a_4xx_into_a_retry() -> None:
    async def not_found(_: Seen) -> tuple[int, dict[str, str], bytes]:
        return 404, {}, b""

    async with (
        endpoint(not_found) as (_, base),
        publisher(f"{base}/x?outboxkit_retry_status=404") as pub,
    ):
        [outcome] = await pub.publish([outbox.message("t", {})])
    assert kind(outcome) == "retry"


async def test_attempt_header_counts_the_posts_of_a_message() -> None:
    answers = iter([500, 503, 200])

    async def flaky(_: Seen) -> tuple[int, dict[str, str], bytes]:
        return next(answers), {}, b""

    async with endpoint(flaky) as (app, base), publisher(f"{base}/x") as pub:
        message = outbox.message("t", {})
        failures = await publish_until_acked(pub, [message])
    assert len(failures) == 2
    assert [r.headers["outboxkit-attempt"] for r in app.seen] == ["1", "2", "3"]
    assert {r.headers["idempotency-key"] for r in app.seen} == {str(message.message_id)}


async def test_an_outage_does_not_age_a_message() -> None:
    port = free_port()
    message = outbox.message("t", {})
    async with publisher(f"http://127.0.0.1:{port}/x") as pub:
        async with endpoint(port=port):
            await pub.connect()
        for _ in range(3):
            assert kind((await pub.publish([message]))[0]) in ("unreachable", "retry")
        async with endpoint(port=port) as (app, _):
            await publish_until_acked(pub, [message])
    assert app.seen[-1].headers["outboxkit-attempt"] == str(len(app.seen))


async def test_an_endpoint_that_never_answers_is_a_retry_within_the_timeout() -> None:
    async def silent(_: Seen) -> None:
        return None

    async with endpoint(silent) as (_, base), publisher(f"{base}/x?outboxkit_timeout=0.5") as pub:
        started = time.monotonic()
        outcomes = await pub.publish([outbox.message("t", {}) for _ in range(3)])
    assert time.monotonic() - started < 30  # a hang guard
    assert [kind(o) for o in outcomes] == ["retry"] * 3


async def test_a_tcp_blackhole_is_a_retry_within_the_timeout() -> None:
    """A peer that accepts the connection and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with publisher(f"http://127.0.0.1:{port}/x?outboxkit_timeout=0.5") as pub:
            started = time.monotonic()
            [outcome] = await pub.publish([outbox.message("t", {})])
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert time.monotonic() - started < 30
    assert kind(outcome) == "retry" and "no answer" in str(outcome.error)


async def test_refused_connections_are_unreachable_and_the_publisher_recovers() -> None:
    port = free_port()
    async with publisher(f"http://127.0.0.1:{port}/x") as pub:
        with pytest.raises(BrokerUnavailable):
            await pub.connect()
        started = time.monotonic()
        outcomes = await pub.publish([outbox.message("t", {}) for _ in range(50)])
        assert time.monotonic() - started < 30
        assert all(kind(o) == "unreachable" for o in outcomes)
        async with endpoint(port=port) as (app, _):
            assert all(o.acked for o in await pub.publish([outbox.message("t", {})]))
        # The endpoint went away (its keep-alive connection too) and came back.
        down = await pub.publish([outbox.message("t", {})])
        assert kind(down[0]) in ("unreachable", "retry")
        async with endpoint(port=port) as (app, _):
            await publish_until_acked(pub, [outbox.message("t", {})])
        assert len(app.seen) >= 1


async def test_oversize_payload_is_rejected_unsent() -> None:
    async with endpoint() as (app, base), publisher(f"{base}/x?outboxkit_max_bytes=100") as pub:
        assert pub.capabilities.max_message_bytes == 100
        small = Message(message_id=uuid7(), topic="t", payload=b"x" * 100)
        big = Message(message_id=uuid7(), topic="t", payload=b"x" * 101)
        outcomes = await pub.publish([small, big])
    assert [kind(o) for o in outcomes] == ["acked", "reject"]
    assert [r.body for r in app.seen] == [small.payload]


async def test_concurrency_is_bounded_and_uses_few_connections() -> None:
    async def slow(_: Seen) -> tuple[int, dict[str, str], bytes]:
        await asyncio.sleep(0.02)
        return 200, {}, b""

    query = "outboxkit_concurrency=4&outboxkit_timeout=30"
    async with endpoint(slow) as (app, base), publisher(f"{base}/x?{query}") as pub:
        outcomes = await pub.publish([outbox.message("t", {}) for _ in range(40)])
    assert all(o.acked for o in outcomes)
    assert 1 < app.most_in_flight <= 4


async def test_a_slow_endpoint_gets_the_rest_of_the_batch_later() -> None:
    async def slow(_: Seen) -> tuple[int, dict[str, str], bytes]:
        await asyncio.sleep(0.6)
        return 200, {}, b""

    async with endpoint(slow) as (_, base):
        url = f"{base}/x?outboxkit_concurrency=1&outboxkit_timeout=2"
        async with publisher(url) as pub:
            outcomes = await pub.publish([outbox.message("t", {}) for _ in range(8)])
    assert outcomes[0].acked
    assert kind(outcomes[-1]) == "unreachable" and "not sent" in str(outcomes[-1].error)


async def test_secret_is_read_at_connect_not_at_create() -> None:
    os.environ.pop(SECRET_ENV, None)
    query = f"outboxkit_secret_env={SECRET_ENV}"
    async with endpoint() as (_, base), publisher(f"{base}/x?{query}") as pub:
        with pytest.raises(ConfigurationError, match=SECRET_ENV):
            await pub.connect()
        [down] = await pub.publish([outbox.message("t", {})])
        assert kind(down) == "unreachable"
        os.environ[SECRET_ENV] = "later"
        try:
            [up] = await pub.publish([outbox.message("t", {})])
        finally:
            os.environ.pop(SECRET_ENV, None)
    assert up.acked


async def test_credentials_never_appear_in_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def echo(request: Seen) -> tuple[int, dict[str, str], bytes]:
        return 401, {}, json.dumps(request.headers).encode()

    errors: list[str] = []
    port = free_port()
    url = f"http://u:{PASSWORD}@127.0.0.1:{port}/x?password={PASSWORD}"
    async with publisher(url) as pub:
        with pytest.raises(BrokerUnavailable) as refused:
            await pub.connect()
        errors.append(str(refused.value))
        errors += [str(o.error) for o in await pub.publish([outbox.message("t", {})])]
        async with endpoint(echo, port=port):
            errors += [str(o.error) for o in await pub.publish([outbox.message("t", {})])]
    assert any("401" in e for e in errors), errors
    assert not any(PASSWORD in e for e in errors), errors
    assert PASSWORD not in caplog.text


# -- the listening consumer --------------------------------------------------------------


def consumer_url(port: int, *options: str) -> str:
    return f"http://127.0.0.1:{port}/hooks/{{topic}}" + ("?" + "&".join(options) if options else "")


async def test_a_post_is_held_until_the_ack(secret: str) -> None:
    url = consumer_url(free_port(), f"outboxkit_secret_env={SECRET_ENV}")
    async with listening(url) as consumer, publisher(url) as pub:
        sent = [tricky(), *sample_messages(10)]
        publishing = asyncio.create_task(pub.publish(sent))
        deliveries: list[Any] = []
        while len(deliveries) < len(sent):
            deliveries += await consumer.fetch(100, 5)
        await asyncio.sleep(0.1)
        assert not publishing.done()  # nothing is answered before the runner says so
        for delivery in deliveries:
            assert delivery.attempt == 1
            await delivery.ack()
        outcomes = await asyncio.wait_for(publishing, 30)
    assert all(o.acked for o in outcomes), outcomes
    got = {d.message.message_id: d.message for d in deliveries}
    assert all(same(got[m.message_id], m) for m in sent)


async def test_a_nak_answers_503_with_retry_after_and_the_attempt_grows() -> None:
    url = consumer_url(free_port(), INSECURE)
    async with listening(url) as consumer, publisher(url) as pub:
        message = outbox.message("orders.created", {"n": 1})
        for attempt in (1, 2):
            publishing = asyncio.create_task(pub.publish([message]))
            [delivery] = await consumer.fetch(10, 5)
            assert delivery.attempt == attempt
            await delivery.nak(2.5)
            [outcome] = await asyncio.wait_for(publishing, 30)
            assert kind(outcome) == "retry"
            assert "503" in str(outcome.error) and "Retry-After: 3" in str(outcome.error)


async def test_requests_the_consumer_refuses() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"http://u:{PASSWORD}@127.0.0.1:{port}/hooks/{{topic}}?outboxkit_secret_env={SECRET_ENV}"
    os.environ[SECRET_ENV] = "right"
    try:
        async with listening(url, "orders.*") as consumer:
            async with publisher(url) as pub:
                [no_handler] = await pub.publish([outbox.message("invoices.sent", {})])
            os.environ[SECRET_ENV] = "wrong"
            async with publisher(url) as pub:
                [bad_sig] = await pub.publish([outbox.message("orders.created", {})])
            os.environ[SECRET_ENV] = "right"
            async with publisher(url.replace("/hooks/", "/elsewhere/")) as pub:
                [bad_path] = await pub.publish([outbox.message("orders.created", {})])
            async with httpx.AsyncClient(base_url=base) as client:
                unauthenticated = await client.post("/hooks/orders.created", content=b"{}")
                get = await client.get("/hooks/orders.created")
                headers = {"authorization": httpx.BasicAuth("u", PASSWORD)._auth_header}
                message = outbox.message("orders.created", {})
                envelope = http_url.envelope_headers(message)
                now = int(time.time())
                envelope |= signature_headers([b"right"], now, envelope, message.payload)
                wrong_path_topic = await client.post(
                    "/hooks/orders.other", content=message.payload, headers=envelope | headers
                )
                del envelope["outboxkit-message-id"]
                envelope |= signature_headers([b"right"], now, envelope, message.payload)
                malformed = await client.post(
                    "/hooks/orders.created", content=message.payload, headers=envelope | headers
                )
            assert await consumer.fetch(10, 0.1) == []
    finally:
        os.environ.pop(SECRET_ENV, None)
    assert kind(no_handler) == "reject" and "422" in str(no_handler.error)
    assert kind(bad_sig) == "unreachable" and "401" in str(bad_sig.error)
    assert kind(bad_path) == "reject" and "404" in str(bad_path.error)
    assert unauthenticated.status_code == 401
    assert get.status_code == 405 and get.headers["allow"] == "POST"
    assert wrong_path_topic.status_code == 400
    assert malformed.status_code == 400 and "message-id" in malformed.json()["error"]


async def test_a_request_nobody_fetches_is_answered_503_after_the_hold_timeout() -> None:
    url = consumer_url(free_port(), INSECURE, "outboxkit_hold_timeout=0.3")
    async with listening(url) as consumer, publisher(url) as pub:
        [outcome] = await pub.publish([outbox.message("t", {})])
        assert kind(outcome) == "retry" and "503" in str(outcome.error)
        assert await consumer.fetch(10, 0.1) == []  # the held delivery was withdrawn


async def test_a_delivery_whose_sender_hung_up_is_dropped() -> None:
    url = consumer_url(free_port(), INSECURE, "outboxkit_timeout=0.3")
    async with listening(url) as consumer, publisher(url) as pub:
        [outcome] = await pub.publish([outbox.message("t", {})])
        assert kind(outcome) == "retry"

        async def withdrawn() -> bool:
            return await consumer.fetch(10, 0.05) == []

        await eventually(withdrawn, within=10)


async def test_close_answers_held_requests_and_frees_the_port() -> None:
    port = free_port()
    url = consumer_url(port, INSECURE)
    async with publisher(url) as pub:
        async with listening(url) as consumer:
            publishing = asyncio.create_task(pub.publish([outbox.message("t", {})]))
            assert len(await consumer.fetch(10, 5)) == 1
        [outcome] = await asyncio.wait_for(publishing, 30)
        assert kind(outcome) == "retry" and "503" in str(outcome.error)
        async with listening(url):  # the same port again
            pass


async def test_listening_on_a_taken_port_is_broker_unavailable() -> None:
    async with endpoint() as (_, base):
        taken = create_consumer(f"{base}/hooks?{INSECURE}", Subscription("c", ["*"]))
        assert taken is not None
        with pytest.raises(BrokerUnavailable):
            await taken.connect()


def test_consumer_refuses_https_and_no_handlers() -> None:
    with pytest.raises(ConfigurationError, match="plain HTTP"):
        http_consumer.create("https://h/x", Subscription("c", ["*"]))
    with pytest.raises(ConfigurationError, match="no handlers"):
        create_consumer("http://h/x", Subscription("c", []))


# -- the consumer with the runner and a real inbox ---------------------------------------


@pytest.fixture
async def effects(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE effects (message_id uuid NOT NULL, topic text)")


async def scalar(dsn: str, query: str) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        row = await (await conn.execute(query)).fetchone()
        assert row is not None
        return row[0]


def settings(dsn: str, url: str, **overrides: Any) -> ConsumerSettings:
    base: dict[str, Any] = {
        "dsn": dsn,
        "broker_url": url,
        "max_attempts": 3,
        "backoff_base": 0.05,
        "backoff_max": 0.2,
        "fetch_wait": 0.2,
        "prune_interval": 0,
    }
    return ConsumerSettings(**(base | overrides))


def effect_inbox(fail: Callable[[Message], bool] = lambda _: False) -> Inbox:
    ib = Inbox(consumer="billing")

    @ib.handler("orders.*")
    async def record(tx: psycopg.AsyncConnection[Any], message: Message) -> None:
        await tx.execute("INSERT INTO effects VALUES (%s, %s)", (message.message_id, message.topic))
        if fail(message):
            raise RuntimeError("handler failed")

    return ib


@pytest.mark.usefixtures("effects")
async def test_runner_handles_each_message_once_and_retries_failures(dsn: str) -> None:
    url = consumer_url(free_port(), INSECURE)
    failed: set[uuid.UUID] = set()

    def fail_once(message: Message) -> bool:
        if message.key == "k0" and message.message_id not in failed:
            failed.add(message.message_id)
            return True
        return False

    runner = ConsumerRunner(effect_inbox(fail_once), settings(dsn, url))
    task = asyncio.create_task(runner.run())
    try:
        batch = [outbox.message("orders.created", {"n": n}, key=f"k{n % 3}") for n in range(30)]
        async with publisher(url) as pub:
            await eventually(lambda: _listening(url), within=30)
            failures = await publish_until_acked(pub, batch)
            assert failures and all("503" in str(f.error) for f in failures)
            again = await pub.publish(batch)  # duplicates: acked, no new effect
            assert all(o.acked for o in again)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)
    assert await scalar(dsn, "SELECT count(*) FROM effects") == 30
    assert await scalar(dsn, "SELECT count(DISTINCT message_id) FROM effects") == 30
    assert runner.duplicates == 30


@pytest.mark.usefixtures("effects")
async def test_runner_dead_letters_after_max_attempts_and_answers_200(dsn: str) -> None:
    url = consumer_url(free_port(), INSECURE)
    runner = ConsumerRunner(effect_inbox(lambda _: True), settings(dsn, url))
    task = asyncio.create_task(runner.run())
    try:
        async with publisher(url) as pub:
            await eventually(lambda: _listening(url), within=30)
            failures = await publish_until_acked(pub, [outbox.message("orders.created", {})])
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)
    assert len(failures) == 2 and runner.dead_lettered == 1
    assert await scalar(dsn, "SELECT attempts FROM outboxkit.inbox_dead_letters") == 3
    assert await scalar(dsn, "SELECT count(*) FROM effects") == 0


async def _listening(url: str) -> bool:
    o = http_url.parse_url(url)
    try:
        _, writer = await asyncio.open_connection(o.host, o.port)
    except OSError:
        return False
    writer.close()
    return True


@pytest.mark.usefixtures("effects")
async def test_outboxkit_consume_cli_listens_for_webhooks(
    dsn: str, tmp_path: Path, secret: str
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks?outboxkit_secret_env={SECRET_ENV}"
    app_module = tmp_path / "http_consume_app.py"
    app_module.write_text(
        "from inbox import Inbox\n"
        "ib = Inbox(consumer='cli')\n"
        "@ib.handler('orders.*')\n"
        "def record(tx, message):\n"
        "    row = (message.message_id, message.topic)\n"
        "    tx.execute('INSERT INTO effects VALUES (%s, %s)', row)\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOXKIT_")}
    env = clean | {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", SECRET_ENV: secret}
    log = tmp_path / "consume.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "outboxkit.cli",
            "consume",
            "--app",
            "http_consume_app:ib",
            "--dsn",
            dsn,
            "--broker",
            url,
            "--prune-interval",
            "0",
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        await eventually(lambda: _listening(url), within=60)
        batch = [outbox.message("orders.created", {"n": n}, key=f"k{n % 4}") for n in range(20)]
        async with publisher(url) as pub:
            await publish_until_acked(pub, batch)
        assert await scalar(dsn, "SELECT count(DISTINCT message_id) FROM effects") == 20
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0, log.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# -- webhook_app -------------------------------------------------------------------------


async def post(
    app: Any, message: Message, *, secret: str | None = None, **extra: str
) -> httpx.Response:
    headers = http_url.envelope_headers(message) | extra
    if secret is not None:
        headers |= signature_headers([secret.encode()], int(time.time()), headers, message.payload)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        return await client.post("/webhooks", content=message.payload, headers=headers)


@pytest.mark.usefixtures("effects")
async def test_webhook_app_answers_after_the_inbox_transaction(dsn: str, secret: str) -> None:
    calls: list[uuid.UUID] = []

    def fail_some(message: Message) -> bool:
        calls.append(message.message_id)
        return message.json().get("fail", False)

    url = f"http://ignored/?outboxkit_secret_env={SECRET_ENV}"
    app = webhook_app(effect_inbox(fail_some), settings(dsn, url))
    try:
        good = outbox.message("orders.created", {"n": 1}, key="k")
        handled = await post(app, good, secret=secret)
        duplicate = await post(app, good, secret=secret)
        poison = outbox.message("orders.created", {"fail": True})
        failed = await post(app, poison, secret=secret)
        buried = await post(app, poison, secret=secret, **{"outboxkit-attempt": "3"})
        no_handler = await post(app, outbox.message("invoices.sent", {}), secret=secret)
        unsigned = await post(app, outbox.message("orders.created", {}))
        wrongly_signed = await post(app, outbox.message("orders.created", {}), secret="other")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            get = await client.get("/webhooks")
            too_big = await client.post("/webhooks", content=b"x" * (10 * 1024 * 1024 + 1))
    finally:
        await app.aclose()
    assert (handled.status_code, handled.json()["status"]) == (200, "handled")
    assert (duplicate.status_code, duplicate.json()["status"]) == (200, "duplicate")
    assert (failed.status_code, failed.json()) == (
        500,
        {"status": "failed", "message_id": str(poison.message_id), "error": "RuntimeError"},
    )
    assert (buried.status_code, buried.json()["status"]) == (200, "dead-lettered")
    assert no_handler.status_code == 422
    assert unsigned.status_code == 401 and unsigned.json()["error"] == "missing signature"
    assert wrongly_signed.status_code == 401
    assert get.status_code == 405
    assert too_big.status_code == 413
    assert await scalar(dsn, "SELECT count(*) FROM effects") == 1  # the failures rolled back
    assert await scalar(dsn, "SELECT attempts FROM outboxkit.inbox_dead_letters") == 3


async def test_webhook_app_answers_503_while_the_database_is_down() -> None:
    dead = f"postgresql://nobody@127.0.0.1:{free_port()}/x?connect_timeout=2"
    app = webhook_app(effect_inbox(), settings(dead, OPEN_APP_URL))
    response = await post(app, outbox.message("orders.created", {}))
    await app.aclose()
    assert response.status_code == 503 and response.headers["retry-after"] == "1"


async def test_webhook_app_lifespan_and_mixed_handlers_refused(dsn: str) -> None:
    app = webhook_app(effect_inbox(), settings(dsn, OPEN_APP_URL))
    events = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> Any:
        return next(events)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    mixed = effect_inbox()
    mixed.handler("other.*")(lambda tx, message: None)
    with pytest.raises(ConfigurationError):
        webhook_app(mixed, settings(dsn, OPEN_APP_URL))


@pytest.mark.usefixtures("effects")
async def test_the_relay_drains_its_outbox_into_webhook_app_over_http(dsn: str) -> None:
    """Relay (real outbox) -> HttpPublisher -> AsgiServer -> webhook_app -> inbox."""
    failed: set[uuid.UUID] = set()

    def fail_once(message: Message) -> bool:
        if message.json()["n"] % 10 == 0 and message.message_id not in failed:
            failed.add(message.message_id)
            return True
        return False

    app = webhook_app(effect_inbox(fail_once), settings(dsn, OPEN_APP_URL))
    server = AsgiServer(app)
    port = await server.start("127.0.0.1", 0)
    with psycopg.connect(dsn) as conn:
        written = outbox.write_many(
            conn,
            [outbox.message("orders.created", {"n": n}, key=f"k{n % 5}") for n in range(200)],
        )
    relay = Relay(
        RelaySettings(
            dsn=dsn,
            broker_url=f"http://127.0.0.1:{port}/webhooks",
            poll_interval=0.05,
            batch_size=50,
            backoff_base=0.05,
            backoff_max=0.2,
        )
    )
    await relay.start()
    task = asyncio.create_task(relay.run())
    try:

        async def done() -> bool:
            return await scalar(dsn, "SELECT count(DISTINCT message_id) FROM effects") == 200

        await eventually(done, within=120)
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)
        await server.close()
        await app.aclose()
    assert len(failed) == 20
    assert await scalar(dsn, "SELECT count(*) FROM effects") == len(written)
    assert await scalar(dsn, "SELECT count(*) FROM outboxkit.outbox_dead_letters") == 0


# -- the server --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 10)
    return status, headers, body


async def test_server_speaks_enough_http_1_1() -> None:
    async def echo(request: Seen) -> tuple[int, dict[str, str], bytes]:
        if request.raw_path == "/boom":
            raise RuntimeError("bug")
        if request.raw_path == "/204":
            return 204, {}, b"a body a 204 must not have"
        return 200, {"x-path": request.raw_path}, request.body

    app = Endpoint(echo)
    server = AsgiServer(app, max_body=1000, max_header_bytes=2000)
    port = await server.start("127.0.0.1", 0)
    try:
        async with raw(port) as (reader, writer):  # keep-alive: three requests, one connection
            writer.write(b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc")
            assert (await response(reader))[2] == b"abc"
            writer.write(
                b"POST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                b"2;ext=1\r\nhe\r\n3\r\nllo\r\n0\r\ntrailer: x\r\n\r\n"
            )
            status, headers, body = await response(reader)
            assert (status, headers["x-path"], body) == (200, "/b", b"hello")
            writer.write(b"POST /c HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
            writer.write(b"ok")
            assert (await response(reader))[2] == b"ok"
            writer.write(b"POST /204 HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
            status, headers, body = await response(reader)
            assert (status, body, "content-length" in headers) == (204, b"", False)
            writer.write(b"POST /after HTTP/1.1\r\ncontent-length: 1\r\n\r\nz")
            assert (await response(reader))[1]["x-path"] == "/after"  # nothing stray between
        async with raw(port) as (reader, writer):
            writer.write(b"POST /big HTTP/1.1\r\ncontent-length: 1001\r\n\r\n")
            assert (await response(reader))[0] == 413
        async with raw(port) as (reader, writer):
            writer.write(b"GET / HTTP/1.1\r\nx: " + b"y" * 3000 + b"\r\n\r\n")
            assert (await response(reader))[0] == 431
        async with raw(port) as (reader, writer):
            writer.write(b"NONSENSE\r\n\r\n")
            assert (await response(reader))[0] == 400
        async with raw(port) as (reader, writer):
            writer.write(
                b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            assert (await response(reader))[0] == 400
        async with raw(port) as (reader, writer):
            writer.write(b"POST /boom HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
            status, headers, _ = await response(reader)
            assert status == 500 and headers["connection"] == "close"
        async with raw(port) as (reader, writer):
            writer.write(b"POST /x HTTP/1.0\r\ncontent-length: 0\r\n\r\n")
            status, headers, _ = await response(reader)
            assert headers["connection"] == "close" and await reader.read() == b""
        async with httpx.AsyncClient() as client:  # and a real client, pooled
            for n in range(5):
                got = await client.post(f"http://127.0.0.1:{port}/n", content=b"%d" % n)
                assert got.content == b"%d" % n
    finally:
        await server.close()
    assert len(app.seen) == 12


async def test_server_close_drops_idle_connections_at_once() -> None:
    server = AsgiServer(Endpoint())
    port = await server.start("127.0.0.1", 0)
    async with raw(port) as (reader, writer):
        writer.write(b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
        await response(reader)
        started = time.monotonic()
        await server.close(grace=20)
        assert time.monotonic() - started < 10  # not the grace: the connection was idle
        assert await asyncio.wait_for(reader.read(), 10) == b""
