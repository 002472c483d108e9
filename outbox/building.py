"""Validate and encode a new message before anything touches the database.

Topics, keys and header names are stored in indexed columns, and PostgreSQL limits a btree
entry in bytes: every limit here counts UTF-8 bytes (`outbox.limits`), never characters,
and the database CHECKs the same limits (migration 0004).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from outboxkit.outbox.envelope import RESERVED, RESERVED_PREFIX
from outboxkit.outbox.errors import (
    InvalidHeaders,
    InvalidMessage,
    InvalidTopic,
    PayloadNotSerializable,
    PayloadTooLarge,
)
from outboxkit.outbox.ids import uuid7
from outboxkit.outbox.limits import (
    MAX_CONTENT_TYPE_BYTES,
    MAX_HEADER_NAME_BYTES,
    MAX_HEADER_VALUE_BYTES,
    MAX_HEADERS,
    MAX_HEADERS_BYTES,
    MAX_KEY_BYTES,
    text_problem,
    utf8_length,
)
from outboxkit.outbox.message import BYTES_CONTENT_TYPE, JSON_CONTENT_TYPE, Message
from outboxkit.outbox.settings import OutboxSettings
from outboxkit.outbox.tracing import current_trace_headers

# Kept for callers that imported it: a key's limit, in UTF-8 bytes (it was characters).
MAX_KEY_LENGTH = MAX_KEY_BYTES
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
    _check_key(key)
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
        headers=_check_total(current_trace_headers() | _check_headers(headers)),
        content_type=_check_content_type(content_type) or kind,
        delay=_as_delay(delay),
    )


def _check_content_type(content_type: object) -> str | None:
    # Every consumer's envelope check refuses what this lets through: keep them in step.
    if content_type is None or content_type == "":
        return None
    if not isinstance(content_type, str):
        raise InvalidMessage("content_type must be a str")
    if problem := text_problem(content_type, MAX_CONTENT_TYPE_BYTES):
        raise InvalidMessage(f"content_type {_short(content_type)} {problem}")
    return content_type


def _check_topic(settings: OutboxSettings, topic: object) -> None:
    if not isinstance(topic, str) or not topic.strip():
        raise InvalidTopic("topic must be a non-empty str")
    if problem := text_problem(topic, settings.max_topic_length):
        raise InvalidTopic(f"topic {_short(topic)} {problem}")
    if any(ch.isspace() for ch in topic):
        raise InvalidTopic(f"topic {_short(topic)} contains whitespace")


def _check_key(key: object) -> None:
    if key is None:
        return
    if not isinstance(key, str):
        raise InvalidMessage(f"key must be a str, not {type(key).__name__}")
    if problem := text_problem(key, MAX_KEY_BYTES):
        raise InvalidMessage(f"key {_short(key)} {problem}")


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
    if len(headers) > MAX_HEADERS:
        raise InvalidHeaders(f"{len(headers)} headers; the maximum is {MAX_HEADERS}")
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidHeaders(
                "header names and values must be str, not "
                f"{type(name).__name__} and {type(value).__name__}"
            )
        if not name:
            raise InvalidHeaders("header names must not be empty")
        if problem := text_problem(name, MAX_HEADER_NAME_BYTES):
            raise InvalidHeaders(f"header name {_short(name)} {problem}")
        if problem := text_problem(value, MAX_HEADER_VALUE_BYTES):
            raise InvalidHeaders(f"header {_short(name)}: its value {problem}")
        if name.lower() in RESERVED or name.lower().startswith(RESERVED_PREFIX):
            # The envelope (or a broker's field layout) would overwrite or drop it.
            raise InvalidHeaders(
                f"header {_short(name)} is reserved for the message envelope (names starting with "
                f"{RESERVED_PREFIX!r} are outboxkit's); use the message's own fields "
                "(content_type=, key=) instead"
            )
    return dict(headers)


def _check_total(headers: dict[str, str]) -> dict[str, str]:
    """The headers with the captured trace context, still within the count and total size."""
    if len(headers) > MAX_HEADERS:
        raise InvalidHeaders(
            f"{len(headers)} headers with the trace context; the maximum is {MAX_HEADERS}"
        )
    size = sum(utf8_length(name) + utf8_length(value) for name, value in headers.items())
    if size > MAX_HEADERS_BYTES:
        raise InvalidHeaders(
            f"headers are {size} bytes of UTF-8; the maximum is {MAX_HEADERS_BYTES}"
        )
    return headers


def _short(value: str) -> str:
    """`value` for an error message: repr'd (control characters escaped) and cut short."""
    text = repr(value)
    return text if len(text) <= 66 else text[:60] + "…" + text[-5:]


def _as_delay(delay: timedelta | float | None) -> timedelta | None:
    if delay is None:
        return None
    if isinstance(delay, bool) or not isinstance(delay, timedelta | int | float):
        raise InvalidMessage("delay must be a timedelta or a number of seconds")
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
    if not 0 <= seconds <= MAX_DELAY.total_seconds():  # also refuses NaN and infinity
        raise InvalidMessage(f"delay must be between 0 and {MAX_DELAY.days} days")
    return timedelta(seconds=seconds)
