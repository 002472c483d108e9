"""`Inbox`: handle each message once, in the same transaction as the handler's writes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from uuid import UUID

from psycopg.types.json import Jsonb

from outboxkit.inbox import batch_async, batch_sync
from outboxkit.inbox.failures import NoHandler
from outboxkit.inbox.queries import bound
from outboxkit.inbox.registry import Handler, HandlerRegistry, Registration
from outboxkit.outbox.connections import async_connection, check_transactional, sync_connection
from outboxkit.outbox.errors import ConfigurationError
from outboxkit.outbox.limits import MAX_CONSUMER_BYTES, text_problem
from outboxkit.outbox.message import Message


class MessageRow(Protocol):
    """What the inbox stores of a message: a `Message`, or what a broken envelope kept."""

    @property
    def message_id(self) -> UUID | None: ...
    @property
    def topic(self) -> str: ...
    @property
    def key(self) -> str | None: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


class Inbox:
    """Deduplicates messages for one consumer and runs their handlers.

        ib = Inbox(consumer="billing")

        @ib.handler("order.created")
        def create_invoice(tx, message):        # tx: the connection the dedup row is on
            tx.execute("INSERT INTO invoices …", (message.json()["order_id"],))

        with conn.transaction():
            ib.handle(conn, message)           # True: handled now; False: a duplicate

    `handle` and `ahandle` never commit: the dedup row, the handler's writes and any
    `outbox.write` the handler makes commit together when the caller commits.

    `pipelined=True` lets the consumer runner run the handlers of a batch in psycopg
    pipeline mode (their statements share round trips). Only for handlers that read results
    by fetching them: in pipeline mode `cursor.rowcount` is not known right after
    `execute`, and COPY and server-side cursors are refused.
    """

    def __init__(
        self, consumer: str, *, schema: str = "outboxkit", pipelined: bool = False
    ) -> None:
        if not isinstance(consumer, str) or not consumer:
            raise ConfigurationError("consumer must be a non-empty str")
        # Bytes, not characters: the name is in the inbox's primary key (btree entries are
        # limited in bytes; migration 0004 CHECKs the same limit).
        if problem := text_problem(consumer, MAX_CONSUMER_BYTES):
            raise ConfigurationError(f"consumer name {consumer[:64]!r} {problem}")
        self.consumer = consumer
        self.schema = schema
        # The runner may run these handlers in psycopg pipeline mode (`inbox.optimistic`).
        self.pipelined = pipelined
        self.registry = HandlerRegistry()
        self.queries = bound(schema)

    def handler(self, pattern: str) -> Callable[[Handler], Handler]:
        """Decorator: register a sync or async `handler(tx, message)` for a topic pattern."""

        def register(function: Handler) -> Handler:
            self.registry.add(pattern, function)
            return function

        return register

    def handle(self, tx: Any, message: Message) -> bool:
        """Record `message` in `tx` and run its (sync) handler unless it was seen before."""
        registration = self.registration(message)
        if registration.is_async:
            raise ConfigurationError(
                f"the handler for {message.topic!r} is async: use `await inbox.ahandle(...)`"
            )
        conn = sync_connection(tx)
        check_transactional(conn, allow_autocommit=False)
        return batch_sync.handle_one(self, tx, conn, registration, message)

    async def ahandle(self, tx: Any, message: Message) -> bool:
        """Async `handle` on an async connection or session, for async handlers."""
        registration = self.registration(message)
        conn = await async_connection(tx)
        check_transactional(conn, allow_autocommit=False)
        if not registration.is_async:
            raise ConfigurationError(
                f"the handler for {message.topic!r} is sync: use `inbox.handle(...)` on a "
                "sync connection"
            )
        return await batch_async.handle_one(self, tx, conn, registration, message)

    @property
    def is_async(self) -> bool:
        """True if all handlers are async, False if all are sync (the runner needs one kind)."""
        kinds = {r.is_async for r in self.registry.registrations()}
        if len(kinds) > 1:
            raise ConfigurationError(
                f"consumer {self.consumer!r} mixes sync and async handlers; the runner needs "
                "one kind (call handle/ahandle yourself to mix them)"
            )
        return kinds == {True}

    def handler_for(self, topic: str) -> Registration | None:
        """The registration that handles `topic`, if any."""
        return self.registry.find(topic)

    def registration(self, message: Message) -> Registration:
        """The registration that handles `message`; raises `NoHandler` if there is none."""
        registration = self.registry.find(message.topic)
        if registration is None:
            raise NoHandler(
                f"consumer {self.consumer!r} has no handler for topic {message.topic!r}"
            )
        return registration

    def record_params(self, message: Message) -> dict[str, Any]:
        """Parameters of the `record` query: one message's dedup row."""
        return {
            "consumer": self.consumer,
            "message_id": message.message_id,
            "topic": message.topic,
            "key": message.key,
        }

    def record_many_params(self, rows: Sequence[MessageRow]) -> dict[str, Any]:
        """Parameters of the batched `record_many` query."""
        return {
            "consumer": self.consumer,
            "message_ids": [m.message_id for m in rows],
            "topics": [m.topic for m in rows],
            "keys": [m.key for m in rows],
        }

    def lock_params(self, messages: list[Message]) -> dict[str, Any]:
        """Parameters of the `lock_messages` query: a batch's locks, taken in one order."""
        return {
            "lock_space": f"outboxkit-inbox:{self.schema}",
            "consumer": self.consumer,
            "message_ids": [m.message_id for m in messages],
        }

    def message_params(self, rows: Sequence[MessageRow]) -> dict[str, Any]:
        """Parameters that carry whole messages (`store`, `bury`, `bury_malformed`): an
        array a field, an entry a message (or what a broken envelope kept of one)."""
        return {
            **self.record_many_params(rows),
            "payloads": [m.payload for m in rows],
            "content_types": [m.content_type for m in rows],
            "headers": [Jsonb(dict(m.headers)) for m in rows],
        }

    def bury_params(
        self,
        stored: Sequence[tuple[int, str]] = (),
        delivered: Sequence[tuple[Message, int, str]] = (),
    ) -> dict[str, Any]:
        """Parameters of the `bury` query: stored rows as (seq, error), or deliveries as
        (message, attempts, error)."""
        return {
            **self.message_params([message for message, _, _ in delivered]),
            "attempts": [attempts for _, attempts, _ in delivered],
            "errors": [error for _, _, error in delivered],
            "seqs": [seq for seq, _ in stored],
            "seq_errors": [error for _, error in stored],
        }
