"""Publishing in tests: until acked against a real broker, and a recording publisher.

The recording publisher tests the relay's core logic against a real database. It stands in
for a broker only where a test needs to script the broker's answers (a poison message, an
outage); every broker adapter is tested against its real server elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from outboxkit.brokers.publishing import Capabilities, Outcome, Publisher
from outboxkit.outbox.message import Message

Script = Callable[[Message], Outcome | None]


async def publish_until_acked(
    publisher: Publisher, batch: Sequence[Message], *, within: float = 60.0
) -> list[Outcome]:
    """Publish, republishing what failed retriably, until every message is acked; never a
    reject. Returns the failures on the way (a broker just back may time out a first send)."""
    deadline = time.monotonic() + within
    pending = list(batch)
    failures: list[Outcome] = []
    while pending:
        outcomes = await publisher.publish(pending)
        assert all(o.acked or o.retriable for o in outcomes), outcomes
        failures += [o for o in outcomes if not o.acked]
        pending = [m for m, o in zip(pending, outcomes, strict=True) if not o.acked]
        if pending:
            assert time.monotonic() < deadline, f"still failing: {failures[-1]}"
            await asyncio.sleep(0.2)
    return failures


@dataclass
class RecordingPublisher:
    """Acks everything unless `script` returns an outcome for a message; records acks."""

    script: Script | None = None
    capabilities: Capabilities = field(
        default_factory=lambda: Capabilities(
            ordered_per_key=True, broker_dedup=False, max_message_bytes=None
        )
    )
    acked: list[Message] = field(default_factory=list)
    attempts: list[Message] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    closed: bool = False

    async def connect(self) -> None:
        return None

    async def publish(self, batch: Sequence[Message]) -> list[Outcome]:
        self.batches.append(len(batch))
        await asyncio.sleep(0)
        outcomes = []
        for message in batch:
            self.attempts.append(message)
            outcome = self.script(message) if self.script else None
            if outcome is None or outcome.acked:
                self.acked.append(message)
                outcome = Outcome.ok()
            outcomes.append(outcome)
        return outcomes

    async def close(self) -> None:
        self.closed = True

    def keys_in_order(self) -> dict[str | None, list[str]]:
        """Acked payloads grouped by key, in the order they were acked."""
        grouped: dict[str | None, list[str]] = {}
        for message in self.acked:
            grouped.setdefault(message.key, []).append(message.payload.decode())
        return grouped
