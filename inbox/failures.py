"""What the inbox stores and logs about a handler's failure: one clean, bounded line.

A handler's exception is outside text: it can hold a NUL byte (PostgreSQL's text refuses
it: the settle statement would fail), a lone surrogate (not even encodable) or megabytes.
Every `last_error` the inbox writes, for a retry or a dead letter, in either mode, comes
from `error_text`.
"""

from __future__ import annotations

from outboxkit.outbox.errors import OutboxkitError
from outboxkit.outbox.limits import clean_text

_TYPE_NAME_BYTES = 200


class NoHandler(OutboxkitError):
    """No handler is registered for the message's topic."""


def error_text(exc: BaseException) -> str:
    """`Type: message` of `exc`, escaped and bounded for `last_error` and log lines."""
    name = clean_text(type(exc).__name__, _TYPE_NAME_BYTES)
    return clean_text(f"{name}: {clean_text(exc)}")


# `last_error` of a dead letter made from a delivery whose envelope was broken.
MALFORMED_PREFIX = "malformed envelope: "


def is_malformed(attempts: int, last_error: str) -> bool:
    """Whether an inbox dead letter came from a broken envelope (no handler ever ran)."""
    return attempts == 0 and last_error.startswith(MALFORMED_PREFIX)
