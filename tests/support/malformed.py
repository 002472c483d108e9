"""Malformed envelopes as a hostile publisher sends them, and what a kept message must be.

`corpus()` is the shared list the conformance suite sends through every broker with the
broker's own client (bypassing our publisher's checks) and the unit tests feed to the
decoders. A field value given as bytes is not UTF-8: brokers that carry only text cannot
send it (`Bad.text_only` tells), SQS sends it as JSON escapes (lone surrogates).

`message_problem` and `malformed_problem` restate the write path's limits from
`outbox.limits` on their own (not through `outbox.envelope`), so that the envelope code is
checked against the limits rather than against itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from outboxkit.outbox.envelope import (
    CONTENT_TYPE,
    CREATED_AT,
    KEY,
    MESSAGE_ID,
    RESERVED,
    RESERVED_PREFIX,
    TOPIC,
    Malformed,
)
from outboxkit.outbox.limits import (
    MAX_CONTENT_TYPE_BYTES,
    MAX_ERROR_BYTES,
    MAX_HEADER_NAME_BYTES,
    MAX_HEADER_VALUE_BYTES,
    MAX_HEADERS,
    MAX_HEADERS_BYTES,
    MAX_KEY_BYTES,
    MAX_TOPIC_BYTES,
    text_problem,
    utf8_length,
)
from outboxkit.outbox.message import Message

RAW_TOPIC = "conf.raw"  # the topic (destination) the conformance suite sends the corpus on


@dataclass(frozen=True)
class Bad:
    """One malformed envelope: its fields as sent, and whether its id identifies it."""

    name: str
    fields: dict[str, str | bytes]
    identifiable: bool
    message_id: uuid.UUID | None = None
    payload: bytes = b""
    # What some brokers cannot carry: line breaks (NATS), long names (AMQP), 64 KiB of
    # headers (NATS refuses them itself, as we do), no id at all (aiormq gives every AMQP
    # message an id, which the consumer takes, as a foreign publisher's).
    needs: frozenset[str] = field(default_factory=frozenset)

    @property
    def text_only(self) -> bool:
        """Whether every name and value is text (a text-only broker can send it)."""
        return all(isinstance(v, str) and _encodable(v) for v in self.fields.values()) and all(
            _encodable(k) for k in self.fields
        )


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def raw_envelope(message_id: uuid.UUID, *, key: str | None = "k1") -> dict[str, str | bytes]:
    """The fields of a well-formed envelope on `RAW_TOPIC`."""
    fields: dict[str, str | bytes] = {
        MESSAGE_ID: str(message_id),
        TOPIC: RAW_TOPIC,
        CONTENT_TYPE: "application/json",
        "x-user": "u",
    }
    if key is not None:
        fields[KEY] = key
    return fields


def corpus() -> list[Bad]:
    """Fresh malformed envelopes (new ids on every call)."""
    made: list[Bad] = []

    def bad(
        name: str,
        change: Mapping[str, str | bytes | None],
        *,
        identifiable: bool = True,
        needs: frozenset[str] = frozenset(),
    ) -> None:
        message_id = uuid.uuid4()
        fields = raw_envelope(message_id)
        for header, value in change.items():
            if value is None:
                fields.pop(header, None)
            else:
                fields[header] = value
        made.append(
            Bad(
                name,
                fields,
                identifiable,
                message_id if identifiable else None,
                b'{"malformed": "%s"}' % name.encode(),
                needs,
            )
        )

    many = {f"x-h{i}": str(i) for i in range(MAX_HEADERS + 16)}
    heavy = {f"x-heavy{i}": "v" * 8000 for i in range(MAX_HEADERS_BYTES // 8000 + 1)}
    bad("NUL in the topic", {TOPIC: "conf.a\x00b"})
    bad("key not UTF-8", {KEY: b"k\xff"})
    bad("key over its byte limit", {KEY: "\u00e9" * (MAX_KEY_BYTES // 2 + 1)})
    bad("topic over its byte limit", {TOPIC: "conf." + "t" * MAX_TOPIC_BYTES})
    bad("too many headers", many)
    bad("header value over its byte limit", {"x-big": "v" * (MAX_HEADER_VALUE_BYTES + 1)})
    bad("headers over their total", heavy, needs=frozenset({"64 KiB of headers"}))
    bad(
        "header name over its byte limit",
        {"x" * (MAX_HEADER_NAME_BYTES + 1): "v"},
        needs=frozenset({"long names"}),
    )
    bad("NUL in a header value", {"x-user": "a\x00b"})
    bad("control character in a header name", {"x\x01y": "v"})
    bad("carriage return in a header value", {"x-user": "a\rb"}, needs=frozenset({"line breaks"}))
    bad("header value not UTF-8", {"x-user": b"\xff\xfe"})
    bad("header named like the envelope's prefix", {RESERVED_PREFIX + "evil": "1"})
    bad("header shadowing an envelope field", {"Content-Type": "text/plain"})
    bad("created-at not a timestamp", {CREATED_AT: "yesterday"})
    bad("created-at without an offset", {CREATED_AT: "2026-01-01T00:00:00"})
    bad("NUL in the content type", {CONTENT_TYPE: "text/\x00plain"})
    bad("message id not a UUID", {MESSAGE_ID: "not-a-uuid"}, identifiable=False)
    bad("no message id", {MESSAGE_ID: None}, identifiable=False, needs=frozenset({"no native id"}))
    bad("NUL in the message id", {MESSAGE_ID: f"{uuid.uuid4()}\x00"}, identifiable=False)
    bad(
        "message id not UTF-8",
        {MESSAGE_ID: b"\xff" + uuid.uuid4().hex.encode()},
        identifiable=False,
    )
    bad("message id of 5000 digits", {MESSAGE_ID: "1" * 5000}, identifiable=False)
    return made


def as_text(fields: Mapping[str, str | bytes]) -> dict[str, str]:
    """The fields as a text-only client would hand them over (bytes with lone surrogates)."""
    return {
        k: v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v
        for k, v in fields.items()
    }


# -- what a kept message and a dead letter must be -----------------------------------------


def message_problem(message: Message) -> str | None:
    """Why `message` breaks a limit of `outbox.limits` or the envelope's rules, or None."""
    # (what, value, byte limit, newlines allowed)
    checks: list[tuple[str, object, int, bool]] = [
        ("topic", message.topic, MAX_TOPIC_BYTES, False),
        ("content type", message.content_type, MAX_CONTENT_TYPE_BYTES, False),
    ]
    if message.key is not None:
        checks.append(("key", message.key, MAX_KEY_BYTES, False))
    if not message.topic:
        return "empty topic"
    if message.created_at is not None and message.created_at.utcoffset() is None:
        return "naive created_at"
    if len(message.headers) > MAX_HEADERS:
        return "too many headers"
    size = 0
    for name, value in message.headers.items():
        if name.lower() in RESERVED or name.lower().startswith(RESERVED_PREFIX):
            return f"header name {name!r}"
        checks.append(("header name", name, MAX_HEADER_NAME_BYTES, False))
        checks.append(("header value", value, MAX_HEADER_VALUE_BYTES, True))
        size += utf8_length(name) + utf8_length(value)
    if size > MAX_HEADERS_BYTES:
        return "headers too large"
    for what, value, limit, newlines in checks:
        if not isinstance(value, str):
            return f"{what} not a str"
        problem = text_problem(value, limit, allow_newlines=newlines)
        if problem is not None:
            return f"{what} {problem}"
    return None


def malformed_problem(found: Malformed) -> str | None:
    """Why `found` could not be stored as a dead letter as it is, or None."""
    texts: list[tuple[str, object, int]] = [
        ("reason", found.reason, MAX_ERROR_BYTES),
        ("topic", found.topic, MAX_TOPIC_BYTES),
    ]
    if found.key is not None:
        texts.append(("key", found.key, MAX_KEY_BYTES))
    if found.content_type is not None:
        texts.append(("content type", found.content_type, MAX_CONTENT_TYPE_BYTES))
    if len(found.headers) > MAX_HEADERS:
        return "too many headers"
    size = 0
    for name, value in found.headers.items():
        texts += [("header name", name, MAX_HEADER_NAME_BYTES)]
        texts += [("header value", value, MAX_HEADER_VALUE_BYTES)]
        size += utf8_length(name) + utf8_length(value)
    if size > MAX_HEADERS_BYTES:
        return "headers too large"
    if not found.reason:
        return "no reason"
    if not isinstance(found.payload, bytes):
        return "payload not bytes"
    for what, value, limit in texts:
        if not isinstance(value, str):
            return f"{what} not a str"
        problem = text_problem(value, limit)
        if problem is not None:
            return f"{what} {problem}"
    return None
