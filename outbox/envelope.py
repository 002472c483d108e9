"""Message <-> broker headers: every publisher and consumer maps the envelope the same way.

`from_headers` is the one gate between a broker and the inbox: whatever a broker delivers
(any publisher may write to it, not only ours) is checked against the limits the write path
enforces (`outbox.limits`) before it can reach a table or an index. A broken envelope raises
`MalformedEnvelope`, whose `malformed` keeps what could be kept, cleaned so that it can be
stored as a dead letter.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from uuid import UUID

from outboxkit.outbox.errors import InvalidMessage
from outboxkit.outbox.limits import (
    MAX_CONTENT_TYPE_BYTES,
    MAX_HEADER_NAME_BYTES,
    MAX_HEADER_VALUE_BYTES,
    MAX_HEADERS,
    MAX_HEADERS_BYTES,
    MAX_KEY_BYTES,
    MAX_TOPIC_BYTES,
    clean_text,
    text_problem,
    utf8_length,
)
from outboxkit.outbox.message import JSON_CONTENT_TYPE, Message

MESSAGE_ID = "outboxkit-message-id"
TOPIC = "outboxkit-topic"
KEY = "outboxkit-key"
CONTENT_TYPE = "content-type"
CREATED_AT = "outboxkit-created-at"
RESERVED = frozenset({MESSAGE_ID, TOPIC, KEY, CONTENT_TYPE, CREATED_AT})
# User headers may not start with this: brokers' field layouts use it too.
RESERVED_PREFIX = "outboxkit-"

# A UUID in any form `uuid.UUID` reads (`urn:uuid:{…}` is the longest) fits; an ISO 8601
# timestamp with microseconds and an offset is 32 characters.
_MAX_ID_BYTES = 64
_MAX_CREATED_AT_BYTES = 64
# How much of a hostile value a reason quotes.
_SHOWN_BYTES = 80


@dataclass(frozen=True)
class Malformed:
    """A delivery whose envelope is broken: why, and what of it can be kept.

    Every text field is cleaned (`outbox.limits.clean_text`) and within its limit, so it can
    be stored as an inbox dead letter. `message_id` is None when the delivery has no usable
    id: nothing identifies it, and the runner can only count and drop it. `str()` is the
    reason.
    """

    reason: str
    payload: bytes = b""
    message_id: UUID | None = None
    topic: str = ""
    key: str | None = None
    content_type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.reason

    def at(self, where: str) -> Malformed:
        """The same, with where it was found (broker, stream, offset…) added to the reason."""
        return replace(self, reason=clean_text(f"{self.reason} {where}" if where else self.reason))

    @classmethod
    def of(cls, error: InvalidMessage, payload: bytes, where: str = "") -> Malformed:
        """What a decoding `error` leaves: its own `malformed` if it has one, else the reason."""
        if isinstance(error, MalformedEnvelope):
            return error.malformed.at(where)
        return cls(clean_text(f"{error} {where}" if where else str(error)), bytes(payload))


class MalformedEnvelope(InvalidMessage):
    """A delivered envelope is broken; `malformed` holds what could be kept."""

    def __init__(self, malformed: Malformed) -> None:
        super().__init__(malformed.reason)
        self.malformed = malformed


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
    """Rebuild the message a publisher sent; `MalformedEnvelope` if the envelope is broken.

    `topic` is the broker's own (a subject, a routing key), used when the headers have none.
    Refused: a missing or malformed id, a missing topic, a timestamp without a UTC offset,
    a user header named like an envelope field, and anything `outbox.limits` refuses to
    store (control characters, lone surrogates, a field over its byte limit, more than
    `MAX_HEADERS` user headers or `MAX_HEADERS_BYTES` of them). The write path's own
    policy beyond those limits (no blank in a topic, no empty header name) is not checked
    here: what passes can be stored and indexed safely.
    """
    try:
        return _read(headers, payload, topic)
    except _Broken as broken:
        raise MalformedEnvelope(salvage(headers, payload, str(broken), topic=topic)) from None


def native_text(value: object) -> str:
    """A broker's header name or value as text, never failing.

    Bytes that are not UTF-8 keep their bad bytes as lone surrogates (`surrogateescape`), so
    that `from_headers` refuses them and says where, instead of the decoding failing first
    and losing the rest of the envelope.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "surrogateescape")
    try:
        return str(value)  # a number or a table (AMQP): its text, checked like any other
    except Exception:  # noqa: BLE001 - a hostile __str__ must not escape
        return f"<unprintable {type(value).__name__}>"


def salvage(
    headers: Mapping[str, str], payload: bytes, reason: str, *, topic: str | None = None
) -> Malformed:
    """What a broken envelope still tells, cleaned for storage; never raises."""
    try:
        message_id = _message_id(headers.get(MESSAGE_ID))
    except _Broken:
        message_id = None
    except Exception:  # noqa: BLE001 - a hostile mapping must not stop the salvage
        return Malformed(clean_text(reason), bytes(payload))
    raw_topic = headers.get(TOPIC) or topic
    raw_key = headers.get(KEY)
    raw_type = headers.get(CONTENT_TYPE)
    kept: dict[str, str] = {}
    size = 0
    users = ((k, v) for k, v in headers.items() if k not in RESERVED)
    for name, value in itertools.islice(users, MAX_HEADERS):
        clean_name = clean_text(name, MAX_HEADER_NAME_BYTES) or "?"
        clean_value = clean_text(value, MAX_HEADER_VALUE_BYTES)
        size += utf8_length(clean_name) + utf8_length(clean_value)
        if size > MAX_HEADERS_BYTES:
            break
        kept[clean_name] = clean_value
    return Malformed(
        reason=clean_text(reason),
        payload=bytes(payload),
        message_id=message_id,
        topic=clean_text(raw_topic, MAX_TOPIC_BYTES) if raw_topic is not None else "",
        key=clean_text(raw_key, MAX_KEY_BYTES) if raw_key is not None else None,
        content_type=clean_text(raw_type, MAX_CONTENT_TYPE_BYTES) if raw_type else None,
        headers=kept,
    )


