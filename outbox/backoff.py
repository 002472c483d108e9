"""Backoff for retries (relay publishes, inbox handlers): exponential with jitter."""

from __future__ import annotations

import random


def message_backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before publish attempt `attempt + 1` ("equal jitter").

    Doubles from `base` with every attempt up to `cap`; half of it is random so that
    messages failed together do not come back together.
    """
    ceiling = min(cap, base * 2.0 ** min(max(attempt - 1, 0), 60))
    jitter: float = random.uniform(0, ceiling / 2)
    return ceiling / 2 + jitter
