"""The relay when a statement fails on a live connection, and when an endpoint's answer is
hostile text: the batch fails and is retried with backoff, never the process, never a spin.

Real PostgreSQL throughout; the HTTP tests POST to a real endpoint on loopback (our
AsgiServer), the others script the broker's answers with the recording publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest

from outboxkit import outbox
from outboxkit.brokers.publishing import Outcome
from outboxkit.outbox.limits import MAX_ERROR_BYTES, text_problem, utf8_length
from outboxkit.outbox.message import Message
from outboxkit.relay import Relay, RelaySettings
from tests.integration.test_http import Endpoint, Seen
from tests.support.publishers import RecordingPublisher
from tests.support.waiting import eventually

BACKOFF_BASE = 0.2  # every backoff of a failed batch lasts at least half of this


def settings(dsn: str, broker_url: str, **overrides: Any) -> RelaySettings:
    base: dict[str, Any] = {
        "dsn": dsn,
        "broker_url": broker_url,
        "poll_interval": 0.05,
        "heartbeat_interval": 0.2,
        "relay_ttl": 1.0,
        "backoff_base": BACKOFF_BASE,
        "backoff_max": 2 * BACKOFF_BASE,
        "batch_size": 50,
    }
    return RelaySettings(**(base | overrides))


class Running:
    """A relay running in a task; `until` fails at once, with its error, if it died."""

    def __init__(self, relay: Relay, task: asyncio.Task[None]) -> None:
        self.relay, self.task = relay, task

    async def until(self, condition: Callable[[], Awaitable[bool]], within: float = 60) -> None:
        async def check() -> bool:
            if self.task.done():
                self.task.result()
                raise AssertionError("the relay stopped")
            return await condition()

        await eventually(check, within=within)


@contextlib.asynccontextmanager
async def running(relay: Relay) -> AsyncIterator[Running]:
    await relay.start()
    task = asyncio.create_task(relay.run())
    try:
        yield Running(relay, task)
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def endpoint(endpoint: Endpoint) -> AsyncIterator[str]:
    url = await endpoint.start()
    try:
        yield url
    finally:
        await endpoint.stop()


def rows(dsn: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def write(dsn: str, topic: str, payload: Any, key: str | None = None) -> Message:
    with psycopg.connect(dsn) as conn:
        written = outbox.write(conn, topic, payload, key=key)
        conn.commit()
    return written


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


# -- item 2: an endpoint's error text with a NUL byte -------------------------------------


async def test_an_endpoint_answering_a_nul_byte_is_retried_counted_and_dead_lettered(
    dsn: str,
) -> None:
    """`400 bad\\x00request`, retried (outboxkit_retry_status=400): the error text once made
    the settle statement fail with DataError, the relay exit, restart and re-post the same
    message with its attempts still 0, forever."""

    async def bad_request(_: Seen) -> tuple[int, dict[str, str], bytes]:
        return 400, {}, b"bad\x00request \xed\xb3\xbf" + b"x" * 5000

    hook = Endpoint(bad_request)
    message = write(dsn, "orders.created", {"n": 1}, key="order-1")
    async with endpoint(hook) as url:
        config = settings(dsn, f"{url}/hooks?outboxkit_retry_status=400", max_attempts=3)
        async with running(Relay(config)) as run:

            async def dead() -> bool:
                found = await asyncio.to_thread(
                    rows, dsn, "SELECT count(*) FROM outboxkit.outbox_dead_letters"
                )
                return found[0][0] == 1

            await run.until(dead)
            assert not run.task.done()  # still relaying
    [(message_id, attempts, error)] = rows(
        dsn, "SELECT message_id, attempts, last_error FROM outboxkit.outbox_dead_letters"
    )
    assert message_id == message.message_id and attempts == 3
    assert len(hook.seen) == 3  # one POST per counted attempt
    assert "answered 400: bad\\x00request" in error and "gave up after 3 attempts" in error
    assert utf8_length(error) <= MAX_ERROR_BYTES + 100  # the relay's prefix on a clean text
    assert text_problem(error, 2 * MAX_ERROR_BYTES) is None
    assert rows(dsn, "SELECT count(*) FROM outboxkit.outbox_messages") == [(0,)]


# -- a settle that fails for another reason than a lost connection ------------------------


async def test_a_settle_refused_by_the_database_backs_off_and_keeps_the_relay_alive(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    """A settle failing with an error that is neither a lost connection nor an
    OperationalError (here a trigger's RAISE: InternalError) once escaped the relay's loop
    and ended the process. Now it fails the batch: rolled back, retried after a backoff."""
    admin.execute(
        """
        CREATE FUNCTION refuse_dead_letter() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'dead letters are refused today'; END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON outboxkit.outbox_dead_letters
            FOR EACH ROW EXECUTE FUNCTION refuse_dead_letter();
        """
    )
    poison = write(dsn, "orders.created", {"poison": True}, key="k1")
    innocent = write(dsn, "orders.created", {"n": 2}, key="k2")
    sent: dict[uuid.UUID, list[float]] = {}

    def script(message: Message) -> Outcome | None:
        sent.setdefault(message.message_id, []).append(time.monotonic())
        return (
            Outcome.reject("refused for good") if message.message_id == poison.message_id else None
        )

    publisher = RecordingPublisher(script)
    relay = Relay(settings(dsn, "test://recording"), publisher=publisher)
    async with running(relay) as run:

        async def republished() -> bool:
            return len(sent.get(innocent.message_id, [])) >= 4

        await run.until(republished)
        assert relay.health()["database"].startswith("failing: RaiseException")
        # A pause before every new try of the batch, never a spin.
        assert all(gap >= BACKOFF_BASE / 2 for gap in gaps(sent[innocent.message_id]))
        assert rows(dsn, "SELECT count(*) FROM outboxkit.outbox_messages") == [(2,)]

        # In a thread: the relay shares this event loop, and the DDL may wait for its batch.
        drop = "DROP TRIGGER refuse ON outboxkit.outbox_dead_letters"
        await asyncio.to_thread(admin.execute, drop)

        async def settled() -> bool:
            left = await asyncio.to_thread(
                rows, dsn, "SELECT count(*) FROM outboxkit.outbox_messages"
            )
            return left == [(0,)]

        await run.until(settled)
        assert relay.health()["database"] == "ok"
    dead = rows(dsn, "SELECT message_id, last_error FROM outboxkit.outbox_dead_letters")
    assert dead == [(poison.message_id, "refused for good")]


# -- item 3: an index entry over PostgreSQL's limit ---------------------------------------


def _four_byte_key(length: int = 1024) -> str:
    """Incompressible: PostgreSQL compresses a long index entry before it checks its size."""
    pick = random.Random(11)
    return "".join(chr(pick.randrange(0x20000, 0x2A6D0)) for _ in range(length))


async def test_an_index_row_too_large_does_not_republish_the_batch_in_a_tight_loop(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    """The reproduction on a database from before migration 0004 (its CHECKs dropped): a
    1,024-character key of 4-byte characters is 4 KiB, over the btree entry limit, so the
    statement that blocks its key fails with ProgramLimitExceeded, an OperationalError the
    relay took for a lost connection: 538 POSTs in 14 s for 2 messages, the innocent second
    one re-sent 269 times. Now every retry of the batch waits for a backoff."""
    for table in ("outbox_messages", "outbox_dead_letters", "outbox_key_blocks"):
        admin.execute(f"ALTER TABLE outboxkit.{table} DROP CONSTRAINT IF EXISTS {table}_key_bytes")
    long_key = _four_byte_key()
    bad_id = uuid.uuid4()
    admin.execute(
        """
        INSERT INTO outboxkit.outbox_messages
            (message_id, topic, key, partition, payload, content_type)
        SELECT %s, 'orders.created', %s,
               (hashtext(%s) & 2147483647) %% partitions, '{}', 'application/json'
        FROM outboxkit.outbox_settings
        """,
        (bad_id, long_key, long_key),
    )
    innocent = write(dsn, "orders.created", {"n": 2}, key="k2")
    posts: dict[str, list[float]] = {}

    async def answer(request: Seen) -> tuple[int, dict[str, str], bytes]:
        message_id = request.headers["idempotency-key"]
        posts.setdefault(message_id, []).append(time.monotonic())
        return (503, {}, b"busy") if message_id == str(bad_id) else (200, {}, b"ok")

    async with endpoint(Endpoint(answer)) as url, running(Relay(settings(dsn, url))) as run:

        async def republished() -> bool:
            return len(posts.get(str(innocent.message_id), [])) >= 4

        await run.until(republished)
        assert all(gap >= BACKOFF_BASE / 2 for gap in gaps(posts[str(innocent.message_id)]))
        assert run.relay.health()["database"].startswith("failing: ProgramLimitExceeded")

        # The operator removes the row nothing can index; the batch settles.
        # In a thread: the row is locked while the relay's batch is in flight, and the relay
        # runs on this test's event loop (a blocking DELETE here deadlocked the two).
        await asyncio.to_thread(
            admin.execute, "DELETE FROM outboxkit.outbox_messages WHERE message_id = %s", (bad_id,)
        )

        async def drained() -> bool:
            left = await asyncio.to_thread(
                rows, dsn, "SELECT count(*) FROM outboxkit.outbox_messages"
            )
            return left == [(0,)]

        await run.until(drained)


async def test_with_migration_0004_such_a_key_cannot_even_be_stored(
    admin: psycopg.Connection[Any],
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="outbox_messages_key_bytes"):
        admin.execute(
            """
            INSERT INTO outboxkit.outbox_messages
                (message_id, topic, key, partition, payload, content_type)
            VALUES (%s, 't', %s, 0, '{}', 'application/json')
            """,
            (uuid.uuid4(), _four_byte_key()),
        )


# -- a row written behind the API's back ---------------------------------------------------


async def test_a_row_with_non_string_headers_is_dead_lettered_and_the_rest_flows(
    dsn: str,
) -> None:
    """`headers` is plain jsonb. A hand-written row holding `{"a": 1}` made the HTTP (and the
    Kafka, Redis) publisher raise, which failed the whole batch as an outage on every cycle:
    the relay's partitions stalled for good. Now that row is dead-lettered, its key parks
    behind it in order (the message before it still goes first), and every other key flows."""
    before = write(dsn, "orders.created", {"n": 0}, key="k")
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO outboxkit.outbox_messages (message_id, topic, key, partition, payload,"
            " content_type, headers) SELECT %s, 'orders.created', 'k',"
            " (hashtext('k') & 2147483647) %% partitions, '\\x7b7d', 'application/json',"
            " '{\"a\": 1}' FROM outboxkit.outbox_settings",
            (uuid.uuid4(),),
        )
        conn.commit()
    after = write(dsn, "orders.created", {"n": 2}, key="k")
    other = write(dsn, "orders.created", {"n": 3}, key="other")
    hook = Endpoint()
    async with endpoint(hook) as url, running(Relay(settings(dsn, f"{url}/hooks"))) as run:

        async def settled() -> bool:
            found = await asyncio.to_thread(
                rows, dsn, "SELECT count(*) FROM outboxkit.outbox_dead_letters"
            )
            return found[0][0] == 1 and len(hook.seen) == 2

        await run.until(settled)
        assert not run.task.done()
    posted = {s.headers.get("outboxkit-message-id") for s in hook.seen}
    assert posted == {str(before.message_id), str(other.message_id)}
    [(error,)] = rows(dsn, "SELECT last_error FROM outboxkit.outbox_dead_letters")
    assert "headers must be a JSON object of strings" in error
    # The message after it waits behind its dead-lettered head, as for any dead letter.
    assert rows(dsn, "SELECT message_id FROM outboxkit.outbox_messages") == [(after.message_id,)]
