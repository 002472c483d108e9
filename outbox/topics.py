"""The topic pattern rule, written once: handler patterns, subscriptions and broker filters.

A pattern matches a whole topic; `*` matches any run of characters (dots included, none at
all too) and every other character stands for itself. (The relay's `--semantics` rules also
know `?`, one character, since they become SQL LIKE patterns: see `relay.semantics`.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache


def _source(pattern: str) -> str:
    return ".*".join(re.escape(part) for part in pattern.split("*"))


@cache
def topic_regex(pattern: str) -> re.Pattern[str]:
    """The compiled rule for one pattern (use `fullmatch`)."""
    return re.compile(_source(pattern), re.DOTALL)


def matches_any(patterns: Iterable[str], topic: str) -> bool:
    """Whether any of `patterns` matches all of `topic`."""
    return any(topic_regex(p).fullmatch(topic) for p in patterns)


def any_of(patterns: Iterable[str]) -> re.Pattern[str]:
    """One compiled alternation of `patterns` (use `fullmatch`)."""
    return re.compile("|".join(f"(?:{_source(p)})" for p in patterns), re.DOTALL)
