"""The consumer contract every broker adapter fulfils.

    class Consumer(Protocol):
        async def connect(self) -> None: ...
        async def fetch(self, max_messages: int, wait: float) -> list[Delivery]: ...
        async def close(self) -> None: ...

`fetch` returns what the broker delivered (possibly nothing after `wait` seconds). The runner
acks a delivery only after the inbox transaction committed; `nak(delay)` asks the broker to
redeliver later. A delivery the adapter could not decode carries `malformed` instead of a
message: the runner logs it and acks it so it cannot block the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from outbox.message import Message


class Delivery(Protocol):
    """One message as the broker delivered it."""

    message: Message | None
    malformed: str | None
    attempt: int  # 1 on first delivery

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
