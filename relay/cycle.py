"""One claim cycle on one partition: claim, publish in key order, settle, commit.

Everything happens in one transaction on the relay's connection, so a crash anywhere before
the commit leaves the rows in place to be claimed and published again: at least once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from outboxkit.brokers.publishing import Outcome, Publisher
from outboxkit.outbox.backoff import message_backoff
from outboxkit.outbox.faults import CrashPoints
from outboxkit.outbox.message import Message
from outboxkit.relay.metrics import RelayMetrics
from outboxkit.relay.settings import RelaySettings

log = logging.getLogger("outboxkit.relay")


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claimed row: its outbox id, the attempts so far, and the message."""

    id: int
    attempts: int
    message: Message


@dataclass
class CycleResult:
    """What a cycle did; `outage` is set when the broker could not be reached."""

    claimed: int = 0
    acked: int = 0
    outage: str | None = None


@dataclass
class _Decisions:
    acked: list[Claimed] = field(default_factory=list)
    retry: list[tuple[Claimed, str]] = field(default_factory=list)
    dead: list[tuple[Claimed, str]] = field(default_factory=list)
    outage: str | None = None


def to_claimed(row: Sequence[Any]) -> Claimed:
    """A claim query row (id, message_id, topic, key, payload, content_type, headers,
    created_at, attempts, partition) as a `Claimed`."""
    row_id, message_id, topic, key, payload, content_type, headers, created_at, attempts, _ = row
    message = Message(
        message_id=message_id,
        topic=topic,
        payload=payload,
        key=key,
        headers=headers,
        content_type=content_type,
        created_at=created_at,
    )
    return Claimed(row_id, attempts, message)


def unpublishable(message: Message) -> str | None:
    """Why a claimed row cannot be published (so it is dead-lettered), or None.

    The write API only writes str -> str headers; the `headers` column is plain jsonb, and a
    row inserted by hand may hold anything there.
    """
    headers = message.headers
    if not isinstance(headers, dict) or not all(
        isinstance(name, str) and isinstance(value, str) for name, value in headers.items()
    ):
        return "malformed outbox row: headers must be a JSON object of strings"
    return None


def publish_rounds(claimed: Sequence[Claimed]) -> list[list[Claimed]]:
    """Split a batch so that each round holds at most one message per key, in id order.

    Round n holds the n-th message of every key (and all keyless messages go in round 0):
    a later message of a key is only sent once the earlier one was acked.
    """
    rounds: list[list[Claimed]] = []
    seen: Counter[str] = Counter()
    for item in claimed:
        key = item.message.key
        index = 0 if key is None else seen[key]
        if key is not None:
            seen[key] += 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(item)
    return rounds


