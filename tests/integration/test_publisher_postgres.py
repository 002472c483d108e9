"""The Postgres-to-Postgres publisher against a second, real database."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from outboxkit import migrations
from outboxkit.brokers import create_publisher
from outboxkit.brokers.postgres.publisher import PostgresPublisher
from outboxkit.devservers import free_port
from outboxkit.outbox.envelope import to_headers
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError, SchemaNotMigrated
from outboxkit.outbox.ids import uuid7
from tests.conftest import Database
from tests.integration.brokers import sample_messages

APP = "outboxkit-p2p-test"


@pytest.fixture
async def publisher(target_db: Database) -> AsyncIterator[PostgresPublisher]:
    publisher = create_publisher(f"{target_db.dsn}?consumer=billing&application_name={APP}")
    assert isinstance(publisher, PostgresPublisher)
    await publisher.connect()
    yield publisher
    await publisher.close()


def inbox_rows(dsn: str, consumer: str = "billing") -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT message_id, topic, key, payload, content_type, headers, processed_at"
            " FROM outboxkit.inbox_messages WHERE consumer = %s ORDER BY seq",
            (consumer,),
        ).fetchall()


async def test_batch_lands_in_the_target_inbox_with_every_field(
    publisher: PostgresPublisher, target_db: Database, db: Database
) -> None:
    batch = sample_messages(100)

    outcomes = await publisher.publish(batch)

    assert outcomes == [outcomes[0]] * 100 and outcomes[0].acked
    rows = inbox_rows(target_db.dsn)
    expected = [
        (m.message_id, m.topic, m.key, m.payload, m.content_type, to_headers(m), None)
        for m in batch
    ]
    assert rows == expected
    assert inbox_rows(db.dsn) == []  # the source database is untouched


async def test_republishing_adds_no_rows_and_is_acked(
    publisher: PostgresPublisher, target_db: Database
) -> None:
    batch = sample_messages(10)
    assert all(o.acked for o in await publisher.publish(batch))

    again = await publisher.publish([*batch[:5], *sample_messages(2)])

    assert all(o.acked for o in again)
    assert len(inbox_rows(target_db.dsn)) == 12


async def test_consumers_are_independent(target_db: Database) -> None:
    batch = sample_messages(3)
    for consumer in ("billing", "shipping"):
        publisher = create_publisher(f"{target_db.dsn}?consumer={consumer}")
        assert all(o.acked for o in await publisher.publish(batch))
        await publisher.close()
    assert len(inbox_rows(target_db.dsn, "shipping")) == len(inbox_rows(target_db.dsn)) == 3


async def test_bad_messages_are_rejected_alone(
    publisher: PostgresPublisher, target_db: Database
) -> None:
    good = sample_messages(4)
    # jsonb refuses \\u0000 (a server-side data error); text refuses NUL (a client-side one).
    nul_header = replace(good[0], message_id=uuid7(), headers={"x": "a\x00b"})
    nul_topic = replace(good[0], message_id=uuid7(), topic="bad\x00topic")
    batch = [good[0], nul_header, good[1], nul_topic, good[2], good[3]]

    outcomes = await publisher.publish(batch)

    assert [o.acked for o in outcomes] == [True, False, True, False, True, True]
    assert outcomes[1].retriable is False and outcomes[3].retriable is False
    assert [r[0] for r in inbox_rows(target_db.dsn)] == [m.message_id for m in good]


async def test_unreachable_target_gives_retriable_outcomes_without_credentials() -> None:
    url = f"postgresql://relay:t0p-s3cret@127.0.0.1:{free_port()}/nowhere?consumer=billing"
    publisher = create_publisher(url)
    started = time.monotonic()

    outcomes = await publisher.publish(sample_messages(3))

    assert time.monotonic() - started < 10
    assert all(o.unavailable and o.retriable and not o.acked for o in outcomes)
    assert not any("t0p-s3cret" in (o.error or "") for o in outcomes)
    with pytest.raises(BrokerUnavailable) as raised:
        await publisher.connect()
    assert "t0p-s3cret" not in str(raised.value) and "127.0.0.1" in str(raised.value)
    await publisher.close()


async def test_lost_connection_is_retriable_then_reconnects(
    publisher: PostgresPublisher, target_db: Database
) -> None:
    assert all(o.acked for o in await publisher.publish(sample_messages(2)))
    with psycopg.connect(target_db.dsn, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (APP,),
        ).fetchall()
    assert killed == [(True,)]  # libpq parameters such as application_name pass through

    lost = await publisher.publish(sample_messages(2))
    again = await publisher.publish(sample_messages(2))

    assert all(o.unavailable and not o.acked for o in lost)
    assert all(o.acked for o in again)
    assert len(inbox_rows(target_db.dsn)) == 4


async def test_a_stuck_target_times_out_then_recovers(target_db: Database) -> None:
    publisher = create_publisher(f"{target_db.dsn}?consumer=billing&timeout=1")
    await publisher.connect()
    batch = sample_messages(3)
    with psycopg.connect(target_db.dsn) as blocker:
        blocker.execute("LOCK TABLE outboxkit.inbox_messages IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        stuck = await publisher.publish(batch)
        assert time.monotonic() - started < 5
        blocker.rollback()

    assert all(o.retriable and not o.acked and not o.unavailable for o in stuck)
    assert all(o.acked for o in await publisher.publish(batch))
    assert len(inbox_rows(target_db.dsn)) == 3
    await publisher.close()


async def test_unmigrated_target_is_reported(empty_db: Database) -> None:
    publisher = create_publisher(f"{empty_db.dsn}?consumer=billing")
    with pytest.raises(SchemaNotMigrated):
        await publisher.connect()
    outcomes = await publisher.publish(sample_messages(1))
    assert outcomes[0].unavailable and "no outboxkit tables" in (outcomes[0].error or "")
    await publisher.close()


async def test_a_target_missing_a_migration_is_refused(empty_db: Database) -> None:
    """The target is another service's inbox: without this outboxkit's newest migrations it
    lacks limits and row security the relay relies on, so the relay does not start."""
    migrations.apply(empty_db.dsn, target=migrations.LATEST - 1)
    publisher = create_publisher(f"{empty_db.dsn}?consumer=billing")
    with pytest.raises(SchemaNotMigrated, match="pending"):
        await publisher.connect()
    await publisher.close()


@pytest.mark.parametrize(
    "query", ["", "?schema=outboxkit", "?consumer=", "?consumer=b&timeout=0", "?consumer=b&schema="]
)
def test_bad_urls_are_configuration_errors(query: str) -> None:
    with pytest.raises(ConfigurationError):
        create_publisher(f"postgresql://u:pw@127.0.0.1:5432/db{query}")


async def test_empty_batch_and_double_close(publisher: PostgresPublisher) -> None:
    assert await publisher.publish([]) == []
    await publisher.close()
    await publisher.close()
