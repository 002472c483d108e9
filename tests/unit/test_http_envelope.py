"""Webhook envelopes and URLs (brokers.http.options): decoding refuses what the inbox cannot
store, and a topic always stays inside its path segment."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outboxkit import outbox
from outboxkit.brokers.http import options as http_url
from outboxkit.outbox.errors import InvalidMessage
from outboxkit.outbox.limits import (
    MAX_HEADER_NAME_BYTES,
    MAX_KEY_BYTES,
    MAX_TOPIC_BYTES,
    text_problem,
)
from tests.support import hostile


def good() -> dict[str, str]:
    return http_url.envelope_headers(outbox.message("orders.created", {"n": 1}, key="k"))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("outboxkit-key", "a%00b"),
        ("outboxkit-key", "a%0Ab"),
        ("outboxkit-key", "%C2%85"),  # NEL, a C1 control
        ("outboxkit-key", "k" * (MAX_KEY_BYTES + 1)),
        ("outboxkit-key", "%ED%A0%80"),  # a lone surrogate, as UTF-8
        ("outboxkit-topic", "a%00"),
        ("outboxkit-topic", "t" * (MAX_TOPIC_BYTES + 1)),
        ("outboxkit-header-x", "%00"),
        ("outboxkit-header-%00", "v"),
        ("outboxkit-header-" + "n" * (MAX_HEADER_NAME_BYTES + 1), "v"),
        ("content-type", "text/plain\x85"),
    ],
)
def test_fields_the_inbox_cannot_store_are_invalid(name: str, value: str) -> None:
    headers = good() | {name: value}
    with pytest.raises(InvalidMessage):
        http_url.message_from_headers(headers.items(), b"{}")


def test_user_header_values_may_hold_newlines_and_too_many_headers_are_refused() -> None:
    message = http_url.message_from_headers(
        [*good().items(), ("outboxkit-header-x", "a%0Ab")], b"{}"
    )
    assert message.headers["x"] == "a\nb"
    many = [(f"outboxkit-header-h{n}", "v") for n in range(100)]
    with pytest.raises(InvalidMessage, match="user headers"):
        http_url.message_from_headers([*good().items(), *many], b"{}")


def test_a_path_topic_is_checked_too() -> None:
    headers = good() | {"outboxkit-topic": "a%00"}
    with pytest.raises(InvalidMessage):
        http_url.message_from_headers(
            [(k, v) for k, v in headers.items() if k != "outboxkit-topic"], b"{}", topic="a\x00"
        )


@pytest.mark.parametrize(
    ("topic", "path"),
    [
        ("..", "/events/%2E%2E/in"),
        (".", "/events/%2E/in"),
        ("...", "/events/.../in"),
        ("a/../b", "/events/a%2F..%2Fb/in"),
        ("order.created", "/events/order.created/in"),
    ],
)
def test_a_topic_stays_inside_its_path_segment(topic: str, path: str) -> None:
    options = http_url.parse_url("http://h/events/{topic}/in")
    assert options.url_for(topic) == f"http://h{path}"
    assert options.match_path(path) == (True, topic)


_VALUE = st.text(max_size=30) | st.sampled_from(["%00", "%ff", "%ED%A0%80", "a%0Ab", "%C2%85", "%"])
_NAME = st.sampled_from(
    [
        "outboxkit-key",
        "outboxkit-topic",
        "outboxkit-message-id",
        "outboxkit-created-at",
        "content-type",
    ]
) | st.text(max_size=10).map(lambda n: "outboxkit-header-" + n)


@pytest.mark.hostile
@hostile.fuzz
@given(st.lists(st.tuples(_NAME, _VALUE), max_size=6), st.none() | st.text(max_size=20))
def test_fuzzed_envelopes_decode_to_storable_messages_or_are_invalid(
    extra: list[tuple[str, str]], path_topic: str | None
) -> None:
    base = [(k, v) for k, v in good().items() if k not in {n for n, _ in extra}]
    with hostile.attempt(
        "webhook envelope decoding (http_url.message_from_headers)", refused=(InvalidMessage,)
    ) as outcome:
        message = http_url.message_from_headers([*base, *extra], b"{}", topic=path_topic)
    if outcome.accepted:
        assert text_problem(message.topic, MAX_TOPIC_BYTES) is None
        assert message.key is None or text_problem(message.key, MAX_KEY_BYTES) is None
        for name, value in message.headers.items():
            assert text_problem(name, MAX_HEADER_NAME_BYTES) is None
            assert "\x00" not in value
            value.encode("utf-8")  # no lone surrogate
