"""The publisher contract every broker adapter fulfils.

A publisher takes a batch of messages and reports, for each one, whether the broker has
*durably* accepted it (JetStream PubAck, AMQP confirm, Kafka acks=all, HTTP 2xx, Postgres
commit). It must never report `acked` for a message the broker could still lose.

    class Publisher(Protocol):
        async def publish(self, batch: Sequence[Message]) -> list[Outcome]: ...
        async def close(self) -> None: ...

`publish` returns one `Outcome` per message, in the batch's order. A failure is retriable
(broker down, timeout: back off and try again) or not (message too large, no route,
rejected by the broker: dead-letter it). `publish` itself raises only for programming errors;
a broker that is unreachable yields retriable failures for the whole batch. Messages of the
batch may be sent concurrently: the relay hands over at most one message per ordering key
per call, so a publisher need not care about order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from outbox.message import Message


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the broker said about one message."""

    acked: bool
    retriable: bool = True
    error: str | None = None

    @classmethod
    def ok(cls) -> Outcome:
        return _ACKED

    @classmethod
    def retry(cls, error: str) -> Outcome:
        """A transient failure: publish again later."""
        return cls(acked=False, retriable=True, error=error)

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
