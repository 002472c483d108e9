"""Retention: how long dedup keys (and payloads) are kept.

The retention window is the dedup window: a redelivery of a message whose row was pruned is
handled again. Keep the window longer than the longest redelivery your brokers can produce.
"""

from __future__ import annotations

import re
from typing import Any

from outboxkit.inbox.queries import bound
from outboxkit.outbox.db import aconnect
from outboxkit.outbox.errors import ConfigurationError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> float:
    """Seconds in `7d`, `12h`, `30m`, `45s` or a plain number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigurationError(f"invalid duration {text!r}: use e.g. 7d, 12h, 30m, 45s")
    return float(match[1]) * _UNITS[match[2]]


async def prune(
    dsn: str,
    schema: str = "outboxkit",
    *,
    older_than: float,
    consumer: str | None = None,
    payloads_older_than: float | None = None,
) -> int:
    """Delete processed inbox rows older than `older_than` seconds; returns how many.

    `payloads_older_than` (shorter) first drops the payloads of processed durable rows.
    """
    if older_than <= 0:
        raise ConfigurationError("the retention window must be positive")
    queries = bound(schema)
    async with await aconnect(dsn, autocommit=True) as conn:
        params: dict[str, Any] = {"consumer": consumer, "older_than": older_than}
        if payloads_older_than is not None:
            await conn.execute(
                queries["drop_payloads"], params | {"older_than": payloads_older_than}
            )
        cursor = await conn.execute(queries["prune"], params)
        return cursor.rowcount
