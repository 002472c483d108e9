"""Wake the relay when a message is written: LISTEN on the schema's channel.

NOTIFY is only a hint (its payload names the partitions written to, for anyone listening);
a lost notification costs at most one poll interval. The listener has its own connection and
reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg
from psycopg import sql

from outboxkit.outbox.backoff import message_backoff

log = logging.getLogger("outboxkit.relay")


class Wakeup:
    """`wait(seconds)` returns early when a notification arrives."""

    def __init__(self, dsn: str, channel: str, application_name: str | None = None) -> None:
        self.dsn = dsn
        self.channel = channel
        # Names the LISTEN connection in pg_stat_activity (default: libpq's, usually empty).
        self.application_name = application_name
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.listening = False

    def start(self) -> None:
        """Start listening in the background."""
        self._task = asyncio.create_task(self._listen_forever(), name="outboxkit-listen")

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def poke(self) -> None:
        """Wake the waiter now (shutdown, tests)."""
        self._event.set()

    async def wait(self, seconds: float) -> None:
        """Sleep until a notification, a poke, or `seconds` pass."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)
        self._event.clear()

    def _named(self) -> dict[str, Any]:
        return {"application_name": self.application_name} if self.application_name else {}

    async def _listen_forever(self) -> None:
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=10, **self._named()
                ) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self.listening = True
                    failures = 0
                    self._event.set()  # we may have missed some while disconnected
                    async for _notify in conn.notifies():
                        self._event.set()
            except psycopg.Error as exc:
                self.listening = False
                failures += 1
                log.warning("listener connection lost (%s); polling meanwhile", type(exc).__name__)
                await asyncio.sleep(message_backoff(failures, 0.2, 5.0))
