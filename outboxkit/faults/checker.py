"""The checker: the invariants every scenario must keep, read from the databases and broker.

- lost = 0: every committed message was handled by the consumer.
- double-processed = 0: no message was handled twice (the effects table has no unique key).
- phantoms = 0: nothing from a rolled-back transaction was ever published or handled.
- order: per key, the first occurrences in the broker's stream follow the write order.
- duplicates delivered (broker copies beyond the first): counted, and bounded by the scenario
  (crashes x batch size).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import nats
import psycopg

from outboxkit.faults.world import STREAM, World
from outboxkit.outbox.envelope import KEY, MESSAGE_ID


@dataclass
class Verdict:
    """What the checker found."""

    committed: int = 0
    processed: int = 0
    lost: int = 0
    double_processed: int = 0
    phantoms: int = 0
    in_broker: int = 0
    duplicates_delivered: int = 0
    order_violations: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def check(
    world: World,
    *,
    ordered: bool = True,
    max_duplicates: int | None = None,
    expected_dead: Collection[str] = (),
    foreign: Collection[str] = (),
) -> Verdict:
    """Check every invariant; `problems` lists what does not hold.

    `expected_dead`: ids of committed messages the scenario made undeliverable on purpose
    (poison, oversize): they must be dead-lettered, so they count as neither lost nor handled,
    and handling one is a problem. `foreign`: message-id header values of messages the
    scenario put into the stream itself, bypassing the outbox (raw or malformed ones; `""`
    for none): not phantoms.
    """
    verdict = Verdict()
    ledger = _rows(world.service_dsn, "SELECT message_id::text, key, seq FROM ledger")
    effects = _rows(world.consumer_dsn, "SELECT message_id::text FROM effects ORDER BY id")
    committed = {row[0]: (row[1], row[2]) for row in ledger}
    handled = Counter(row[0] for row in effects)
    dead = set(expected_dead)
    verdict.committed, verdict.processed = len(committed), len(handled)
    verdict.lost = len(committed.keys() - handled.keys() - dead)
    if dead & handled.keys():
        verdict.problems.append(f"dead-lettered messages handled: {len(dead & handled.keys())}")
    verdict.double_processed = sum(1 for count in handled.values() if count > 1)
    verdict.phantoms = len(handled.keys() - committed.keys())
    stream = await read_stream(world)
    verdict.in_broker = len(stream)
    verdict.duplicates_delivered = len(stream) - len({message_id for message_id, _ in stream})
    stream_phantoms = {message_id for message_id, _ in stream} - committed.keys() - set(foreign)
    if ordered:
        verdict.order_violations = _order_violations(stream, committed)
    for name, value in (
        ("lost", verdict.lost),
        ("double-processed", verdict.double_processed),
        ("phantoms", verdict.phantoms),
        ("order violations", verdict.order_violations),
    ):
        if value:
            verdict.problems.append(f"{name}: {value}")
    if stream_phantoms:
        verdict.problems.append(f"rolled-back messages in the broker: {len(stream_phantoms)}")
    if max_duplicates is not None and verdict.duplicates_delivered > max_duplicates:
        verdict.problems.append(
            f"duplicates delivered {verdict.duplicates_delivered} > bound {max_duplicates}"
        )
    return verdict


def _order_violations(
    stream: list[tuple[str, str | None]], committed: dict[str, tuple[str, int]]
) -> int:
    seen: set[str] = set()
    last: dict[str, int] = defaultdict(int)
    violations = 0
    for message_id, _key in stream:
        if message_id in seen or message_id not in committed:
            continue
        seen.add(message_id)
        key, seq = committed[message_id]
        if seq < last[key]:
            violations += 1
        last[key] = max(last[key], seq)
    return violations


async def read_stream(world: World) -> list[tuple[str, str | None]]:
    """(message id, key) of every message in the stream, in stream order."""
    assert world.nats is not None
    client = await nats.connect(world.nats.url)
    try:
        js = client.jetstream()
        info = await js.stream_info(STREAM)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                stored = await js.get_msg(STREAM, seq)
            except nats.js.errors.NotFoundError:
                continue
            headers = stored.headers or {}
            found.append((headers.get(MESSAGE_ID, ""), headers.get(KEY)))
        return found
    finally:
        await client.close()


def _rows(dsn: str, query: str) -> list[Any]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()
