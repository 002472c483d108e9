"""The consumer runner with hostile failures: a handler's exception text with a NUL byte, a
lone surrogate and a megabyte of text, in both modes, sync and async handlers; a delivery
whose key the inbox table refuses. Real PostgreSQL, real nats-server.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

from outboxkit import outbox
from outboxkit.devservers import NatsServer
from outboxkit.inbox import Inbox, Mode
from outboxkit.inbox.slots import Slot
from outboxkit.outbox.limits import MAX_ERROR_BYTES, text_problem, utf8_length
from outboxkit.outbox.message import Message
from tests.integration.brokers import unique_stream
from tests.integration.test_consumer_nats import DEAD, Broker, counted, one_row, running
from tests.integration.test_consumer_nats import settings as nats_settings
from tests.integration.test_inbox_durable import settings as durable_settings
from tests.support.jetstream import publish

HOSTILE = "bad\x00 \udcff\n" + "é" * 1_000_000  # NUL, a lone surrogate, 2 MB of UTF-8


class Hostile(Exception):
    pass


def hostile_inbox(kind: str) -> Inbox:
    ib = Inbox(consumer="billing")
    if kind == "sync":

        @ib.handler("orders.*")
        def fail(tx: psycopg.Connection[Any], message: Message) -> None:
            raise Hostile(HOSTILE)
    else:

        @ib.handler("orders.*")
        async def afail(tx: psycopg.AsyncConnection[Any], message: Message) -> None:
            raise Hostile(HOSTILE)

    return ib


def assert_clean(error: str) -> None:
    assert error.startswith("Hostile: bad\\x00 \\udcff\\x0aééé"), error[:80]
    assert utf8_length(error) <= MAX_ERROR_BYTES
    assert text_problem(error, MAX_ERROR_BYTES) is None


@pytest.fixture
def broker(nats_server: NatsServer) -> Broker:
    return Broker(nats_server.url, unique_stream())


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_idempotent_mode_stores_a_hostile_handler_error_cleanly(
    broker: Broker, dsn: str, kind: str
) -> None:
    """The dead letter's INSERT once failed on the NUL byte (DataError) or the surrogate
    (UnicodeEncodeError), which ended the runner."""
    message = outbox.message("orders.created", {"n": 1})
    await publish(broker.publisher_url, [message])
    config = nats_settings(dsn, broker.consumer_url(), max_attempts=2)
    async with running(hostile_inbox(kind), config) as run:
        await run.until(counted(dsn, DEAD, 1))
        assert not run.task.done()
    message_id, attempts, error = await one_row(
        dsn, "SELECT message_id, attempts, last_error FROM outboxkit.inbox_dead_letters"
    )
    assert (message_id, attempts) == (message.message_id, 2)
    assert_clean(error)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_durable_mode_stores_a_hostile_handler_error_cleanly(dsn: str, kind: str) -> None:
    """Retries (mark_failed) and the dead letter (bury) both store the error."""
    ib = hostile_inbox(kind)
    config = durable_settings(dsn, max_attempts=2, concurrency=1)
    message = outbox.message("orders.created", {"n": 1})
    slot = Slot(ib, config)
    try:
        await slot.store([message])
    finally:
        await slot.reset()
    async with running(ib, config) as run:
        await run.until(counted(dsn, DEAD, 1))
        assert not run.task.done()
    (error,) = await one_row(dsn, "SELECT last_error FROM outboxkit.inbox_dead_letters")
    (row_error,) = await one_row(dsn, "SELECT last_error FROM outboxkit.inbox_messages")
    assert_clean(error)
    assert row_error == error


async def test_a_message_the_inbox_table_refuses_fails_that_message_only(
    broker: Broker, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Durable mode stores a fetched batch in one statement. One row the table refused (on
    main before the fix: a 4 KiB key over PostgreSQL's btree entry limit, ProgramLimitExceeded
    taken for a lost connection) failed the whole batch, redelivered every second forever
    with the valid messages in it. Over-long keys are now malformed envelopes, dead-lettered
    before any store (see the conformance corpus); a table can still refuse a row for its
    own reasons, here a CHECK the test adds. The others are stored on their own and
    handled; the refused one goes back to the broker with backoff, and when its attempts are
    spent and its dead letter is refused too, it stays there (redelivered with backoff)
    rather than be lost."""
    caplog.set_level(logging.WARNING, logger="outboxkit.inbox")
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for table in ("inbox_messages", "inbox_dead_letters"):
            await conn.execute(
                f"ALTER TABLE outboxkit.{table} ADD CONSTRAINT refused_by_the_table"
                " CHECK (key IS DISTINCT FROM 'refused')"
            )
    ib = Inbox(consumer="billing")
    handled: list[Message] = []

    @ib.handler("orders.*")
    async def record(tx: psycopg.AsyncConnection[Any], message: Message) -> None:
        handled.append(message)

    valid = [outbox.message("orders.created", {"n": n}) for n in range(3)]
    refused = outbox.message("orders.created", {}, key="refused")
    await publish(broker.publisher_url, [valid[0], refused, *valid[1:]])
    config = nats_settings(
        dsn, broker.consumer_url(), mode=Mode.DURABLE, concurrency=1, max_attempts=2
    )
    async with running(ib, config) as run:

        async def all_valid_handled() -> bool:
            return {m.message_id for m in handled} == {m.message_id for m in valid}

        await run.until(all_valid_handled)

        async def bury_refused() -> bool:
            return any("cannot be dead-lettered" in r.getMessage() for r in caplog.records)

        await run.until(bury_refused)
        assert not run.task.done()
    (stored,) = await one_row(
        dsn,
        "SELECT count(*) FROM outboxkit.inbox_messages WHERE message_id = %s",
        refused.message_id,
    )
    assert stored == 0
