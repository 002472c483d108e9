"""Malformed envelopes from a broker, through the real consumer runner, for every broker.

Each envelope of the shared corpus (`tests.support.malformed`) is sent with the broker's own
client, bypassing our publisher's checks, between well-formed messages from our publisher,
so that fetched batches mix both. Then: every well-formed message is handled exactly once,
every malformed one that carries a valid id is an inbox dead letter (with the reason and
its raw payload, no dedup row), the others are counted and dropped, and the runner keeps
running. HTTP is not in this corpus: its consumer answers a malformed webhook 400 and the
sender dead-letters it (tests/integration/test_http.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from outboxkit.inbox import ConsumerRunner, ConsumerSettings, Inbox, Mode
from outboxkit.outbox.ids import uuid7
from outboxkit.outbox.message import Message
from tests.conformance.cases.base import BrokerCase, BrokerServer
from tests.conformance.helpers import TOPIC_PATTERN, connected_publisher
from tests.support import hostile
from tests.support.malformed import RAW_TOPIC, Bad, corpus
from tests.support.publishers import publish_until_acked


def carried(case: BrokerCase, bad: Bad) -> bool:
    """Whether the broker's own client and framing can send `bad` as it is."""
    if case.raw_text_only and not bad.text_only:
        return False
    return not (bad.needs & case.raw_cannot)


def well_formed(count: int) -> list[Message]:
    return [
        Message(
            message_id=uuid7(),
            topic=RAW_TOPIC,
            payload=b'{"n": %d}' % n,
            key=f"k{n % 3}" if n % 2 else None,
            headers={"x-n": str(n)},
        )
        for n in range(count)
    ]


@pytest.mark.hostile
@pytest.mark.parametrize("mode", [Mode.IDEMPOTENT, Mode.DURABLE], ids=lambda m: m.value)
async def test_malformed_envelopes_are_dead_lettered_or_dropped(
    broker: BrokerServer, case: BrokerCase, dsn: str, admin: Any, mode: Mode
) -> None:
    if case.raw is None:
        pytest.skip(f"{case.name}: no raw client (a malformed webhook is answered 400)")
    bad = [b for b in corpus() if carried(case, b)]
    good = well_formed(len(bad) + 1)
    url = broker.fresh_url()
    publisher = await connected_publisher(url)
    try:
        async with case.raw(url) as raw:
            for message, envelope in zip(good, bad, strict=False):
                await publish_until_acked(publisher, [message])
                await raw.send(envelope.fields, envelope.payload)
        await publish_until_acked(publisher, good[len(bad) :])
    finally:
        await publisher.close()

    admin.execute("CREATE TABLE effects (message_id uuid)")
    ib = Inbox(consumer="conformance")

    @ib.handler(TOPIC_PATTERN)
    async def effect(tx: psycopg.AsyncConnection[Any], message: Message) -> None:
        await tx.execute("INSERT INTO effects VALUES (%s)", (message.message_id,))

    settings = ConsumerSettings(
        dsn=dsn, broker_url=url, mode=mode, prune_interval=0, fetch_wait=0.5, poll_interval=0.1
    )
    runner = ConsumerRunner(ib, settings)
    task = asyncio.create_task(runner.run())
    identified = {b.message_id for b in bad if b.identifiable}
    anonymous = [b for b in bad if not b.identifiable]

    async def settled() -> bool:
        if task.done():  # the runner must survive all of it
            raise AssertionError(f"the consumer runner stopped: {task.exception()!r}")
        counts = await asyncio.to_thread(_counts, dsn)
        dropped = runner.malformed_dropped
        return counts == (len(good), len(identified)) and dropped == len(anonymous)

    try:
        deadline = time.monotonic() + 90  # a hang guard, not a performance figure
        while not await settled():
            assert time.monotonic() < deadline, (
                f"{_counts(dsn)} of ({len(good)}, {len(identified)}); "
                f"{runner.malformed_dropped} of {len(anonymous)} dropped"
            )
            await asyncio.sleep(0.1)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)

    parser = f"malformed envelopes through {case.name} ({mode.value} mode)"
    effects = admin.execute("SELECT message_id, count(*) FROM effects GROUP BY 1").fetchall()
    handled = {m for m, n in effects if n == 1}
    hostile.lost(parser, len({m.message_id for m in good} - handled))
    assert len(effects) == len(good) and all(n == 1 for _, n in effects), effects

    dead = {
        row[0]: row[1:]
        for row in admin.execute(
            "SELECT message_id, payload, attempts, last_error FROM outboxkit.inbox_dead_letters"
        ).fetchall()
    }
    assert set(dead) == identified
    for envelope in bad:
        kept = dead.get(envelope.message_id) if envelope.identifiable else None
        hostile.tried(
            parser, refused=True, reason="dead-lettered" if kept is not None else "dropped"
        )
        if kept is not None:
            payload, attempts, error = kept
            assert bytes(payload) == envelope.payload and attempts == 0, (envelope.name, kept)
            assert error.startswith("malformed envelope: "), error
    dedup = admin.execute(
        "SELECT count(*) FROM outboxkit.inbox_messages WHERE message_id = ANY(%s)",
        (list(identified),),
    ).fetchone()
    assert dedup == (0,)  # their ids came in broken envelopes: not recorded as seen
    assert runner.malformed_dead_lettered == len(identified)
    assert runner.malformed_dropped == len(anonymous)


def _counts(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(DISTINCT message_id) FROM effects),"
            " (SELECT count(*) FROM outboxkit.inbox_dead_letters)"
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])
