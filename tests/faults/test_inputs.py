"""Scenarios 12-14 and 17: duplicate and late deliveries, poison and malformed messages,
refused writes.

Bounds in these tests are hang guards, never performance thresholds.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from outboxkit import outbox
from outboxkit.faults.checker import check, read_stream
from outboxkit.faults.world import PREFIX, World
from outboxkit.inbox import prune
from outboxkit.outbox.envelope import CONTENT_TYPE, CREATED_AT, KEY, MESSAGE_ID, TOPIC
from outboxkit.outbox.errors import (
    InvalidMessage,
    InvalidTopic,
    PayloadNotSerializable,
    PayloadTooLarge,
)
from tests.faults.conftest import Report
from tests.support.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
MAX_ATTEMPTS = 3  # World.start_consumer's --max-attempts


def rows(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def effects_per_message(world: World) -> dict[str, int]:
    found = rows(world.consumer_dsn, "SELECT message_id::text, count(*) FROM effects GROUP BY 1")
    return {str(m): int(n) for m, n in found}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outboxkit.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )


async def _true(value: bool) -> bool:
    return value


# -- 12. one message delivered to two consumers at once ------------------------------------------


@pytest.mark.parametrize("mode", ["idempotent", "durable"])
async def test_12_same_message_to_two_consumers_at_once(
    world: World, report: Report, mode: str
) -> None:
    """Every message sits in the stream four times (the relay's copy and three raw copies
    with fresh Nats-Msg-Ids, shuffled), and two consumer processes of one inbox consumer
    name, four concurrent batch transactions each, race over them.

    This found a livelock: batches holding the same messages in different orders deadlocked
    on each other's uncommitted dedup rows, were redelivered, and collided again (87 of 300
    messages handled in 60 s). Batches now lock their messages in one order first."""
    world.start_relay()
    committed = await asyncio.to_thread(world.produce, 300, tx_size=10)
    await eventually(lambda: asyncio.to_thread(lambda: world.pending() == 0), within=120)
    copies = await world.republish(copies=3, shuffle=True)
    consumers = [world.start_consumer(f"consumer-{n}", mode=mode) for n in (1, 2)]
    recovery = await world.wait_drained(expected=committed)
    await world.wait_consumed(within=120)  # every copy delivered, handled or absorbed, acked
    inbox_rows = rows(world.consumer_dsn, "SELECT count(*) FROM outboxkit.inbox_messages")[0][0]
    handlers = {pid for (pid,) in rows(world.consumer_dsn, "SELECT DISTINCT pid FROM effects")}
    verdict = await check(world)
    deadlocks = sum(c.output().count("DeadlockDetected") for c in consumers)
    report(
        12,
        f"one message delivered to two consumers at once ({mode} mode)",
        verdict,
        faults=f"{copies} raw copies (3 per message, new Nats-Msg-Id, shuffled) raced by 2 "
        f"consumer processes x {'4 fetchers' if mode == 'idempotent' else '1 store + 4 workers'}"
        f"; {deadlocks} deadlock(s)",
        recovery=recovery,
    )
    assert verdict.ok, verdict.problems
    assert verdict.committed == committed
    assert verdict.duplicates_delivered >= copies  # the copies were all there to race
    assert verdict.double_processed == 0
    assert deadlocks == 0
    assert inbox_rows == committed
    assert len(handlers) > 1  # the work really was shared between database sessions
    for consumer in consumers:
        assert consumer.alive, consumer.output()[-2000:]


# -- 13. poison messages ---------------------------------------------------------------------------


async def test_13_poison_messages_on_both_sides(world: World, report: Report) -> None:
    """Consumer side: payloads the handler always fails on. Relay side: a message over the
    stream's max_msg_size, which JetStream refuses for good."""
    await world.update_stream(max_msg_size=64 * 1024)
    committed = await asyncio.to_thread(world.produce, 100)
    poison = [await asyncio.to_thread(world.write_message, {"poison": True}) for _ in range(3)]
    oversize = await asyncio.to_thread(world.write_message, {"blob": "x" * 100_000}, key="big")
    parked = [await asyncio.to_thread(world.write_message, key="big") for _ in range(2)]
    committed += await asyncio.to_thread(world.produce, 100)
    committed += len(poison) + 1 + len(parked)
    world.start_relay()
    consumer = world.start_consumer()
    poison_ids = {str(m.message_id) for m in poison}
    dead_ids = poison_ids | {str(oversize.message_id)}
    parked_ids = {str(m.message_id) for m in parked}

    # Everything flows but the poison (dead-lettered by the consumer) and the oversize
    # message (dead-lettered by the relay), whose key waits behind it.
    async def settled() -> bool:
        handled = await asyncio.to_thread(effects_per_message, world)
        pending = {
            str(m)
            for (m,) in await asyncio.to_thread(
                rows, world.service_dsn, "SELECT message_id FROM outboxkit.outbox_messages"
            )
        }
        inbox_dead = await asyncio.to_thread(
            rows, world.consumer_dsn, "SELECT count(*) FROM outboxkit.inbox_dead_letters"
        )
        return (
            len(handled) == committed - len(dead_ids) - len(parked_ids)
            and pending == parked_ids
            and inbox_dead[0][0] == len(poison)
        )

    await eventually(settled, within=120, every=0.2)
    relay_dead = rows(
        world.service_dsn,
        "SELECT message_id::text, key, last_error FROM outboxkit.outbox_dead_letters",
    )
    blocks = rows(world.service_dsn, "SELECT key, reason FROM outboxkit.outbox_key_blocks")
    inbox_dead = rows(
        world.consumer_dsn,
        "SELECT message_id::text, attempts, last_error FROM outboxkit.inbox_dead_letters",
    )
    assert [(m, k) for m, k, _ in relay_dead] == [(str(oversize.message_id), "big")]
    assert "maximum" in relay_dead[0][2].lower(), relay_dead
    assert blocks == [("big", "dead_letter")]  # only its key is parked
    assert {m for m, _, _ in inbox_dead} == poison_ids
    assert all(attempts == MAX_ATTEMPTS for _, attempts, _ in inbox_dead), inbox_dead
    assert all("poison" in error for _, _, error in inbox_dead), inbox_dead
    await world.wait_consumed(within=60)  # the poison is acked: no retry left in flight

    # The operator drops the oversize message; its key resumes.
    purged = cli(
        "dead-letters", "purge", "--dsn", world.service_dsn, "--id", str(oversize.message_id)
    )
    assert purged.returncode == 0, purged.stderr
    recovery = await world.wait_drained(expected=committed - len(dead_ids))
    verdict = await check(world, max_duplicates=0, expected_dead=dead_ids)
    report(
        13,
        "poison messages: consumer handler and broker rejection",
        verdict,
        faults=f"{len(poison)} poison payloads (dead-lettered after {MAX_ATTEMPTS} "
        "attempts), 1 message over the stream's max_msg_size (relay dead letter, key parked "
        "until purged)",
        recovery=recovery,
    )
    assert verdict.ok, verdict.problems
    assert verdict.committed == committed
    assert consumer.alive, consumer.output()[-2000:]


