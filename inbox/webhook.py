"""The webhook receiver as an ASGI app: each POST runs the inbox transaction.

See `outboxkit.brokers.http.consumer` for the requests it accepts and the answers it gives.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus

import psycopg

from outboxkit.brokers.http.consumer import (
    Admitted,
    Answer,
    Endpoint,
    Receive,
    Scope,
    Send,
    _answer,
    _read_body,
    parse_url,
)
from outboxkit.inbox.failures import error_text
from outboxkit.inbox.inbox import Inbox
from outboxkit.inbox.settings import ConsumerSettings
from outboxkit.inbox.slots import Slot
from outboxkit.migrations.current import require_current
from outboxkit.outbox.db import aconnect
from outboxkit.outbox.errors import DatabaseUnavailable, SchemaNotMigrated
from outboxkit.outbox.message import Message

_log = logging.getLogger(__name__)


class WebhookApp:
    """An ASGI app running each webhook through an `Inbox` (see the module docstring)."""

    def __init__(self, inbox: Inbox, settings: ConsumerSettings) -> None:
        inbox.is_async  # noqa: B018 - refuse mixed sync/async handlers up front
        self.inbox = inbox
        self.settings = settings
        self.options = parse_url(settings.broker_url)
        self.endpoint = Endpoint(self.options, self.options.secrets())
        self._idle: asyncio.Queue[Slot] | None = None
        self._slots: list[Slot] = []
        self._schema_current = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        admitted = self.endpoint.admit(scope, match_path=False)
        if isinstance(admitted, Answer):
            await admitted.send(send)  # refused on its head: the body is never read
            return
        body = await _read_body(receive, self.options.max_bytes)
        if body is None:
            return  # the client left, or the server refused the body and answered
        answer = body if isinstance(body, Answer) else await self.answer(scope, body, admitted)
        await answer.send(send)

    async def answer(self, scope: Scope, body: bytes, admitted: Admitted | None = None) -> Answer:
        """Check, dedup and handle one request; the answer is given after the commit."""
        if admitted is None:
            checked = self.endpoint.check(scope, body, match_path=False)
        else:
            checked = self.endpoint.accept(scope, admitted, body)
        if isinstance(checked, Answer):
            return checked
        message, attempt = checked.message, checked.attempt
        if self.inbox.handler_for(message.topic) is None:
            return _answer(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "no handler",
                error=f"consumer {self.inbox.consumer!r} has no handler for topic "
                f"{message.topic!r}",
            )
        slot = await self._take()
        try:
            await self._require_current()
            return await self._handle(slot, message, attempt)
        except SchemaNotMigrated as exc:
            _log.error("webhook refused: %s", exc)
            return _answer(HTTPStatus.SERVICE_UNAVAILABLE, "schema not migrated", retry_after=30)
        except (psycopg.Error, DatabaseUnavailable) as exc:
            # Lost or refused, the sender retries later: never an exception out of the app.
            # Decided from the connection's state, not the class (a statement can fail with an
            # OperationalError on a perfectly good connection).
            lost = isinstance(exc, DatabaseUnavailable) or slot.connection_lost()
            _log.warning(
                "%s (%s); asking the sender to retry",
                "database unavailable" if lost else "a statement failed",
                error_text(exc),
            )
            await slot.reset()
            return _answer(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "database unavailable" if lost else "database error",
                retry_after=1,
            )
        finally:
            self._give(slot)

    async def _require_current(self) -> None:
        # Once, on the first authenticated request: a mounted app gets no lifespan events
        # (Starlette sends them to the outer app only), so start-up cannot be relied on.
        if self._schema_current:
            return
        async with await aconnect(self.settings.dsn, autocommit=True) as conn:
            await require_current(conn, self.inbox.schema)
        self._schema_current = True

    async def _handle(self, slot: Slot, message: Message, attempt: int) -> Answer:
        [result] = await slot.handle_many([message], cautious=attempt > 1)
        ident = str(message.message_id)
        if not isinstance(result, Exception):
            return _answer(HTTPStatus.OK, "handled" if result else "duplicate", message_id=ident)
        error = error_text(result)
        if attempt >= self.settings.max_attempts:
            await slot.bury(message, attempt, error)
            _log.error("message %s dead-lettered: %s", ident, error)
            return _answer(HTTPStatus.OK, "dead-lettered", message_id=ident)
        _log.warning("message %s failed (attempt %d): %s", ident, attempt, error)
        # Only the exception's type: its text may hold data the sender should not see.
        return _answer(
            HTTPStatus.INTERNAL_SERVER_ERROR,
            "failed",
            message_id=ident,
            error=type(result).__name__,
        )

    async def _take(self) -> Slot:
        if self._idle is None:
            self._idle = asyncio.Queue()
        if self._idle.empty() and len(self._slots) < self.settings.concurrency:
            slot = Slot(self.inbox, self.settings)
            self._slots.append(slot)
            return slot
        return await self._idle.get()

    def _give(self, slot: Slot) -> None:
        assert self._idle is not None
        self._idle.put_nowait(slot)

    async def aclose(self) -> None:
        """Close the database connections (they reopen on the next request)."""
        slots, self._slots, self._idle = self._slots, [], None
        for slot in slots:
            await slot.reset()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def webhook_app(inbox: Inbox, settings: ConsumerSettings) -> WebhookApp:
    """An ASGI app receiving webhooks into `inbox`, answering only after the commit."""
    return WebhookApp(inbox, settings)


__all__ = ["WebhookApp", "webhook_app"]
