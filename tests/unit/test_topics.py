"""The one topic pattern rule (outbox/topics.py)."""

from __future__ import annotations

import pytest

from outboxkit.outbox.topics import any_of, matches_any, topic_regex


@pytest.mark.parametrize(
    ("pattern", "topic", "matched"),
    [
        ("orders.created", "orders.created", True),
        ("orders.*", "orders.created", True),
        ("orders.*", "orders.", True),  # `*` may match nothing
        ("orders.*", "orders", False),
        ("*", "anything.at.all", True),
        ("*.created", "orders.eu.created", True),  # dots included
        ("orders.?", "orders.x", False),  # `?` is literal here (only --semantics knows it)
        ("a.b", "aXb", False),  # `.` is literal
        ("[x]", "[x]", True),
    ],
)
def test_the_rule(pattern: str, topic: str, matched: bool) -> None:
    assert bool(topic_regex(pattern).fullmatch(topic)) is matched
    assert matches_any([pattern], topic) is matched
    assert bool(any_of([pattern, "never-this"]).fullmatch(topic)) is matched


def test_no_pattern_matches_nothing() -> None:
    assert not matches_any([], "t")
