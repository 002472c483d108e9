"""The NATS JetStream publisher against a real nats-server."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from urllib.parse import quote

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, StreamConfig

from outboxkit.brokers import create_publisher
from outboxkit.brokers.nats.publisher import MSG_ID, NatsPublisher, subject_matches
from outboxkit.devservers import NatsServer, free_port
from outboxkit.devservers.nats import _binary
from outboxkit.outbox.envelope import from_headers
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError
from outboxkit.outbox.ids import uuid7
from tests.integration.brokers import sample_messages, unique_stream

PASSWORD = "p@ss:w/rd%"


@pytest.fixture
def stream() -> str:
    """A fresh stream name; its subjects are `<name in lower case>.>`."""
    return unique_stream()


def prefix(stream: str) -> str:
    return f"{stream.lower()}."


@pytest.fixture
async def publisher(nats_server: NatsServer, stream: str) -> AsyncIterator[NatsPublisher]:
    url = f"{nats_server.url}?stream={stream}&subject_prefix={prefix(stream)}"
    publisher = create_publisher(url)
    assert isinstance(publisher, NatsPublisher)
    await publisher.connect()
    yield publisher
    await publisher.close()


async def read_stream(url: str, stream: str, count: int) -> list[Msg]:
    """Every message of `stream`, through an ephemeral pull consumer."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(prefix(stream) + ">", stream=stream)
        received: list[Msg] = []
        while len(received) < count:
            received += await sub.fetch(count - len(received), timeout=5)
        return received
    finally:
        await nc.close()


