"""The Redis Streams publisher and consumer against a real redis-server (Debian's)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import redis.asyncio

from outboxkit import outbox
from outboxkit.brokers import Delivery, Subscription, create_consumer, create_publisher
from outboxkit.brokers.redis.consumer import RedisConsumer
from outboxkit.brokers.redis.options import PAYLOAD_FIELD, parse_url
from outboxkit.brokers.redis.publisher import RedisPublisher
from outboxkit.devservers import free_port
from outboxkit.devservers.redis import RedisServer
from outboxkit.inbox import ConsumerRunner, ConsumerSettings, Inbox
from outboxkit.outbox.envelope import to_headers
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError
from outboxkit.outbox.message import Message
from tests.conftest import in_ci
from tests.integration.brokers import sample_messages
from tests.support.publishers import publish_until_acked
from tests.support.waiting import eventually

PASSWORD = "p@ss:w/rd%#?&x"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """One redis-server for the module; tests isolate by stream name."""
    if shutil.which("redis-server") is None and not in_ci():
        pytest.skip("redis-server is not installed (scripts/install-brokers)")
    with RedisServer() as running:
        yield running


@pytest.fixture
def stream() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def url_for(server: RedisServer, stream: str, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in ({"stream": stream} | options).items())
    return f"{server.url}?{query}"


@contextlib.asynccontextmanager
async def raw(server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client for arranging and inspecting the server."""
    client = redis.asyncio.Redis.from_url(server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def published(url: str, batch: list[Message]) -> RedisPublisher:
    publisher = create_publisher(url)
    assert isinstance(publisher, RedisPublisher)
    await publisher.connect()
    try:
        outcomes = await publisher.publish(batch)
    finally:
        await publisher.close()
    assert all(o.acked for o in outcomes), outcomes
    return publisher


async def connected(url: str, consumer: str = "billing", *topics: str) -> RedisConsumer:
    made = create_consumer(url, Subscription(consumer, list(topics or ["order.*"])))
    assert isinstance(made, RedisConsumer)
    await made.connect()
    return made


async def fetch_all(consumer: RedisConsumer, count: int, within: float = 30) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + within
    while len(got) < count:
        assert time.monotonic() < deadline, f"got {len(got)} of {count}"
        got += await consumer.fetch(count - len(got), 0.2)
    return got


# -- publisher ---------------------------------------------------------------------------


async def test_entries_carry_the_documented_field_layout(server: RedisServer, stream: str) -> None:
    sent = sample_messages(30)
    publisher = await published(url_for(server, stream), sent)
    assert publisher.capabilities.ordered_per_key and not publisher.capabilities.broker_dedup
    assert publisher.capabilities.max_message_bytes == 16 * 1024 * 1024  # the server's limit
    async with raw(server) as client:
        entries = await client.xrange(stream)
    assert len(entries) == len(sent)
    for (_, fields), message in zip(entries, sent, strict=True):  # in publish order
        expected = {k.encode(): v.encode() for k, v in to_headers(message).items()}
        assert fields == expected | {PAYLOAD_FIELD.encode(): message.payload}


async def test_maxlen_trims_approximately(server: RedisServer, stream: str) -> None:
    await published(url_for(server, stream, maxlen=100), sample_messages(1000))
    async with raw(server) as client:
        length = await client.xlen(stream)
    assert 100 <= length < 1000


async def test_oversize_and_reserved_header_are_rejected_the_rest_acked(
    server: RedisServer, stream: str
) -> None:
    publisher = create_publisher(url_for(server, stream, max_message_bytes=1000))
    await publisher.connect()
    try:
        assert publisher.capabilities.max_message_bytes == 1000
        ok = sample_messages(2)
        big = outbox.message("order.big", {"x": "y" * 1000})
        clash = outbox.message("order.h", {}, headers={"x": "1"})
        clash = Message(
            message_id=clash.message_id, topic=clash.topic, payload=b"{}",
            headers={PAYLOAD_FIELD: "mine"},
        )  # fmt: skip
        outcomes = await publisher.publish([ok[0], big, clash, ok[1]])
    finally:
        await publisher.close()
    assert [o.acked for o in outcomes] == [True, False, False, True]
    assert not outcomes[1].retriable and "1000" in (outcomes[1].error or "")
    assert not outcomes[2].retriable and PAYLOAD_FIELD in (outcomes[2].error or "")
    async with raw(server) as client:
        assert await client.xlen(stream) == 2


async def test_a_key_of_another_type(server: RedisServer, stream: str) -> None:
    async with raw(server) as client:
        await client.set(stream, "not a stream")
        await client.set(f"outboxkit:{stream}.bad", "not a stream")
    with pytest.raises(ConfigurationError, match="not a stream"):
        await create_publisher(url_for(server, stream)).connect()
    # Per-topic streams: only the topic whose key is taken is refused.
    publisher = create_publisher(f"{server.url}?per_topic=true")
    good, bad = outbox.message(f"{stream}.good", {}), outbox.message(f"{stream}.bad", {})
    try:
        outcomes = await publisher.publish([good, bad])
    finally:
        await publisher.close()
    assert outcomes[0].acked and not outcomes[1].retriable and "WRONGTYPE" in str(outcomes[1])
    assert not publisher.capabilities.ordered_per_key


async def test_acl_denials(server: RedisServer, stream: str) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    async with raw(server) as client:  # XADD to `<stream>:ok.*` only: no INFO, CONFIG, TYPE
        await client.acl_setuser(
            user, enabled=True, passwords=["+pw"], keys=[f"{stream}:ok.*"],
            commands=["-@all", "+ping", "+xadd"],
        )  # fmt: skip
    base = f"redis://{user}:pw@127.0.0.1:{server.port}"
    per_topic = create_publisher(f"{base}?per_topic=true&prefix={stream}:")
    single = create_publisher(f"{base}?stream={stream}")
    try:
        outcomes = await per_topic.publish([outbox.message("ok.a", {}), outbox.message("no.b", {})])
        assert outcomes[0].acked and not outcomes[1].retriable
        assert "permission" in (outcomes[1].error or "")
        (denied,) = await single.publish([outbox.message("ok.a", {})])
        assert denied.unavailable and "permission" in (denied.error or "")
    finally:
        await per_topic.close()
        await single.close()


async def test_acked_messages_survive_a_crash_of_redis(stream: str) -> None:
    with RedisServer() as crashing:
        sent = sample_messages(50)
        await published(url_for(crashing, stream), sent)
        crashing.kill()  # SIGKILL: no shutdown, the AOF as written before each reply
        crashing.start()
        async with raw(crashing) as client:
            entries = await client.xrange(stream)
    assert [f[b"outboxkit-message-id"].decode() for _, f in entries] == [
        str(m.message_id) for m in sent
    ]


async def test_restart_gives_unreachable_then_reconnects(stream: str) -> None:
    with RedisServer() as flaky:
        publisher = create_publisher(url_for(flaky, stream, timeout=1, connect_timeout=1))
        await publisher.connect()
        try:
            flaky.stop()
            started = time.monotonic()
            outcomes = await publisher.publish(sample_messages(5))
            assert time.monotonic() - started < 10  # a hang guard
            assert all(o.unavailable and o.retriable and not o.acked for o in outcomes)
            flaky.start()
            await publish_until_acked(publisher, sample_messages(5))  # 1 s timeouts
        finally:
            await publisher.close()


async def test_a_silent_server_times_out_instead_of_hanging() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts TCP, never answers
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}?timeout=1&connect_timeout=1"
        publisher = create_publisher(url)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await publisher.connect()
        outcomes = await publisher.publish(sample_messages(2))
        assert all(o.unavailable for o in outcomes)
        with pytest.raises(BrokerUnavailable):
            await connected(url)
        assert time.monotonic() - started < 20  # a hang guard
        await publisher.close()