# -- checking ------------------------------------------------------------------------------


class _Broken(Exception):
    """Why an envelope is refused (internal: `from_headers` turns it into MalformedEnvelope)."""


def _read(headers: Mapping[str, str], payload: bytes, fallback: str | None) -> Message:
    if not isinstance(headers, Mapping):
        raise _Broken("the headers are not a map of names to values")
    if len(headers) > MAX_HEADERS + len(RESERVED):
        raise _Broken(f"{len(headers)} headers; at most {MAX_HEADERS} user headers may travel")
    message_id = _message_id(headers.get(MESSAGE_ID))
    topic = headers.get(TOPIC, fallback)
    if not topic:
        raise _Broken(f"missing {TOPIC} header")
    _check(TOPIC, topic, MAX_TOPIC_BYTES)
    key = headers.get(KEY)
    if key is not None:
        _check(KEY, key, MAX_KEY_BYTES)
    content_type = headers.get(CONTENT_TYPE) or JSON_CONTENT_TYPE
    _check(CONTENT_TYPE, content_type, MAX_CONTENT_TYPE_BYTES)
    return Message(
        message_id=message_id,
        topic=topic,
        payload=payload,
        key=key,
        headers=_check_user_headers(headers),
        content_type=content_type,
        created_at=_created_at(headers.get(CREATED_AT)),
    )


def _message_id(value: object) -> UUID:
    if value is None:
        raise _Broken(f"missing {MESSAGE_ID} header")
    if not isinstance(value, str) or not value.isascii() or len(value) > _MAX_ID_BYTES:
        raise _Broken(f"malformed {MESSAGE_ID} header {_shown(value)}")
    try:
        return UUID(value)
    except ValueError:
        raise _Broken(f"malformed {MESSAGE_ID} header {_shown(value)}") from None


def _created_at(value: object) -> datetime | None:
    if not value:
        return None
    _check(CREATED_AT, value, _MAX_CREATED_AT_BYTES)
    assert isinstance(value, str)
    try:
        created = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise _Broken(f"malformed {CREATED_AT} header {_shown(value)}") from None
    if created.utcoffset() is None:
        raise _Broken(f"{CREATED_AT} header {_shown(value)} has no UTC offset")
    return created


def _check_user_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The user headers among `headers` (envelope fields left out), checked."""
    found: dict[str, str] = {}
    size = 0
    for name, value in headers.items():
        if name in RESERVED:
            continue
        _check("a header name", name, MAX_HEADER_NAME_BYTES)
        lowered = name.lower()
        if lowered in RESERVED or lowered.startswith(RESERVED_PREFIX):
            raise _Broken(f"header {_shown(name)} is reserved for the message envelope")
        if not _plain(value, MAX_HEADER_VALUE_BYTES):  # the reason quotes the name: built lazily
            # A value may hold line breaks and tabs (it is never a key or a log line's field).
            _check(f"header {_shown(name)}", value, MAX_HEADER_VALUE_BYTES, allow_newlines=True)
        if len(found) == MAX_HEADERS:
            raise _Broken(f"more than {MAX_HEADERS} user headers")
        size += _size(name) + _size(value)
        if size > MAX_HEADERS_BYTES:
            raise _Broken(f"the user headers exceed {MAX_HEADERS_BYTES} bytes")
        found[name] = value
    return found


def _plain(value: object, max_bytes: int) -> bool:
    """The common case, in two C calls: printable ASCII (0x20-0x7e) is text `text_problem`
    accepts whenever its length (its size in bytes) is within the limit."""
    return (
        isinstance(value, str)
        and value.isascii()
        and value.isprintable()
        and len(value) <= max_bytes
    )


def _check(what: str, value: object, max_bytes: int, *, allow_newlines: bool = False) -> None:
    if _plain(value, max_bytes):
        return
    if not isinstance(value, str):
        raise _Broken(f"{what} is a {type(value).__name__}, not text")
    problem = text_problem(value, max_bytes, allow_newlines=allow_newlines)
    if problem is not None and "surrogate" in problem:
        # Brokers' bytes that are not UTF-8 arrive as lone surrogates (`native_text`).
        raise _Broken(f"{what} is not UTF-8 text: it {problem}")
    if problem is not None:
        raise _Broken(f"{what} {problem}")


def _size(value: str) -> int:
    return len(value) if value.isascii() else utf8_length(value)


def _shown(value: object) -> str:
    """A hostile value as a reason may quote it: escaped, short."""
    return f"'{clean_text(value, _SHOWN_BYTES)}'"
