"""HTTP/1.1 request parsing for the webhook server: the head, the body framing, chunks.

Pure functions (and one reader of chunked bodies over an `asyncio.StreamReader`), so each
can be fuzzed in-process. Anything malformed raises `HttpRefusal` carrying the status to
answer (400 mostly); nothing else escapes, whatever the bytes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from outboxkit.outbox.errors import OutboxkitError

MAX_HEADER_FIELDS = 128  # a request with more header lines is refused (431)
MAX_TRAILER_LINES = 64
CHUNK_LINE_LIMIT = 1024  # a chunk-size line (with extensions) longer than this is refused

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A header value: visible ASCII, blanks and obs-text (0x80-0xff); no other control bytes.
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[\t\x20-\x7e\x80-\xff]*)?")


class HttpRefusal(OutboxkitError):
    """The request cannot be served: answer `status` and close the connection."""

    def __init__(self, status: HTTPStatus, detail: str | None = None) -> None:
        super().__init__(detail or status.phrase)
        self.status = status


@dataclass(frozen=True)
class Request:
    """A request's head: method, target (path and query, still encoded), version, headers
    (lower-case names, values without surrounding blanks)."""

    method: str
    target: str
    version: str
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None:
        """The values of header `name` joined with `, ` (None if absent)."""
        values = [v for n, v in self.headers if n == name]
        return b", ".join(values) if values else None

    @property
    def keep_alive(self) -> bool:
        """Whether the client lets the connection serve another request."""
        tokens = {t.strip() for t in (self.header(b"connection") or b"").lower().split(b",")}
        return self.version == "HTTP/1.1" and b"close" not in tokens

    @property
    def expects_continue(self) -> bool:
        """Whether the client waits for `100 Continue` before sending the body."""
        return (self.header(b"expect") or b"").strip().lower() == b"100-continue"


def parse_head(head: bytes) -> Request:
    """The request line and header fields of `head` (up to and including the blank line)."""
    lines = head.lstrip(b"\r\n").split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
        raise HttpRefusal(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = (part.decode("latin-1") for part in parts)
    if not _VERSION.fullmatch(parts[2]):
        raise HttpRefusal(HTTPStatus.BAD_REQUEST, "malformed HTTP version")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise HttpRefusal(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
    fields = [line for line in lines[1:] if line]
    if len(fields) > MAX_HEADER_FIELDS:
        raise HttpRefusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields")
    headers = []
    for line in fields:
        name, colon, value = line.partition(b":")
        # The token rule also refuses obsolete line folding (a line starting with a blank).
        if not colon or not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise HttpRefusal(HTTPStatus.BAD_REQUEST, "malformed header field")
        headers.append((name.lower(), value.strip(b" \t")))
    return Request(method, target, version, headers)


def body_length(request: Request, max_body: int) -> int | None:
    """The body's Content-Length (0 without a body), or None for a chunked body.

    Refuses what a proxy could read differently (both framings, a list of lengths: request
    smuggling), other transfer codings (501) and a declared length over `max_body` (413).
    """
    encoding = request.header(b"transfer-encoding")
    length = request.header(b"content-length")
    if encoding is not None and length is not None:
        raise HttpRefusal(HTTPStatus.BAD_REQUEST, "both Content-Length and Transfer-Encoding")
    if encoding is not None:
        if encoding.lower() != b"chunked":
            raise HttpRefusal(HTTPStatus.NOT_IMPLEMENTED, "only chunked transfer coding")
        return None
    if length is None:
        return 0
    if not (length.isdigit() and len(length) <= 18):
        raise HttpRefusal(HTTPStatus.BAD_REQUEST, "malformed Content-Length")
    size = int(length)
    if size > max_body:
        raise HttpRefusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    return size


def chunk_size(line: bytes) -> int:
    """The size a chunk-size line (without its CRLF) announces: hex digits only, then
    optional blanks and `;extensions` (ignored)."""
    found = _CHUNK_SIZE.fullmatch(line)
    if found is None:
        raise HttpRefusal(HTTPStatus.BAD_REQUEST, "malformed chunk size")
    return int(found.group(1), 16)


async def read_chunked(
    reader: asyncio.StreamReader, max_body: int, reserve: Callable[[int], None]
) -> bytes:
    """A chunked body, decoded; trailers are read and ignored.

    `reserve(n)` is called before `n` more bytes are buffered (it raises to refuse them).
    `asyncio.IncompleteReadError` if the client hangs up mid-body.
    """
    body = bytearray()
    while True:
        size = chunk_size(await _line(reader, CHUNK_LINE_LIMIT))
        if size == 0:
            break
        if len(body) + size > max_body:
            raise HttpRefusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        reserve(size)
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise HttpRefusal(HTTPStatus.BAD_REQUEST, "chunk not followed by CRLF")
    for _ in range(MAX_TRAILER_LINES):
        if not await _line(reader, CHUNK_LINE_LIMIT * 8):
            return bytes(body)
    raise HttpRefusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many trailer fields")


async def _line(reader: asyncio.StreamReader, limit: int) -> bytes:
    """The next CRLF-terminated line without its CRLF; 400 if longer than `limit`."""
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError:
        raise HttpRefusal(HTTPStatus.BAD_REQUEST, "line too long") from None
    if len(line) > limit + 2:
        raise HttpRefusal(HTTPStatus.BAD_REQUEST, "line too long")
    return line[:-2]
