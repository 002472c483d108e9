"""Text that reaches an index, a column or a log: its limits and its cleaning, in one place.

Two kinds of text cross outboxkit's boundaries:

- **Identifying fields** (topic, key, consumer name, header names and values) are stored and
  indexed. They are *checked*: `text_problem` says why a value cannot be stored, and the
  caller raises its own typed error (`InvalidTopic`, `InvalidMessage`, a malformed delivery).
  Limits count UTF-8 bytes, because PostgreSQL's btree entries are limited in bytes
  (a 1,024-character key of 4-byte characters is 4 KiB, over the ~2.7 KiB a btree takes).
- **Free text from the outside** (a broker's or endpoint's error answer, a handler's
  exception) is only ever stored and logged. It is *cleaned*: `clean_text` never fails,
  escapes control characters and lone surrogates, and bounds the length.
"""

from __future__ import annotations

import re

MAX_TOPIC_BYTES = 255
MAX_KEY_BYTES = 1024
MAX_CONSUMER_BYTES = 255
MAX_HEADER_NAME_BYTES = 255
MAX_HEADER_VALUE_BYTES = 8 * 1024
MAX_HEADERS = 64
MAX_HEADERS_BYTES = 64 * 1024
MAX_ERROR_BYTES = 2000
MAX_CONTENT_TYPE_BYTES = 255

# C0 and C1 control characters, DEL; everything PostgreSQL's text or a terminal mishandles.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_OR_NEWLINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def utf8_length(value: str) -> int:
    """Bytes of `value` in UTF-8 (lone surrogates count as the 3 bytes they would take)."""
    return len(value.encode("utf-8", "surrogatepass"))


def text_problem(value: str, max_bytes: int, *, allow_newlines: bool = False) -> str | None:
    """Why `value` cannot be stored as an identifying field, or None if it can.

    Refused: NUL and other control characters (tab and newline too unless
    `allow_newlines`), lone surrogates (not encodable as UTF-8), and more than `max_bytes`
    bytes of UTF-8.
    """
    pattern = _CONTROL if allow_newlines else _CONTROL_OR_NEWLINE
    found = pattern.search(value)
    if found:
        return f"contains the control character {found.group()!r} at position {found.start()}"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return f"contains a lone surrogate at position {exc.start}"
    if size > max_bytes:
        return f"is {size} bytes of UTF-8; the maximum is {max_bytes}"
    return None


def clean_text(value: object, max_bytes: int = MAX_ERROR_BYTES) -> str:
    """`value` as printable text safe for any column or log line: never raises.

    Control characters (newlines included) become `\\xNN`/`\\uNNNN` escapes, lone surrogates
    become `\\udcNN` escapes, and the result is cut to at most `max_bytes` bytes of UTF-8 on
    a character boundary, ending in `…` when cut.
    """
    text = value if isinstance(value, str) else _str(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = _CONTROL_OR_NEWLINE.sub(_escape, text)
    # Unassigned or private-use code points are kept: they are valid UTF-8 and harmless.
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    ellipsis = "…"
    budget = max(0, max_bytes - len(ellipsis.encode()))
    return encoded[:budget].decode("utf-8", "ignore") + ellipsis


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _str(value: object) -> str:
    try:
        return str(value)
    except Exception as exc:  # noqa: BLE001 - a hostile __str__ must not escape
        return f"<unprintable {type(value).__name__}: {type(exc).__name__}>"