@pytest.fixture(scope="module")
def auth_server() -> Iterator[RedisServer]:
    """A redis-server whose password is full of URL metacharacters."""
    with RedisServer(password=PASSWORD) as running:
        yield running


async def test_credentials_are_decoded_and_never_shown(
    auth_server: RedisServer, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{auth_server.port}?stream={stream}"
    await published(good, sample_messages(2))
    bad = good.replace(quote(PASSWORD, safe=""), quote("wrong-" + PASSWORD, safe=""))
    publisher = create_publisher(bad)
    with pytest.raises(BrokerUnavailable) as raised:
        await publisher.connect()
    outcomes = await publisher.publish(sample_messages(2))
    await publisher.close()
    with pytest.raises(BrokerUnavailable) as raised_consumer:
        await connected(bad)
    texts = [str(raised.value), str(raised_consumer.value), *(o.error or "" for o in outcomes)]
    assert all(o.unavailable for o in outcomes)
    assert "127.0.0.1" in texts[0] and "***" in texts[0]
    for secret in (PASSWORD, quote(PASSWORD, safe=""), "wrong-"):
        assert not any(secret in text for text in texts), texts
        assert secret not in caplog.text


async def test_tls(stream: str) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate")
    with RedisServer(tls=True) as secure:
        url = f"{secure.url}&stream={stream}"
        sent = sample_messages(3)
        await published(url, sent)
        consumer = await connected(url)
        try:
            got = await fetch_all(consumer, 3)
        finally:
            await consumer.close()
        assert [d.message for d in got] == sent
        untrusted = url.split("?")[0] + f"?stream={stream}"  # no ssl_ca_certs: not trusted
        with pytest.raises(BrokerUnavailable):
            await create_publisher(untrusted).connect()


async def test_replicas_must_confirm(stream: str) -> None:
    with RedisServer(extra_args=("--repl-diskless-sync-delay", "0")) as primary:
        url = url_for(primary, stream, replicas=1, timeout=1)
        publisher = create_publisher(url)
        try:
            outcomes = await publisher.publish(sample_messages(3))
            assert all(o.unavailable and "replicas" in (o.error or "") for o in outcomes)
            replica_args = ("--replicaof", "127.0.0.1", str(primary.port))
            with RedisServer(extra_args=(*replica_args, "--masterauth", primary.password)):

                async def confirmed() -> bool:
                    return all(o.acked for o in await publisher.publish(sample_messages(3)))

                await eventually(confirmed, within=30, every=0.2)
        finally:
            await publisher.close()


async def test_a_server_without_aof_is_warned_about(
    stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    with RedisServer(extra_args=("--appendonly", "no")) as volatile:
        await published(url_for(volatile, stream), sample_messages(1))
    assert any("appendonly" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "query",
    [
        "nope=1",
        "maxlen=0",
        "maxlen=x",
        "timeout=-1",
        "per_topic=maybe",
        "prefix=a:",
        "per_topic=true&stream=s",
        "ssl_ca_certs=/x",
        "replicas=-1",
        "claim_idle=0",
    ],
)
def test_bad_options_are_configuration_errors(query: str) -> None:
    with pytest.raises(ConfigurationError):
        create_publisher(f"redis://:pw@127.0.0.1/0?{query}")


def test_url_parsing() -> None:
    options = parse_url("rediss://app:s%40cret@[::1]:7000/3?ssl_cert_reqs=none&per_topic=1")
    assert (options.host, options.port, options.db, options.tls) == ("::1", 7000, 3, True)
    assert (options.username, options.password) == ("app", "s@cret")
    assert options.stream_for("orders.x") == "outboxkit:orders.x"
    assert "s@cret" not in options.display and "s%40cret" not in options.display
    assert parse_url("redis://h").stream_for("a") == "outboxkit"
    with pytest.raises(ConfigurationError):
        parse_url("redis://h/zero")
    with pytest.raises(ConfigurationError):
        parse_url("http://h")


async def test_empty_batch_and_double_close(server: RedisServer, stream: str) -> None:
    publisher = create_publisher(url_for(server, stream))
    assert await publisher.publish([]) == []
    await publisher.close()
    await publisher.close()


# -- consumer ----------------------------------------------------------------------------


async def test_group_reads_history_and_filters_topics(
    server: RedisServer, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="outboxkit.brokers.redis.consumer")
    wanted = sample_messages(10)  # order.created and order.created.N
    others = [outbox.message("payment.settled", {"n": n}) for n in range(5)]
    url = url_for(server, stream)
    await published(url, others + wanted)  # before the group exists
    consumer = await connected(url, "billing", "order.*")
    try:
        got = await fetch_all(consumer, 10)
        assert await consumer.fetch(10, 0.1) == []
        for delivery in got:
            assert delivery.attempt == 1
            await delivery.ack()
    finally:
        await consumer.close()
    assert [d.message.message_id for d in got if d.message] == [m.message_id for m in wanted]
    async with raw(server) as client:
        pending = await client.xpending(stream, "billing")
        consumers = await client.xinfo_consumers(stream, "billing")
    assert pending["pending"] == 0  # the payments were acked unseen
    assert consumers == []  # it left the group, holding nothing
    assert any("payment.settled" in r.getMessage() for r in caplog.records)
    assert consumer.name.count("-") >= 2


async def test_fetch_blocks_longer_than_the_socket_timeout(
    server: RedisServer, stream: str
) -> None:
    url = url_for(server, stream, timeout=0.5)
    consumer = await connected(url)
    try:
        started = time.monotonic()
        assert await consumer.fetch(10, 1.5) == []
        assert time.monotonic() - started >= 1.4
        later = asyncio.create_task(consumer.fetch(10, 10))
        await asyncio.sleep(0.3)
        await published(url, sample_messages(1))
        assert len(await asyncio.wait_for(later, 10)) == 1  # woken by the XADD
    finally:
        await consumer.close()


async def test_nak_redelivers_after_the_delay_and_counts_attempts(
    server: RedisServer, stream: str
) -> None:
    # claim_idle 1.5 s: the nakking consumer re-claims every 0.5 s, so a stall of up to
    # ~1 s on a loaded machine does not let the other consumer take the entry early.
    url = url_for(server, stream, claim_idle=1.5)
    await published(url, sample_messages(1))
    first, second = await connected(url), await connected(url)  # one group, two consumers
    try:
        (delivery,) = await fetch_all(first, 1)
        assert delivery.attempt == 1
        nakked = time.monotonic()
        await delivery.nak(4.0)  # longer than claim_idle: the nakking consumer keeps it
        seen: list[Delivery] = []
        while not seen:
            seen += await second.fetch(1, 0.05)
            seen += await first.fetch(1, 0.05)
            assert time.monotonic() - nakked < 20
        assert time.monotonic() - nakked >= 3.9
        assert seen[0].attempt == 2 and seen[0].message == delivery.message
        await seen[0].nak(0)
        (third,) = await fetch_all(first, 1)
        assert third.attempt == 3
        await third.ack()
    finally:
        await first.close()
        await second.close()
    async with raw(server) as client:
        assert (await client.xpending(stream, "billing"))["pending"] == 0


async def test_a_dead_consumers_entries_are_taken_over(server: RedisServer, stream: str) -> None:
    url = url_for(server, stream, claim_idle=0.5)
    await published(url, sample_messages(4))
    dying = await connected(url)
    assert len(await fetch_all(dying, 4)) == 4
    await dying.close()  # never acked: it stays in the group, holding the entries
    heir = await connected(url)
    try:
        got = await fetch_all(heir, 4)
        assert all(d.attempt == 2 for d in got)
        for delivery in got:
            await delivery.ack()
    finally:
        await heir.close()
    async with raw(server) as client:
        assert (await client.xpending(stream, "billing"))["pending"] == 0
        names = [c["name"].decode() for c in await client.xinfo_consumers(stream, "billing")]
    assert names == [dying.name]


async def test_pending_entries_lost_to_trimming_are_reported(
    server: RedisServer, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = url_for(server, stream, claim_idle=0.3)
    await published(url, sample_messages(3))
    dying = await connected(url)
    assert len(await fetch_all(dying, 3)) == 3  # pending, never acked
    await dying.close()
    async with raw(server) as client:
        await client.xtrim(stream, maxlen=0, approximate=False)
        await client.xadd(stream, {"x": "1"})  # keeps the stream: a pending entry of nothing
    heir = await connected(url, "billing", "nothing.*")
    try:
        await asyncio.sleep(0.4)
        got: list[Delivery] = []
        while not got:  # one sweep of the pending list (room for all), then the new entry
            got += await heir.fetch(10, 0.2)
        (junk,) = got  # the new entry only: the trimmed ones are gone
        assert junk.malformed is not None
        await junk.ack()
    finally:
        await heir.close()
    (warning,) = [r for r in caplog.records if "trimmed" in r.getMessage()]
    assert "3 pending entries" in warning.getMessage()
    async with raw(server) as client:
        assert (await client.xpending(stream, "billing"))["pending"] == 0


async def test_malformed_entries_are_delivered_as_malformed(
    server: RedisServer, stream: str
) -> None:
    async with raw(server) as client:
        await client.xadd(stream, {"junk": "1"})
        await client.xadd(stream, {PAYLOAD_FIELD: b"x", "outboxkit-message-id": "nope"})
        await client.xadd(stream, {PAYLOAD_FIELD: b"\xff", b"\xff": b"x"})
    consumer = await connected(url_for(server, stream))
    try:
        got = await fetch_all(consumer, 3)
    finally:
        await consumer.close()
    assert all(d.message is None and stream in str(d.malformed) for d in got)
    assert "outboxkit-payload" in str(got[0].malformed)
    assert "outboxkit-message-id" in str(got[1].malformed)


async def test_per_topic_streams(server: RedisServer, stream: str) -> None:
    url = f"{server.url}?per_topic=true&prefix={stream}:"
    topics = ["order.created", "order.paid"]
    sent = [outbox.message(t, {"n": n}) for n in range(3) for t in topics]
    await published(url, [*sent, outbox.message("order.other", {})])
    async with raw(server) as client:
        assert await client.xlen(f"{stream}:order.created") == 3
    with pytest.raises(ConfigurationError, match="patterns"):
        create_consumer(url, Subscription("billing", ["order.*"]))
    consumer = await connected(url, "billing", *topics)
    try:
        first = await consumer.fetch(4, 1)  # COUNT is per stream: the rest waits here
        got = first + await fetch_all(consumer, 2)
    finally:
        await consumer.close()
    assert len(first) == 4
    assert sorted(str(d.message.message_id) for d in got if d.message) == sorted(
        str(m.message_id) for m in sent
    )


async def test_consumer_survives_a_restart_and_a_lost_group(stream: str) -> None:
    with RedisServer() as flaky:
        url = url_for(flaky, stream, timeout=1, connect_timeout=1)
        consumer = await connected(url)
        try:
            flaky.stop()
            started = time.monotonic()
            assert await consumer.fetch(10, 0.2) == []
            assert await consumer.fetch(10, 0.2) == []
            assert time.monotonic() - started < 10
            flaky.start()
            async with raw(flaky) as client:
                await client.flushall()  # the data is gone: so is the group
            await published(url_for(flaky, stream), sample_messages(2))  # default timeouts
            assert len(await fetch_all(consumer, 2)) == 2
        finally:
            await consumer.close()


async def test_runner_handles_each_message_once(
    server: RedisServer, stream: str, dsn: str, admin: Any
) -> None:
    admin.execute("CREATE TABLE effects (message_id uuid, attempts int)")
    url = url_for(server, stream, claim_idle=5)
    ib = Inbox(consumer="billing")
    failures: dict[uuid.UUID, int] = {}
    sent = sample_messages(100)
    flaky = {m.message_id for m in sent[:5]}

    @ib.handler("order.*")
    async def effect(tx: psycopg.AsyncConnection[Any], message: Message) -> None:
        if message.message_id in flaky and failures.get(message.message_id, 0) < 2:
            failures[message.message_id] = failures.get(message.message_id, 0) + 1
            raise RuntimeError("transient")
        await tx.execute("INSERT INTO effects VALUES (%s, 0)", (message.message_id,))

    await published(url, sent)
    await published(url, sent[50:])  # republished: duplicates in the stream
    settings = ConsumerSettings(
        dsn=dsn, broker_url=url, prune_interval=0, fetch_wait=0.2, backoff_base=0.1,
        backoff_max=0.3, max_attempts=5, concurrency=3,
    )  # fmt: skip
    runner = ConsumerRunner(ib, settings)
    task = asyncio.create_task(runner.run())

    async def done() -> bool:
        assert not task.done(), task
        row = admin.execute("SELECT count(*) FROM effects").fetchone()
        return bool(row and row[0] == len(sent)) and runner.duplicates == 50

    try:
        await eventually(done, within=60)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)
    rows = admin.execute("SELECT message_id, count(*) FROM effects GROUP BY 1").fetchall()
    assert len(rows) == len(sent) and all(n == 1 for _, n in rows)
    assert all(failures[m] == 2 for m in flaky) and runner.dead_lettered == 0
    async with raw(server) as client:
        assert (await client.xpending(stream, "billing"))["pending"] == 0


async def test_unreachable_consumer_fails_fast(stream: str) -> None:
    url = f"redis://:{quote('s3cr#t')}@127.0.0.1:{free_port()}?connect_timeout=1"
    with pytest.raises(BrokerUnavailable) as raised:
        await connected(url)
    assert "s3cr" not in str(raised.value) and "127.0.0.1" in str(raised.value)
