"""PubAcks for pipelined JetStream publishes, over one reply subscription per connection.

`js.publish` in nats-py sends one request per message: a random inbox token, a future, a
timer and a JSON-decoded `PubAck` object each time, which cost the relay about as much CPU as
everything else it does. Here every message is published with a reply subject
`<inbox>.<n>` under one wildcard subscription opened at connect, and a batch waits on one
event for all its acks. The ack body is only decoded when it reports an error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from outboxkit.brokers.publishing import Outcome

STATUS = "Status"
NO_RESPONDERS = "503"


class AckRound:
    """The acks of one batch: an outcome per message, and an event once all are in."""

    def __init__(self, outcomes: list[Outcome]) -> None:
        self.outcomes = outcomes
        self.tokens: list[str] = []
        self._waiting = 0
        self.complete = asyncio.Event()
        self.complete.set()

    def expect(self, token: str) -> None:
        self.tokens.append(token)
        self._waiting += 1
        self.complete.clear()

    def settle(self, index: int, outcome: Outcome) -> None:
        self.outcomes[index] = outcome
        self._waiting -= 1
        if self._waiting <= 0:
            self.complete.set()


class AckInbox:
    """Hands out reply subjects and routes the PubAcks that arrive on them to their round."""

    def __init__(self, read_ack: Callable[[Msg], Outcome]) -> None:
        self._read_ack = read_ack
        self._prefix = ""
        self._sequence = 0
        self._waiting: dict[str, tuple[AckRound, int]] = {}
        self._subscription: Subscription | None = None

    async def open(self, nc: Client) -> None:
        """Subscribe to this connection's reply subjects (nats-py resubscribes on reconnect)."""
        self._waiting.clear()
        self._prefix = nc.new_inbox() + "."
        self._subscription = await nc.subscribe(self._prefix + "*", cb=self._on_reply)

    def reply_subject(self, ack_round: AckRound, index: int) -> str:
        """A fresh reply subject for message `index` of `ack_round`."""
        self._sequence += 1
        token = f"{self._prefix}{self._sequence}"
        self._waiting[token] = (ack_round, index)
        ack_round.expect(token)
        return token

    def withdraw(self, token: str) -> None:
        """Stop waiting for `token` (its message was never sent)."""
        entry = self._waiting.pop(token, None)
        if entry is not None:
            entry[0].settle(entry[1], entry[0].outcomes[entry[1]])

    def forget(self, ack_round: AckRound) -> None:
        """Drop what is still awaited for `ack_round`; a late ack is then ignored."""
        for token in ack_round.tokens:
            self._waiting.pop(token, None)

    async def _on_reply(self, msg: Msg) -> None:
        entry = self._waiting.pop(msg.subject, None)
        if entry is not None:
            ack_round, index = entry
            ack_round.settle(index, self._read_ack(msg))


def no_responders(msg: Msg) -> bool:
    """The server's own status reply: no stream listens on the subject."""
    return bool(msg.headers) and msg.headers.get(STATUS) == NO_RESPONDERS  # type: ignore[union-attr]


def ack_error(msg: Msg) -> tuple[int | None, int | None, str] | None:
    """(code, err_code, description) if the reply is a JetStream error, else None."""
    if b'"error"' not in msg.data:
        return None
    try:
        body: Any = json.loads(msg.data)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    code, err_code = (
        n if isinstance(n, int) else None for n in (error.get("code"), error.get("err_code"))
    )
    return code, err_code, str(error.get("description", ""))