class Cycle:
    """Runs claim cycles for one relay; stateless between cycles apart from its settings."""

    def __init__(
        self,
        settings: RelaySettings,
        queries: dict[str, sql.Composed],
        publisher: Publisher,
        metrics: RelayMetrics,
        crash_points: CrashPoints,
    ) -> None:
        self.settings = settings
        self.queries = queries
        self.publisher = publisher
        self.metrics = metrics
        self.crash = crash_points
        self._at_most_once = settings.semantics.at_most_once_like_patterns()

    async def run(self, conn: psycopg.AsyncConnection[Any], partitions: list[int]) -> CycleResult:
        """Claim and publish up to one batch from `partitions` (the ones this relay owns)."""
        result = CycleResult()
        if self._at_most_once:
            await self._run_at_most_once(conn, partitions, result)
        # Pipelined: statements that need no answer (the settle) are not waited for one by one.
        # The commit stays durable (synchronous_commit as configured): a settle lost in a
        # database crash would republish more than the batch in flight (measured: a lazy
        # commit bought nothing at batch size 500, one WAL flush per batch).
        async with conn.pipeline(), conn.transaction():
            cursor = await conn.execute(
                self.queries["claim"],
                {
                    "partitions": partitions,
                    "limit": self.settings.batch_size,
                    "at_most_once": self._at_most_once,
                },
            )
            claimed = [to_claimed(row) for row in await cursor.fetchall()]
            result.claimed += len(claimed)
            if not claimed:
                return result
            self.crash.reached("after_claim")
            decisions = await self._publish(claimed)
            self.crash.reached("after_publish")
            await self._settle(conn, decisions)
            self.crash.reached("before_commit")
        self.crash.reached("after_commit")
        self._count(decisions)
        result.acked += len(decisions.acked)
        result.outage = decisions.outage
        return result

    async def _run_at_most_once(
        self, conn: psycopg.AsyncConnection[Any], partitions: list[int], result: CycleResult
    ) -> None:
        async with conn.pipeline(), conn.transaction():
            cursor = await conn.execute(
                self.queries["claim_at_most_once"],
                {
                    "partitions": partitions,
                    "limit": self.settings.batch_size,
                    "at_most_once": self._at_most_once,
                },
            )
            claimed = [to_claimed(row) for row in await cursor.fetchall()]
        # Committed: from here on these messages are published at most once.
        if not claimed:
            return
        result.claimed += len(claimed)
        outcomes = await self._send([c.message for c in claimed])
        lost = Counter(
            c.message.topic for c, o in zip(claimed, outcomes, strict=True) if not o.acked
        )
        self.metrics.published_counts(
            Counter(c.message.topic for c, o in zip(claimed, outcomes, strict=True) if o.acked)
        )
        for topic, count in lost.items():
            self.metrics.failed(topic, count)
            log.warning("dropped %d at-most-once message(s) of topic %s", count, topic)

    async def _send(self, messages: list[Message]) -> list[Outcome]:
        started = time.perf_counter()
        try:
            outcomes = await asyncio.wait_for(
                self.publisher.publish(messages), self.settings.publish_timeout
            )
        except TimeoutError:
            return [Outcome.unreachable("broker did not answer in time")] * len(messages)
        except Exception as exc:
            log.exception("publisher raised instead of reporting outcomes")
            return [Outcome.unreachable(f"publisher error: {type(exc).__name__}")] * len(messages)
        self.metrics.observe_batch(time.perf_counter() - started)
        if len(outcomes) != len(messages):
            log.error(
                "publisher returned %d outcomes for %d messages", len(outcomes), len(messages)
            )
            return [Outcome.unreachable("publisher returned a wrong number of outcomes")] * len(
                messages
            )
        return outcomes

    async def _publish(self, claimed: Sequence[Claimed]) -> _Decisions:
        decisions = _Decisions()
        failed_keys: set[str] = set()
        for round_ in publish_rounds(claimed):
            sendable = []
            for item in round_:
                if item.message.key in failed_keys:
                    continue
                if problem := unpublishable(item.message):
                    # A row written behind the API's back: a publisher would raise on it, and
                    # an exception fails the whole batch as an outage, for ever.
                    decisions.dead.append((item, problem))
                    if item.message.key is not None:
                        failed_keys.add(item.message.key)
                    continue
                sendable.append(item)
            if not sendable:
                continue
            outcomes = await self._send([c.message for c in sendable])
            for item, outcome in zip(sendable, outcomes, strict=True):
                if outcome.acked:
                    decisions.acked.append(item)
                    continue
                if item.message.key is not None:
                    failed_keys.add(item.message.key)
                if outcome.unavailable:
                    decisions.outage = outcome.error or "broker unavailable"
                elif outcome.retriable and item.attempts + 1 < self.settings.max_attempts:
                    decisions.retry.append((item, outcome.error or "publish failed"))
                else:
                    reason = outcome.error or "rejected by the broker"
                    if outcome.retriable:
                        reason = f"gave up after {item.attempts + 1} attempts: {reason}"
                    decisions.dead.append((item, reason))
            if decisions.outage:
                break  # settle what was acked; leave the rest untouched
        return decisions

    async def _settle(self, conn: psycopg.AsyncConnection[Any], decisions: _Decisions) -> None:
        blocked_keys = {c.message.key for c, _ in (*decisions.retry, *decisions.dead)}
        base, cap = self.settings.backoff_base, self.settings.backoff_max
        await conn.execute(
            self.queries["settle"],
            {
                "acked_ids": [c.id for c in decisions.acked],
                "unblock_ids": [
                    c.id
                    for c in decisions.acked
                    if c.message.key is not None and c.message.key not in blocked_keys
                ],
                "retry_ids": [c.id for c, _ in decisions.retry],
                "retry_errors": [error for _, error in decisions.retry],
                "retry_delays": [
                    message_backoff(c.attempts + 1, base, cap) for c, _ in decisions.retry
                ],
                "dead_ids": [c.id for c, _ in decisions.dead],
                "dead_errors": [error for _, error in decisions.dead],
            },
        )

    def _count(self, decisions: _Decisions) -> None:
        self.metrics.published_counts(Counter(c.message.topic for c in decisions.acked))
        for item, error in decisions.retry:
            self.metrics.failed(item.message.topic, 1)
            log.warning(
                "message %s (topic %s) failed, will retry: %s",
                item.message.message_id,
                item.message.topic,
                error,
            )
        for item, error in decisions.dead:
            self.metrics.dead_lettered(item.message.topic, 1)
            log.error(
                "message %s (topic %s) dead-lettered: %s",
                item.message.message_id,
                item.message.topic,
                error,
            )
