"""`from_headers` against hostile envelopes: refused with what can be kept, never a crash."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outboxkit import outbox
from outboxkit.outbox import envelope
from outboxkit.outbox.envelope import (
    Malformed,
    MalformedEnvelope,
    from_headers,
    native_text,
    salvage,
)
from outboxkit.outbox.errors import InvalidMessage
from outboxkit.outbox.limits import MAX_HEADERS
from outboxkit.outbox.message import Message
from tests.support import hostile
from tests.support.malformed import (
    Bad,
    as_text,
    corpus,
    malformed_problem,
    message_problem,
)

PARSER = "envelope from broker headers (outbox.envelope.from_headers)"


def sent() -> Message:
    return replace(
        outbox.message("order.created", {"id": 1}, key="order-1", headers={"x-tenant": "acme"}),
        created_at=datetime(2026, 11, 27, 10, 30, tzinfo=UTC),
        delay=None,
    )


@pytest.mark.hostile
@pytest.mark.parametrize("bad", corpus(), ids=lambda b: b.name)
def test_the_corpus_is_refused_with_what_can_be_kept(bad: Bad) -> None:
    with hostile.attempt(PARSER, refused=(InvalidMessage,)) as outcome:
        from_headers(as_text(bad.fields), bad.payload)
    assert isinstance(outcome.refused, MalformedEnvelope), "accepted a malformed envelope"
    kept = outcome.refused.malformed
    assert malformed_problem(kept) is None, malformed_problem(kept)
    assert kept.message_id == bad.message_id
    assert kept.payload == bad.payload
    assert "\x00" not in str(outcome.refused)  # the reason quotes hostile text escaped


def test_what_is_kept_is_cleaned() -> None:
    message_id = uuid.uuid4()
    headers = {
        envelope.MESSAGE_ID: str(message_id),
        envelope.TOPIC: "orders.\x00created",
        envelope.KEY: "k\udcff",
        "x-a": "v\x00",
        envelope.CONTENT_TYPE: "text/plain",
    }
    with pytest.raises(MalformedEnvelope) as refused:
        from_headers(headers, b"raw \xff")
    kept = refused.value.malformed
    assert kept == Malformed(
        reason=kept.reason,
        payload=b"raw \xff",
        message_id=message_id,
        topic="orders.\\x00created",
        key="k\\udcff",
        content_type="text/plain",
        headers={"x-a": "v\\x00"},
    )
    assert "outboxkit-topic" in kept.reason and "'\\x00'" in kept.reason


def test_a_broker_topic_stands_in_for_a_missing_header() -> None:
    headers = envelope.to_headers(sent())
    del headers[envelope.TOPIC]
    headers[envelope.KEY] = "k" * 5000
    with pytest.raises(MalformedEnvelope) as refused:
        from_headers(headers, b"{}", topic="from.subject")
    assert refused.value.malformed.topic == "from.subject"
    assert refused.value.malformed.key is not None
    assert "1024" in str(refused.value)


def test_the_limits_are_inclusive() -> None:
    message = replace(
        sent(),
        key="k" * 1024,
        topic="t" * 255,
        headers={f"h{i}": "v" for i in range(MAX_HEADERS)},
    )
    assert from_headers(envelope.to_headers(message), message.payload) == message


def test_a_huge_header_map_is_refused_before_it_is_read() -> None:
    headers: dict[str, str] = envelope.to_headers(sent())
    headers |= {f"h{i}": "\x00" for i in range(100_000)}
    with pytest.raises(MalformedEnvelope, match="100006 headers") as refused:
        from_headers(headers, b"")
    assert len(refused.value.malformed.headers) == MAX_HEADERS


@pytest.mark.parametrize(
    ("value", "text"),
    [("abc", "abc"), (b"abc", "abc"), (b"a\xffb", "a\udcffb"), (3, "3"), (None, "None")],
)
def test_native_text(value: object, text: str) -> None:
    assert native_text(value) == text


def test_salvage_survives_what_is_not_a_map() -> None:
    kept = salvage(object(), b"x", "why")  # type: ignore[arg-type]
    assert kept == Malformed("why", b"x")


def test_a_delivery_error_without_an_envelope_keeps_the_payload() -> None:
    kept = Malformed.of(InvalidMessage("not an envelope \x00"), b"raw", "(stream s, entry 1)")
    assert kept == Malformed("not an envelope \\x00 (stream s, entry 1)", b"raw")
    assert str(kept) == kept.reason


# -- fuzzing -------------------------------------------------------------------------------

# Any code point, lone surrogates and control characters included, and sometimes long runs.
_char = st.one_of(
    st.characters(),
    st.characters(categories=["Cs"]),
    st.sampled_from(["\x00", "\n", "\r", "\t", "\x7f", "\x85", " ", "\u2028", "é", "😀"]),
)
_text = st.one_of(
    st.text(_char, max_size=40),
    st.builds(lambda c, n: c * n, _char, st.integers(0, 9000)),
)
_field_value = st.one_of(
    _text,
    st.just(str(uuid.uuid4())),
    st.just("2026-11-27T10:30:00+00:00"),
    st.just("2026-11-27T10:30:00"),
    st.just("orders.created"),
)
_names = st.sampled_from([*envelope.RESERVED, "x-a", "X-A", "Content-Type", "outboxkit-x", ""])


def _valid_base() -> dict[str, str]:
    return envelope.to_headers(sent())


@pytest.mark.hostile
@hostile.fuzz
@given(
    changes=st.dictionaries(st.one_of(_names, _text), st.one_of(_field_value, st.none())),
    topic=st.one_of(st.none(), _text),
    payload=st.binary(max_size=64),
    extra=st.integers(0, 80),
)
def test_from_headers_accepts_only_well_formed_envelopes(
    changes: dict[str, str | None], topic: str | None, payload: bytes, extra: int
) -> None:
    headers: dict[str, Any] = _valid_base() | {f"x-n{i}": "v" for i in range(extra)}
    for name, value in changes.items():
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    with hostile.attempt(PARSER, refused=(InvalidMessage,)) as outcome:
        message = from_headers(headers, payload, topic=topic)
    if outcome.accepted:
        assert message_problem(message) is None, message_problem(message)
        assert message.payload == payload
        assert envelope.from_headers(envelope.to_headers(message), payload) == message
    else:
        assert isinstance(outcome.refused, MalformedEnvelope)
        kept = outcome.refused.malformed
        assert malformed_problem(kept) is None, malformed_problem(kept)
        assert kept.payload == payload


@pytest.mark.hostile
@hostile.fuzz
@given(headers=st.dictionaries(st.one_of(_names, _text), _field_value, max_size=12))
def test_from_headers_on_arbitrary_maps(headers: dict[str, str]) -> None:
    with hostile.attempt(PARSER, refused=(InvalidMessage,)) as outcome:
        message = from_headers(headers, b"p")
    if outcome.accepted:
        assert message_problem(message) is None, message_problem(message)
    else:
        assert isinstance(outcome.refused, MalformedEnvelope)
        assert malformed_problem(outcome.refused.malformed) is None
