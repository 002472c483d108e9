"""Message <-> broker headers: the envelope every publisher and consumer shares."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from outboxkit import outbox
from outboxkit.outbox import envelope
from outboxkit.outbox.message import JSON_CONTENT_TYPE, Message


def written(message: Message) -> Message:
    """`message` as the database returns it from a write: with its timestamps."""
    created = datetime(2026, 11, 27, 10, 30, 0, 123456, tzinfo=UTC)
    return replace(message, created_at=created, delay=None)


def test_to_headers_carries_envelope_and_user_headers() -> None:
    message = written(
        outbox.message("order.created", {"id": 1}, key="order-1", headers={"x-tenant": "acme"})
    )
    headers = envelope.to_headers(message)
    assert headers == {
        "x-tenant": "acme",
        envelope.MESSAGE_ID: str(message.message_id),
        envelope.TOPIC: "order.created",
        envelope.KEY: "order-1",
        envelope.CONTENT_TYPE: JSON_CONTENT_TYPE,
        envelope.CREATED_AT: "2026-11-27T10:30:00.123456+00:00",
    }
    assert all(isinstance(v, str) for v in headers.values())


@pytest.mark.parametrize(
    "message",
    [
        outbox.message("order.created", {"id": 1}, key="order-1", headers={"x-a": "1"}),
        outbox.message("blob.stored", b"\x00\x01", headers={"traceparent": "00-ab-cd-01"}),
        outbox.message("no.key", [], content_type="application/vnd.acme+json"),
    ],
    ids=["keyed-json", "bytes", "custom-content-type"],
)
def test_round_trip(message: Message) -> None:
    sent = written(message)
    received = envelope.from_headers(envelope.to_headers(sent), sent.payload)
    assert received == sent


def test_round_trip_keeps_non_utc_offsets() -> None:
    plus_two = timezone(timedelta(hours=2))
    sent = replace(
        outbox.message("t", {}), created_at=datetime(2026, 1, 1, 12, tzinfo=plus_two), delay=None
    )
    received = envelope.from_headers(envelope.to_headers(sent), sent.payload)
    assert received.created_at == sent.created_at
    assert received.created_at is not None and received.created_at.utcoffset() == timedelta(hours=2)


def test_unwritten_message_has_no_created_at_header() -> None:
    headers = envelope.to_headers(outbox.message("t", {}))
    assert envelope.CREATED_AT not in headers
    assert envelope.KEY not in headers
    assert envelope.from_headers(headers, b"{}").created_at is None


def test_topic_may_come_from_the_broker() -> None:
    headers = envelope.to_headers(outbox.message("t", {}))
    del headers[envelope.TOPIC]
    assert envelope.from_headers(headers, b"{}", topic="from-subject").topic == "from-subject"


def test_missing_content_type_means_json() -> None:
    headers = envelope.to_headers(outbox.message("t", {}))
    del headers[envelope.CONTENT_TYPE]
    assert envelope.from_headers(headers, b"{}").content_type == JSON_CONTENT_TYPE


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({envelope.MESSAGE_ID: None}, envelope.MESSAGE_ID),
        ({envelope.MESSAGE_ID: "not-a-uuid"}, envelope.MESSAGE_ID),
        ({envelope.TOPIC: None}, envelope.TOPIC),
        ({envelope.TOPIC: ""}, envelope.TOPIC),
        ({envelope.CREATED_AT: "yesterday"}, envelope.CREATED_AT),
    ],
)
def test_malformed_envelope(change: dict[str, str | None], complaint: str) -> None:
    headers = envelope.to_headers(written(outbox.message("t", {})))
    for name, value in change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    with pytest.raises(outbox.InvalidMessage, match=complaint):
        envelope.from_headers(headers, b"{}")


@pytest.mark.parametrize(
    "name", [envelope.MESSAGE_ID, envelope.TOPIC, envelope.KEY, "content-type", "Content-Type"]
)
def test_user_headers_cannot_shadow_the_envelope(name: str) -> None:
    """Otherwise the envelope would silently overwrite or drop them on the way."""
    with pytest.raises(outbox.InvalidHeaders, match="reserved"):
        outbox.message("t", {}, headers={name: "mine"})
