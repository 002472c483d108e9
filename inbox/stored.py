"""Durable mode: stored messages, per key in order, with retries and dead letters.

One transaction per batch (`inbox.batch_async.StoredRows`): claim the heads of their keys
(SKIP LOCKED, so workers share), run the handlers, then mark the batch processed, failed
(backoff) or dead in the same transaction. This module holds what that needs besides the
statements: the claimed rows, what became of them, and the settle statements' parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from outboxkit.inbox.failures import NoHandler, error_text
from outboxkit.inbox.optimistic import HandlerFailed
from outboxkit.inbox.settings import ConsumerSettings
from outboxkit.outbox.backoff import message_backoff
from outboxkit.outbox.envelope import RESERVED
from outboxkit.outbox.message import Message

if TYPE_CHECKING:
    from outboxkit.inbox.inbox import Inbox

Outcome = bool | Exception
"""What became of one message of a batch: True (handled), False (a duplicate) or the
exception it failed with (nothing of it remains)."""


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    attempts: int
    message: Message


@dataclass
class BatchResult:
    """What happened to a claimed batch, as parameters for the settle queries."""

    done: list[int] = field(default_factory=list)
    retry: list[tuple[int, str, float]] = field(default_factory=list)
    dead: list[tuple[int, str]] = field(default_factory=list)

    def failed(self, stored: StoredMessage, exc: BaseException, settings: ConsumerSettings) -> None:
        error = error_text(exc)
        attempt = stored.attempts + 1
        if isinstance(exc, NoHandler) or attempt >= settings.max_attempts:
            self.dead.append((stored.seq, error))
        else:
            delay = message_backoff(attempt, settings.backoff_base, settings.backoff_max)
            self.retry.append((stored.seq, error, delay))

    @classmethod
    def of(
        cls, batch: list[StoredMessage], outcomes: list[Outcome], settings: ConsumerSettings
    ) -> BatchResult:
        """What the handlers' `outcomes` (one per claimed message) make of the batch."""
        result = cls()
        for stored, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                result.failed(stored, outcome, settings)
            else:
                result.done.append(stored.seq)
        return result

    @property
    def count(self) -> int:
        return len(self.done) + len(self.retry) + len(self.dead)


def to_stored(row: Sequence[Any]) -> StoredMessage:
    """A claim row as a `StoredMessage`."""
    seq, message_id, topic, key, payload, content_type, headers, received_at, attempts = row
    message = Message(
        message_id=message_id,
        topic=topic,
        payload=payload or b"",
        key=key,
        headers={k: v for k, v in (headers or {}).items() if k not in RESERVED},
        content_type=content_type or "application/json",
        created_at=received_at,
    )
    return StoredMessage(seq, attempts, message)


def settle_params(
    inbox: Inbox, result: BatchResult, keep_payload: bool
) -> list[tuple[str, dict[str, Any]]]:
    """The statements (query name, parameters) that record a batch's `result`."""
    consumer = inbox.consumer
    statements: list[tuple[str, dict[str, Any]]] = []
    if result.done:
        statements.append(
            (
                "mark_processed",
                {"consumer": consumer, "seqs": result.done, "keep_payload": keep_payload},
            )
        )
    if result.retry:
        seqs, errors, delays = zip(*result.retry, strict=True)
        statements.append(
            (
                "mark_failed",
                {
                    "consumer": consumer,
                    "seqs": list(seqs),
                    "errors": list(errors),
                    "delays": list(delays),
                },
            )
        )
    if result.dead:
        statements.append(("bury", inbox.bury_params(stored=result.dead)))
    return statements


def claim_params(inbox: Inbox, settings: ConsumerSettings) -> dict[str, Any]:
    """Parameters of the `claim` query: a batch of this consumer's stored messages."""
    return {"consumer": inbox.consumer, "limit": settings.batch_size}


def first_tries(batch: list[StoredMessage]) -> list[bool]:
    """The optimistic pass runs every claimed message; one that failed before (it has
    attempts) sends the batch to the careful pass at once, instead of failing it twice."""
    if any(stored.attempts for stored in batch):
        raise HandlerFailed
    return [True] * len(batch)
