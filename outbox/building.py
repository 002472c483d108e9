"""Validate and encode a new message before anything touches the database."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from outbox.envelope import RESERVED, RESERVED_PREFIX
from outbox.errors import (
    InvalidHeaders,
    InvalidMessage,
    InvalidTopic,
    PayloadNotSerializable,
    PayloadTooLarge,
)
from outbox.ids import uuid7
from outbox.message import BYTES_CONTENT_TYPE, JSON_CONTENT_TYPE, Message
from outbox.settings import OutboxSettings
from outbox.tracing import current_trace_headers

MAX_KEY_LENGTH = 1024
# The longest delay; migration 0005 refuses outbox rows available later than this, so no
# message can be parked forever (or skew the oldest-age metric) whoever writes it.
MAX_DELAY = timedelta(days=365)


def build_message(
    settings: OutboxSettings,
    topic: str,
    payload: Any,
    *,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
    delay: timedelta | float | None = None,
    content_type: str | None = None,
) -> Message:
    """A validated, encoded `Message` with a fresh UUIDv7 and the current trace context."""
    _check_topic(settings, topic)
    if key is not None and (not isinstance(key, str) or len(key) > MAX_KEY_LENGTH):
        raise InvalidMessage(f"key must be a str of at most {MAX_KEY_LENGTH} characters")
    body, kind = _encode(settings, payload)
    if len(body) > settings.max_payload_bytes:
        raise PayloadTooLarge(
            f"payload of topic {topic!r} is {len(body)} bytes encoded; "
            f"the maximum is {settings.max_payload_bytes}"
        )
    return Message(
        message_id=uuid7(),
        topic=topic,
        payload=body,
        key=key,
        headers=current_trace_headers() | _check_headers(headers),
        content_type=content_type or kind,
        delay=_as_delay(delay),
    )


def _check_topic(settings: OutboxSettings, topic: object) -> None:
    if not isinstance(topic, str) or not topic.strip():
        raise InvalidTopic("topic must be a non-empty str")
    if len(topic) > settings.max_topic_length:
        raise InvalidTopic(
            f"topic is {len(topic)} characters long; the maximum is {settings.max_topic_length}"
        )
    if any(ord(ch) < 32 or ch.isspace() for ch in topic):
        raise InvalidTopic(f"topic {topic!r} contains whitespace or control characters")


def _encode(settings: OutboxSettings, payload: Any) -> tuple[bytes, str]:
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload), BYTES_CONTENT_TYPE
    try:
        return settings.json_dumps(payload), JSON_CONTENT_TYPE
    except (TypeError, ValueError, RecursionError) as exc:
        raise PayloadNotSerializable(f"payload does not encode as JSON: {exc}") from exc


def _check_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise InvalidHeaders("headers must be a mapping of str to str")
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidHeaders(f"header {name!r}: names and values must be str")
        if not name or "\x00" in name or "\x00" in value:
            raise InvalidHeaders(f"header {name!r}: empty name or NUL character")
        if name.lower() in RESERVED or name.lower().startswith(RESERVED_PREFIX):
            # The envelope (or a broker's field layout) would overwrite or drop it.
            raise InvalidHeaders(
                f"header {name!r} is reserved for the message envelope (names starting with "
                f"{RESERVED_PREFIX!r} are outboxkit's); use the message's own fields "
                "(content_type=, key=) instead"
            )
    return dict(headers)


def _as_delay(delay: timedelta | float | None) -> timedelta | None:
    if delay is None:
        return None
    if isinstance(delay, bool) or not isinstance(delay, timedelta | int | float):
        raise InvalidMessage("delay must be a timedelta or a number of seconds")
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
    if not 0 <= seconds <= MAX_DELAY.total_seconds():  # also refuses NaN and infinity
        raise InvalidMessage(f"delay must be between 0 and {MAX_DELAY.days} days")
    return timedelta(seconds=seconds)