async def stream_count(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return info.state.messages
    finally:
        await nc.close()


async def test_batch_round_trips_with_envelope_and_order(
    publisher: NatsPublisher, nats_server: NatsServer, stream: str
) -> None:
    batch = sample_messages(100)

    outcomes = await publisher.publish(batch)

    assert all(o.acked for o in outcomes)
    assert len(outcomes) == len(batch)
    received = await read_stream(nats_server.url, stream, len(batch))
    assert [m.metadata.sequence.stream for m in received] == list(range(1, 101))
    for sent, msg in zip(batch, received, strict=True):
        assert msg.subject == prefix(stream) + sent.topic
        assert msg.headers is not None and msg.headers[MSG_ID] == str(sent.message_id)
        got = from_headers(msg.headers, msg.data)
        assert got.message_id == sent.message_id
        assert (got.topic, got.key, got.content_type) == (sent.topic, sent.key, sent.content_type)
        assert got.payload == sent.payload
        assert got.created_at == sent.created_at
        assert {k: v for k, v in got.headers.items() if k != MSG_ID} == sent.headers


async def test_republished_ids_are_deduplicated_by_jetstream(
    publisher: NatsPublisher, nats_server: NatsServer, stream: str
) -> None:
    batch = sample_messages(20)
    assert all(o.acked for o in await publisher.publish(batch))

    again = await publisher.publish(batch)

    assert all(o.acked for o in again)
    assert await stream_count(nats_server.url, stream) == 20


async def test_oversize_message_is_rejected_while_the_rest_is_acked(
    publisher: NatsPublisher, nats_server: NatsServer, stream: str
) -> None:
    limit = publisher.capabilities.max_message_bytes
    assert limit is not None and limit > 0
    small = sample_messages(3)
    huge = replace(small[1], message_id=uuid7(), payload=b"x" * limit)

    outcomes = await publisher.publish([small[0], huge, small[2]])

    assert [o.acked for o in outcomes] == [True, False, True]
    assert outcomes[1].retriable is False and "max_payload" in (outcomes[1].error or "")
    # The server never saw the oversize message, so the connection is still good.
    assert all(o.acked for o in await publisher.publish(sample_messages(2)))
    assert await stream_count(nats_server.url, stream) == 4


async def test_unroutable_and_invalid_topics_are_rejected(nats_server: NatsServer) -> None:
    stream = unique_stream()
    routed = prefix(stream)
    url = f"{nats_server.url}?stream={stream}&subject_prefix=&subjects={routed}>"
    publisher = create_publisher(url)
    await publisher.connect()
    try:
        good, elsewhere, spaced = sample_messages(3, topic=f"{routed}x")[:3]
        elsewhere = replace(elsewhere, topic="billing.x")
        spaced = replace(spaced, topic=f"{routed}with space")

        outcomes = await publisher.publish([good, elsewhere, spaced])

        assert outcomes[0].acked
        assert [o.retriable for o in outcomes[1:]] == [False, False]
        assert "no subject of stream" in (outcomes[1].error or "")
    finally:
        await publisher.close()


async def test_jetstream_error_replies_are_failures_not_acks(nats_server: NatsServer) -> None:
    """PubAcks are read off the reply subjects: an error reply must fail its message."""
    stream = unique_stream()
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(
            StreamConfig(
                name=stream, subjects=[prefix(stream) + ">"], max_msgs=2, discard=DiscardPolicy.NEW
            )
        )
    finally:
        await nc.close()
    url = f"{nats_server.url}?stream={stream}&subject_prefix={prefix(stream)}"
    publisher = create_publisher(url)
    await publisher.connect()
    try:
        outcomes = await publisher.publish(sample_messages(4))
        assert [o.acked for o in outcomes] == [True, True, False, False]
        assert all(o.retriable for o in outcomes[2:])
        assert "JetStream error 503" in (outcomes[2].error or ""), outcomes[2]
    finally:
        await publisher.close()


async def test_a_stream_gone_after_connect_means_unreachable(
    publisher: NatsPublisher, nats_server: NatsServer, stream: str
) -> None:
    """No stream listens on the subject any more: JetStream's no-responders status."""
    assert all(o.acked for o in await publisher.publish(sample_messages(2)))
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()
    outcomes = await publisher.publish(sample_messages(3))
    assert [o.acked for o in outcomes] == [False] * 3
    assert all(o.unavailable for o in outcomes), outcomes


async def test_broker_restart_gives_retriable_outcomes_then_recovers() -> None:
    server = NatsServer().start()
    stream = unique_stream()
    url = f"{server.url}?stream={stream}&subject_prefix=x.&timeout=1&reconnect_wait=1"
    publisher = create_publisher(url)
    try:
        await publisher.connect()
        assert all(o.acked for o in await publisher.publish(sample_messages(5)))

        server.stop()
        down = sample_messages(10)
        started = time.monotonic()
        outcomes = await publisher.publish(down)
        assert time.monotonic() - started < 15  # a hang guard (timeout + PING + close)
        assert all(not o.acked and o.retriable for o in outcomes)

        server.start()
        deadline = time.monotonic() + 30
        outcomes = await publisher.publish(down)
        while not all(o.acked for o in outcomes):
            assert time.monotonic() < deadline, outcomes[0]
            await asyncio.sleep(0.2)
            outcomes = await publisher.publish(down)
        assert await stream_count(server.url, stream) == 15
    finally:
        await publisher.close()
        server.cleanup()


async def test_unreachable_server_fails_fast_without_credentials() -> None:
    port = free_port()
    url = f"nats://relay:{quote('s3cr#t pw')}@127.0.0.1:{port}?stream=X&subject_prefix=x."
    publisher = create_publisher(url)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as raised:
        await publisher.connect()
    assert time.monotonic() - started < 5
    assert "s3cr" not in str(raised.value) and "s3cr" not in repr(raised.value)
    assert "127.0.0.1" in str(raised.value)

    outcomes = await publisher.publish(sample_messages(3))

    assert all(o.unavailable and o.retriable and not o.acked for o in outcomes)
    assert not any("s3cr" in (o.error or "") for o in outcomes)
    # Once a server is there, the next publish connects by itself.
    with NatsServer(port=port):
        assert all(o.acked for o in await publisher.publish(sample_messages(3)))
        await publisher.close()


async def test_a_silent_server_times_out_instead_of_hanging() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts TCP, never speaks NATS
        port = silent.getsockname()[1]
        publisher = create_publisher(f"nats://127.0.0.1:{port}?connect_timeout=1")
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await publisher.connect()
        assert time.monotonic() - started < 5
        await publisher.close()


@pytest.fixture(scope="module")
def auth_server() -> Iterator[str]:
    """A nats-server that wants user `relay` with a password full of URL metacharacters."""
    port = free_port()
    command = [_binary(), "-a", "127.0.0.1", "-p", str(port), "--user", "relay", "--pass", PASSWORD]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "nats-server with auth did not start"
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


async def test_credentials_are_decoded_and_never_shown(auth_server: str) -> None:
    # No JetStream on this server: connecting proves the decoded password was accepted.
    good = create_publisher(f"nats://relay:{quote(PASSWORD, safe='')}@{auth_server}?stream=A")
    with pytest.raises(BrokerUnavailable) as raised:
        await good.connect()
    assert "JetStream" in str(raised.value) and PASSWORD not in str(raised.value)

    bad = create_publisher(f"nats://relay:wrong-secret@{auth_server}?stream=A")
    with pytest.raises(BrokerUnavailable) as raised:
        await bad.connect()
    # Usually "Authorization Violation"; the server may hang up before the client reads it.
    assert "wrong-secret" not in str(raised.value)
    token = create_publisher(f"nats://tok-secret@{auth_server}?stream=A")
    with pytest.raises(BrokerUnavailable) as raised:
        await token.connect()
    assert "tok-secret" not in str(raised.value)


async def test_missing_stream_without_create_is_a_configuration_error(
    nats_server: NatsServer,
) -> None:
    publisher = create_publisher(f"{nats_server.url}?stream=NOPE{unique_stream()}&create_stream=0")
    with pytest.raises(ConfigurationError):
        await publisher.connect()
    await publisher.close()


@pytest.mark.parametrize(
    "query",
    ["bogus=1", "create_stream=maybe", "timeout=-1", "subject_prefix=", "storage=tape"],
)
def test_bad_options_are_configuration_errors(query: str) -> None:
    with pytest.raises(ConfigurationError):
        create_publisher(f"nats://u:pw@127.0.0.1:4222?{query}")


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("a.>", "a.b", True),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.b", "a.b", True),
        ("*.b", "x.b", True),
    ],
)
def test_subject_matching(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches


async def test_empty_batch_and_double_close(publisher: NatsPublisher) -> None:
    assert await publisher.publish([]) == []
    await publisher.close()
    await publisher.close()
