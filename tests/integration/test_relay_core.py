"""The relay's claim cycle, ordering, backoff, dead letters and ownership on a real database.

The broker's answers are scripted with a recording publisher; the adapters themselves are
tested against their real servers in their own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from outboxkit import outbox
from outboxkit.brokers.publishing import Outcome
from outboxkit.outbox.message import Message
from outboxkit.relay import Relay, RelaySettings, TopicSemantics, admin
from tests.support.publishers import RecordingPublisher
from tests.support.waiting import eventually


def settings(dsn: str, **overrides: Any) -> RelaySettings:
    base: dict[str, Any] = {
        "dsn": dsn,
        "broker_url": "test://recording",
        "poll_interval": 0.05,
        "heartbeat_interval": 0.2,
        "relay_ttl": 1.0,
        "backoff_base": 0.05,
        "backoff_max": 0.2,
        "batch_size": 50,
    }
    return RelaySettings(**(base | overrides))


@contextlib.asynccontextmanager
async def running(relay: Relay) -> AsyncIterator[Relay]:
    await relay.start()
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)


def write(
    dsn: str, items: list[tuple[str, Any, str | None]], *, commit: bool = True
) -> list[Message]:
    with psycopg.connect(dsn) as conn:
        written = [outbox.write(conn, topic, payload, key=key) for topic, payload, key in items]
        if commit:
            conn.commit()
        else:
            conn.rollback()
    return written


def pending(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM outboxkit.outbox_messages").fetchone()
        assert row is not None
        return int(row[0])


def drained(dsn: str) -> Callable[[], Any]:
    async def check() -> bool:
        return await asyncio.to_thread(pending, dsn) == 0

    return check


async def test_publishes_every_message_in_key_order(dsn: str) -> None:
    items = [("order.created", f"{key}:{n}", f"k{key}") for n in range(20) for key in range(10)]
    items += [("audit.logged", f"free:{n}", None) for n in range(30)]
    write(dsn, items)
    publisher = RecordingPublisher()
    async with running(Relay(settings(dsn), publisher=publisher)):
        await eventually(drained(dsn))
    assert len(publisher.acked) == len(items)
    for key, payloads in publisher.keys_in_order().items():
        if key is not None:
            assert [int(p.split(":")[1].strip('"')) for p in payloads] == list(range(20))
    assert publisher.closed


async def test_rolled_back_messages_are_never_published(dsn: str) -> None:
    write(dsn, [("order.created", "rolled-back", "k1")], commit=False)
    write(dsn, [("order.created", "committed", "k1")])
    publisher = RecordingPublisher()
    async with running(Relay(settings(dsn), publisher=publisher)):
        await eventually(drained(dsn))
    assert [m.payload for m in publisher.acked] == [b'"committed"']


async def test_retriable_failure_backs_off_and_keeps_key_order(dsn: str) -> None:
    failures = {"left": 3}

    def flaky(message: Message) -> Outcome | None:
        if message.payload == b'"a:0"' and failures["left"] > 0:
            failures["left"] -= 1
            return Outcome.retry("timeout")
        return None

    write(dsn, [("t", f"a:{n}", "a") for n in range(5)] + [("t", f"b:{n}", "b") for n in range(5)])
    publisher = RecordingPublisher(script=flaky)
    async with running(Relay(settings(dsn), publisher=publisher)):
        await eventually(drained(dsn))
    order = publisher.keys_in_order()
    assert order["a"] == [f'"a:{n}"' for n in range(5)]
    assert order["b"] == [f'"b:{n}"' for n in range(5)]
    assert failures["left"] == 0
    # The later messages of key a were never attempted before a:0 was acked.
    first_ack = next(i for i, m in enumerate(publisher.attempts) if m.payload == b'"a:1"')
    assert all(m.payload != b'"a:1"' for m in publisher.attempts[:first_ack])


async def test_poison_message_is_dead_lettered_and_parks_only_its_key(dsn: str) -> None:
    def poison(message: Message) -> Outcome | None:
        return Outcome.reject("too large") if message.payload == b'"a:1"' else None

    write(dsn, [("t", f"a:{n}", "a") for n in range(4)] + [("t", f"b:{n}", "b") for n in range(4)])
    publisher = RecordingPublisher(script=poison)
    async with running(Relay(settings(dsn), publisher=publisher)):
        await eventually(lambda: _async(pending(dsn) == 2))  # a:2, a:3 parked behind a:1
        await asyncio.sleep(0.5)  # parked stays parked
        assert pending(dsn) == 2
        order = publisher.keys_in_order()
        assert order["a"] == ['"a:0"']
        assert order["b"] == [f'"b:{n}"' for n in range(4)]
        dead = admin.find_dead_letters(dsn, key="a")
        assert [d.last_error for d in dead] == ["too large"]

        publisher.script = None  # the operator fixed the cause
        retried = admin.retry_dead_letters(dsn, key="a")
        assert len(retried) == 1
        await eventually(drained(dsn))
    assert publisher.keys_in_order()["a"] == [f'"a:{n}"' for n in range(4)]
    assert admin.find_dead_letters(dsn) == []


async def test_exhausted_attempts_go_to_dead_letters(dsn: str) -> None:
    write(dsn, [("t", "always-fails", "k")])
    publisher = RecordingPublisher(script=lambda m: Outcome.retry("broker said no"))
    async with running(Relay(settings(dsn, max_attempts=3), publisher=publisher)):
        await eventually(lambda: _async(len(admin.find_dead_letters(dsn)) == 1))
    (dead,) = admin.find_dead_letters(dsn)
    assert dead.attempts == 3
    assert "gave up after 3 attempts" in dead.last_error
    assert len(publisher.attempts) == 3


async def test_broker_outage_counts_no_attempts_and_recovers(dsn: str) -> None:
    down = {"yes": True}
    publisher = RecordingPublisher(
        script=lambda m: Outcome.unreachable("connection refused") if down["yes"] else None
    )
    write(dsn, [("t", f"m{n}", f"k{n % 3}") for n in range(30)])
    relay = Relay(settings(dsn, max_attempts=2), publisher=publisher)
    async with running(relay):
        await eventually(lambda: _async(len(publisher.attempts) >= 10))
        assert relay.health()["broker"].startswith("down")
        down["yes"] = False
        await eventually(drained(dsn))
    assert len(publisher.acked) == 30
    assert admin.find_dead_letters(dsn) == []


async def test_at_most_once_topics_are_never_retried(dsn: str) -> None:
    publisher = RecordingPublisher(
        script=lambda m: Outcome.retry("lost") if m.topic.startswith("telemetry.") else None
    )
    write(dsn, [("telemetry.cpu", n, None) for n in range(5)] + [("order.created", 1, "k")])
    semantics = TopicSemantics.parse("telemetry.*=at_most_once")
    async with running(Relay(settings(dsn, semantics=semantics), publisher=publisher)):
        await eventually(drained(dsn))
    telemetry_attempts = [m for m in publisher.attempts if m.topic == "telemetry.cpu"]
    assert len(telemetry_attempts) == 5
    assert [m.topic for m in publisher.acked] == ["order.created"]


async def test_two_relays_share_partitions_without_overlap(dsn: str) -> None:
    first, second = RecordingPublisher(), RecordingPublisher()
    relay_a = Relay(settings(dsn, relay_id="a"), publisher=first)
    relay_b = Relay(settings(dsn, relay_id="b"), publisher=second)
    async with running(relay_a), running(relay_b):
        await eventually(
            lambda: _async(
                len(relay_a.ownership.owned) + len(relay_b.ownership.owned) == 16
                and bool(relay_a.ownership.owned)
                and bool(relay_b.ownership.owned)
            )
        )
        assert not relay_a.ownership.owned & relay_b.ownership.owned
        write(dsn, [("t", f"{k}:{n}", f"k{k}") for n in range(10) for k in range(20)])
        await eventually(drained(dsn))
        state = admin.status(dsn)
        assert {r.relay_id for r in state.relays} == {"a", "b"}
    assert len(first.acked) + len(second.acked) == 200
    assert first.acked and second.acked
    keys_a = {m.key for m in first.acked}
    keys_b = {m.key for m in second.acked}
    assert not keys_a & keys_b


async def test_repartitioning_keeps_keys_together(dsn: str) -> None:
    write(dsn, [("t", f"{k}:{n}", f"k{k}") for n in range(5) for k in range(10)])
    assert admin.set_partitions(dsn, "outboxkit", 4)
    assert not admin.set_partitions(dsn, "outboxkit", 4)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT key, count(DISTINCT partition), max(partition) FROM outboxkit.outbox_messages"
            " GROUP BY key"
        ).fetchall()
    assert all(count == 1 and top < 4 for _, count, top in rows)
    publisher = RecordingPublisher()
    async with running(Relay(settings(dsn), publisher=publisher)) as relay:
        await eventually(drained(dsn))
        assert relay.ownership.partitions == 4


async def test_start_refuses_an_unmigrated_database(empty_db: Any) -> None:
    from outboxkit.outbox.errors import SchemaNotMigrated

    with pytest.raises(SchemaNotMigrated):
        await Relay(settings(empty_db.dsn), publisher=RecordingPublisher()).start()


async def _async(value: bool) -> bool:
    return value
