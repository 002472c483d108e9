"""Handlers by topic pattern."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from outboxkit.outbox.message import Message
from outboxkit.outbox.topics import topic_regex

SyncHandler = Callable[[Any, Message], None]
AsyncHandler = Callable[[Any, Message], Awaitable[None]]
Handler = SyncHandler | AsyncHandler


@dataclass(frozen=True)
class Registration:
    """A handler and the topic pattern it was registered for."""

    pattern: str
    handler: Handler
    is_async: bool


class HandlerRegistry:
    """Maps a topic to its handler: exact topics first, then patterns in registration order.

    Patterns use `*` for any run of characters (`orders.*`, `*.created`, `*`).
    """

    def __init__(self) -> None:
        self._exact: dict[str, Registration] = {}
        self._patterns: list[Registration] = []
        self._found: dict[str, Registration | None] = {}  # topic -> match, remembered

    def add(self, pattern: str, handler: Handler) -> None:
        """Register `handler` for `pattern`; a second handler for the same pattern is an error."""
        if not pattern:
            raise ValueError("a handler needs a non-empty topic pattern")
        registration = Registration(pattern, handler, inspect.iscoroutinefunction(handler))
        self._found.clear()
        if "*" in pattern:
            if any(r.pattern == pattern for r in self._patterns):
                raise ValueError(f"a handler for {pattern!r} is already registered")
            self._patterns.append(registration)
        else:
            if pattern in self._exact:
                raise ValueError(f"a handler for {pattern!r} is already registered")
            self._exact[pattern] = registration

    def find(self, topic: str) -> Registration | None:
        """The registration handling `topic`, or None."""
        try:
            return self._found[topic]
        except KeyError:
            pass
        found = self._exact.get(topic) or next(
            (r for r in self._patterns if topic_regex(r.pattern).fullmatch(topic)), None
        )
        if len(self._found) < _REMEMBERED_TOPICS:
            self._found[topic] = found
        return found

    def registrations(self) -> list[Registration]:
        """Every registration."""
        return [*self._exact.values(), *self._patterns]

    def patterns(self) -> list[str]:
        """Every registered pattern (for broker subscriptions)."""
        return [*self._exact, *(r.pattern for r in self._patterns)]


_REMEMBERED_TOPICS = 10_000
