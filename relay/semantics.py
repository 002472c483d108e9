"""Delivery semantics per topic pattern.

- `at_least_once` (default): published until the broker acks; a crash republishes.
- `at_most_once`: deleted when claimed, published once, never retried (telemetry).
- `exactly_once`: at least once, plus the broker's own dedup where it has one (the message
  id travels as the broker's dedup id); the consumer's inbox completes it.

Patterns are globs on the topic where `*` matches any run of characters and `?` one
character: `telemetry.*`, `metrics.cpu`, `*`. At-most-once rules are matched first (the relay
claims those topics with a separate statement); the other rules in order; the default is at
least once.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache

from outboxkit.outbox.db import like_pattern
from outboxkit.outbox.errors import ConfigurationError


class Semantics(enum.StrEnum):
    """How hard the relay tries to deliver a topic."""

    AT_MOST_ONCE = "at_most_once"
    AT_LEAST_ONCE = "at_least_once"
    EXACTLY_ONCE = "exactly_once"


@dataclass(frozen=True)
class TopicSemantics:
    """Ordered (pattern, semantics) rules; the first match wins, else at least once."""

    rules: tuple[tuple[str, Semantics], ...] = field(default=())

    @classmethod
    def parse(cls, spec: str | Mapping[str, str]) -> TopicSemantics:
        """From `"telemetry.*=at_most_once,billing.*=exactly_once"` or a mapping."""
        items = (
            spec.items()
            if isinstance(spec, Mapping)
            else (part.split("=", 1) for part in spec.split(",") if part.strip())
        )
        rules = []
        for item in items:
            if len(item) != 2:
                raise ConfigurationError(f"semantics rule {item!r}: expected PATTERN=SEMANTICS")
            pattern, name = (value.strip() for value in item)
            try:
                rules.append((pattern, Semantics(name)))
            except ValueError:
                choices = ", ".join(s.value for s in Semantics)
                raise ConfigurationError(
                    f"unknown semantics {name!r} for {pattern!r}; choose {choices}"
                ) from None
        return cls(tuple(rules))

    def for_topic(self, topic: str) -> Semantics:
        """The semantics of `topic`: at-most-once rules first, then the others in order."""
        ordered = sorted(self.rules, key=lambda rule: rule[1] is not Semantics.AT_MOST_ONCE)
        for pattern, semantics in ordered:
            if _glob(pattern).fullmatch(topic):
                return semantics
        return Semantics.AT_LEAST_ONCE

    def at_most_once_like_patterns(self) -> list[str]:
        """SQL LIKE patterns matching exactly the at-most-once topics (for the claims)."""
        return [
            like_pattern(pattern)
            for pattern, semantics in self.rules
            if semantics is Semantics.AT_MOST_ONCE
        ]


@cache
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), re.DOTALL)
