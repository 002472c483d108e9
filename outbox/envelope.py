"""Message <-> broker headers: every publisher and consumer maps the envelope the same way."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from uuid import UUID

from outbox.errors import InvalidMessage
from outbox.message import JSON_CONTENT_TYPE, Message

MESSAGE_ID = "outboxkit-message-id"
TOPIC = "outboxkit-topic"
KEY = "outboxkit-key"
CONTENT_TYPE = "content-type"
CREATED_AT = "outboxkit-created-at"
RESERVED = frozenset({MESSAGE_ID, TOPIC, KEY, CONTENT_TYPE, CREATED_AT})
# User headers may not start with this: brokers' field layouts use it too.
RESERVED_PREFIX = "outboxkit-"


def to_headers(message: Message) -> dict[str, str]:
    """The user's headers plus the envelope fields, as a flat str -> str map."""
    headers = dict(message.headers)
    headers[MESSAGE_ID] = str(message.message_id)
    headers[TOPIC] = message.topic
    headers[CONTENT_TYPE] = message.content_type
    if message.key is not None:
        headers[KEY] = message.key
    if message.created_at is not None:
        headers[CREATED_AT] = message.created_at.isoformat()
    return headers


def from_headers(
    headers: Mapping[str, str], payload: bytes, *, topic: str | None = None
) -> Message:
    """Rebuild the message a publisher sent; `InvalidMessage` if the envelope is broken."""
    try:
        message_id = UUID(headers[MESSAGE_ID])
    except (KeyError, ValueError) as exc:
        raise InvalidMessage(f"missing or malformed {MESSAGE_ID} header") from exc
    found_topic = headers.get(TOPIC, topic)
    if not found_topic:
        raise InvalidMessage(f"missing {TOPIC} header")
    created = headers.get(CREATED_AT)
    try:
        created_at = datetime.fromisoformat(created) if created else None
    except ValueError as exc:
        raise InvalidMessage(f"malformed {CREATED_AT} header") from exc
    return Message(
        message_id=message_id,
        topic=found_topic,
        payload=payload,
        key=headers.get(KEY),
        headers={k: v for k, v in headers.items() if k not in RESERVED},
        content_type=headers.get(CONTENT_TYPE, JSON_CONTENT_TYPE),
        created_at=created_at,
    )
