"""The publisher contract every broker adapter fulfils.

A publisher takes a batch of messages and reports, for each one, whether the broker has
*durably* accepted it (JetStream PubAck, AMQP confirm, Kafka acks=all, HTTP 2xx, Postgres
commit). It must never report `acked` for a message the broker could still lose.

    class Publisher(Protocol):
        async def publish(self, batch: Sequence[Message]) -> list[Outcome]: ...
        async def close(self) -> None: ...

`publish` returns one `Outcome` per message, in the batch's order. A failure is retriable
(a timeout or refusal for this message: back off and try again, counting an attempt), or
`unreachable` (the broker is down: the relay pauses, nothing is counted against the
message), or not retriable (message too large, no route, rejected: dead-letter it).
`publish` itself raises only for programming errors; a broker that is unreachable yields
`unreachable` outcomes for the whole batch. Messages of the
batch may be sent concurrently: the relay hands over at most one message per ordering key
per call, so a publisher need not care about order.

An outcome's `error` is outside text (a broker's or endpoint's answer) that ends up in
`last_error` columns and log lines: `Outcome` cleans it on construction
(`outbox.limits.clean_text`: control characters escaped, length bounded), so no publisher
can store a NUL byte, a lone surrogate or a megabyte of HTML by forgetting to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from outboxkit.outbox.limits import clean_text
from outboxkit.outbox.message import Message


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the broker said about one message."""

    acked: bool
    retriable: bool = True
    error: str | None = None
    # The broker itself is unreachable: nothing is wrong with the message, so the relay
    # pauses and retries the batch without counting an attempt against the message.
    unavailable: bool = False

    def __post_init__(self) -> None:
        if self.error is not None:
            # Frozen: set the cleaned text the way dataclasses' own __init__ does.
            object.__setattr__(self, "error", clean_text(self.error))

    @classmethod
    def ok(cls) -> Outcome:
        return _ACKED

    @classmethod
    def retry(cls, error: str) -> Outcome:
        """A transient failure: publish again later."""
        return cls(acked=False, retriable=True, error=error)

    @classmethod
    def unreachable(cls, error: str) -> Outcome:
        """The broker cannot be reached right now: retry the batch, no attempt counted."""
        return cls(acked=False, retriable=True, error=error, unavailable=True)

    @classmethod
    def reject(cls, error: str) -> Outcome:
        """A permanent failure: dead-letter the message."""
        return cls(acked=False, retriable=False, error=error)


_ACKED = Outcome(acked=True)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a broker promises, for the relay and the conformance suite."""

    ordered_per_key: bool
    broker_dedup: bool
    max_message_bytes: int | None


class Publisher(Protocol):
    """Publishes batches to one broker. See the module docstring for the contract."""

    capabilities: Capabilities

    async def connect(self) -> None:
        """Open connections; raise `BrokerUnavailable` if the broker cannot be reached."""

    async def publish(self, batch: Sequence[Message]) -> list[Outcome]:
        """Publish `batch`; one outcome per message, in order."""

    async def close(self) -> None:
        """Release connections; safe to call twice."""
