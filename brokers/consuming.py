"""The consumer contract every broker adapter fulfils.

    class Consumer(Protocol):
        async def connect(self) -> None: ...
        async def fetch(self, max_messages: int, wait: float) -> list[Delivery]: ...
        async def close(self) -> None: ...

`fetch` returns what the broker delivered (possibly nothing after `wait` seconds). The runner
acks a delivery only after the inbox transaction committed; `nak(delay)` asks the broker to
redeliver later.

A delivery the adapter could not decode carries `malformed` (an `outbox.envelope.Malformed`)
instead of a message: the reason, and what could be kept of it (its id if valid, the raw
payload, the cleaned topic, key and headers). The runner dead-letters it into the inbox's
dead letters when it has an id, else logs, counts and drops it; either way it acks it so it
cannot block the stream. Decoding never raises out of `fetch`: whatever the broker hands
over (foreign publishers included) becomes a message or a malformed delivery, through
`outbox.envelope.from_headers` and `Malformed.of`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from outboxkit.outbox.envelope import Malformed
from outboxkit.outbox.message import Message


class Delivery(Protocol):
    """One message as the broker delivered it."""

    message: Message | None
    attempt: int  # 1 on first delivery

    @property
    def malformed(self) -> Malformed | str | None:
        """Why `message` is None: a `Malformed` (a bare reason keeps nothing: dropped)."""

    async def ack(self) -> None:
        """The broker may forget the message."""

    async def nak(self, delay: float) -> None:
        """Redeliver after `delay` seconds."""


class Consumer(Protocol):
    """Receives deliveries from one broker for one consumer name."""

    async def connect(self) -> None:
        """Open connections and subscriptions; `BrokerUnavailable` if unreachable."""

    async def fetch(self, max_messages: int, wait: float) -> list[Delivery]:
        """Up to `max_messages` deliveries, waiting at most `wait` seconds for the first."""

    async def close(self) -> None:
        """Release connections; safe to call twice."""


@dataclass(frozen=True)
class Subscription:
    """What the runner asks of a consumer adapter."""

    consumer: str  # the inbox consumer name: the broker's durable consumer/group name
    topics: list[str]  # handler topic patterns (`*` = any run of characters)