# -- 14. bad input: refused writes, unknown topics, malformed broker messages ----------------------


async def test_14_refused_writes_unknown_topics_malformed_messages(
    world: World, report: Report
) -> None:
    world.start_relay()
    consumer = world.start_consumer()
    committed = await asyncio.to_thread(world.produce, 100)
    refused, written = await asyncio.to_thread(_business_transaction_with_bad_writes, world)
    committed += len(written)

    # Into the stream behind the relay's back: a valid envelope whose topic no handler of
    # this consumer matches, and two broken envelopes.
    unhandled = uuid.uuid4()
    subject = PREFIX + "faults.event"
    await world.publish_raw(
        subject,
        b'{"seq": 0}',
        {MESSAGE_ID: str(unhandled), TOPIC: "unhandled.topic", CONTENT_TYPE: "application/json"},
    )
    await world.publish_raw(subject, b"not an envelope at all")
    bad_created = uuid.uuid4()
    await world.publish_raw(
        subject, b"{}", {MESSAGE_ID: str(bad_created), CREATED_AT: "yesterday", KEY: "k1"}
    )
    committed += await asyncio.to_thread(world.produce, 100)
    recovery = await world.wait_drained(expected=committed)
    await world.wait_consumed(within=60)

    inbox_dead = rows(
        world.consumer_dsn,
        "SELECT message_id::text, topic, attempts, last_error FROM outboxkit.inbox_dead_letters",
    )
    log = consumer.output()
    verdict = await check(world, max_duplicates=0, foreign={"", str(unhandled), str(bad_created)})
    report(
        14,
        "bad input: refused writes, unknown topic, malformed messages",
        verdict,
        faults=f"{len(refused)} refused writes in a committed business transaction "
        f"({', '.join(sorted(set(refused)))}); 1 topic without handler (inbox dead letter); "
        "2 malformed envelopes (one with an id: inbox dead letter; one without: dropped, "
        "logged)",
        recovery=recovery,
    )
    assert verdict.ok, verdict.problems
    assert verdict.committed == committed
    assert sorted(set(refused)) == ["InvalidTopic", "PayloadNotSerializable", "PayloadTooLarge"]
    dead = {m: (t, attempts, error) for m, t, attempts, error in inbox_dead}
    assert set(dead) == {str(unhandled), str(bad_created)}, inbox_dead
    topic, attempts, error = dead[str(unhandled)]
    assert topic == "unhandled.topic" and "NoHandler" in error, inbox_dead
    assert attempts == 1  # dead-lettered at once: no retry can find a handler
    topic, attempts, error = dead[str(bad_created)]  # its topic is the subject's
    assert (topic, attempts) == ("faults.event", 0) and "created-at" in error, inbox_dead
    assert log.count("dropping a malformed delivery") == 1, log[-3000:]
    assert log.count("malformed delivery") == 2, log[-3000:]
    assert consumer.alive


def _business_transaction_with_bad_writes(world: World) -> tuple[list[str], list[str]]:
    """One transaction: a good write, every kind of refused write, another good write,
    commit. Returns the refused errors' names and the written message ids."""
    refused: list[str] = []
    written: list[str] = []
    attempts: list[tuple[str, Any]] = [
        ("faults.event", {"blob": "x" * (1024 * 1024 + 1)}),  # over max_payload_bytes
        ("faults.event", {"when": object()}),
        ("faults.event", {1, 2, 3}),
        ("", {}),
        ("faults event", {}),
        ("faults." + "x" * 300, {}),
    ]
    with psycopg.connect(world.service_dsn) as conn, conn.transaction():
        written.append(_write_recorded(world, conn, "k1"))
        for topic, payload in attempts:
            try:
                outbox.write(conn, topic, payload, key="k2")
            except InvalidMessage as exc:
                assert isinstance(exc, PayloadTooLarge | PayloadNotSerializable | InvalidTopic)
                refused.append(type(exc).__name__)
            else:
                raise AssertionError(f"{topic!r} / {type(payload).__name__} was accepted")
            # nothing reached the database: the transaction is still good to use
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        written.append(_write_recorded(world, conn, "k1"))
    pending = rows(
        world.service_dsn,
        "SELECT count(*) FROM ledger WHERE message_id = ANY(%s)",
        ([uuid.UUID(m) for m in written],),
    )
    assert pending[0][0] == len(written)
    return refused, written


def _write_recorded(world: World, conn: psycopg.Connection[Any], key: str) -> str:
    seq = world.seq.get(key, 0) + 1
    message = outbox.write(conn, "faults.event", {"seq": seq}, key=key)
    conn.execute(
        "INSERT INTO ledger (message_id, key, seq) VALUES (%s, %s, %s)",
        (message.message_id, key, seq),
    )
    world.seq[key] = seq
    return str(message.message_id)


# -- 17. the dedup window: prune, then a late redelivery -------------------------------------------


DOCUMENTED = (
    "The retention window is the dedup window: a redelivery of a message older than the "
    "window is handled again."
)


async def test_17_pruned_inbox_then_late_redelivery(world: World, report: Report) -> None:
    docs = " ".join((REPO / "docs" / "inbox.md").read_text().replace("**", "").split())
    assert DOCUMENTED in docs  # what this scenario shows is what the docs promise

    world.start_relay()
    world.start_consumer()
    committed = await asyncio.to_thread(world.produce, 50)
    await world.wait_drained(expected=committed)
    redelivered = [m for m, _ in (await read_stream(world))[:10]]

    # Inside the window: redeliveries are absorbed, before any prune and after a prune
    # whose window (1 h) still covers them.
    await world.republish(set(redelivered))
    await world.wait_consumed(within=60)
    kept = await prune(world.consumer_dsn, older_than=3600)
    await world.republish(set(redelivered))
    await world.wait_consumed(within=60)
    inside = await check(world, max_duplicates=2 * len(redelivered))
    assert kept == 0
    assert inside.ok, inside.problems
    assert max(effects_per_message(world).values()) == 1

    # Past the window: `inbox prune --older-than 1s` forgets them, and the same redelivery
    # is handled again, exactly as documented.
    await asyncio.sleep(1.5)
    pruned = cli("inbox", "prune", "--dsn", world.consumer_dsn, "--older-than", "1s")
    assert pruned.returncode == 0, pruned.stderr
    count = int(re.findall(r"pruned (\d+)", pruned.stdout)[0])
    assert count == committed
    assert rows(world.consumer_dsn, "SELECT count(*) FROM outboxkit.inbox_messages")[0][0] == 0
    await world.republish(set(redelivered))
    await world.wait_consumed(within=60)
    effects = effects_per_message(world)
    late = await check(world, max_duplicates=3 * len(redelivered))
    report(
        17,
        "inbox pruned (1 s window), then a late redelivery",
        late,
        faults=f"{len(redelivered)} messages redelivered twice inside the window (absorbed), "
        f"then {count} inbox rows pruned and the {len(redelivered)} redelivered again: "
        "handled again, as docs/inbox.md documents",
        outcome="pass"
        if late.problems == [f"double-processed: {len(redelivered)}"]
        else "fail: " + "; ".join(late.problems),
    )
    assert {m: n for m, n in effects.items() if n > 1} == {m: 2 for m in redelivered}
    assert late.problems == [f"double-processed: {len(redelivered)}"]
