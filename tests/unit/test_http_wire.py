"""The webhook server's HTTP/1.1 parsing (outboxkit.brokers.http.wire), in-process: the head,
the body framing and chunked bodies, with hand-picked and fuzzed hostile bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from http import HTTPStatus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outboxkit.brokers.http.wire import (
    MAX_HEADER_FIELDS,
    HttpRefusal,
    body_length,
    chunk_size,
    parse_head,
    read_chunked,
)
from tests.support import hostile


def status_of(head: bytes) -> HTTPStatus | None:
    try:
        parse_head(head)
    except HttpRefusal as exc:
        return exc.status
    return None


def test_a_well_formed_head() -> None:
    request = parse_head(
        b"POST /hooks/a%2Fb?x=1 HTTP/1.1\r\nHost: h\r\nX-Two: a\r\nx-two:  b \t\r\n\r\n"
    )
    assert (request.method, request.target, request.version) == (
        "POST",
        "/hooks/a%2Fb?x=1",
        "HTTP/1.1",
    )
    assert request.header(b"x-two") == b"a, b" and request.header(b"host") == b"h"
    assert request.keep_alive and not request.expects_continue


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"POST  /x HTTP/1.1\r\n\r\n", 400),
        (b"POST x HTTP/1.1\r\n\r\n", 400),
        (b"PO\x00ST /x HTTP/1.1\r\n\r\n", 400),
        (b"POST /x\x00y HTTP/1.1\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\n\r\n\r\n", 400),
        (b"POST /x HTTP/2.0\r\n\r\n", 505),
        (b"POST /x HTTP/one\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nx: a\x00b\r\n\r\n", 400),  # NUL in a value
        (b"POST /x HTTP/1.1\r\nx: a\rb\r\n\r\n", 400),  # a bare CR
        (b"POST /x HTTP/1.1\r\nx: a\nb: c\r\n\r\n", 400),  # a bare LF
        (b"POST /x HTTP/1.1\r\nx: a\x7f\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nx: a\r\n folded\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\nx y: a\r\n\r\n", 400),
        (b"POST /x HTTP/1.1\r\n" + b"x: y\r\n" * (MAX_HEADER_FIELDS + 1) + b"\r\n", 431),
    ],
)
def test_malformed_heads_are_refused_with_a_status(head: bytes, status: int) -> None:
    assert status_of(head) == status


def test_obs_text_in_values_is_kept() -> None:
    request = parse_head(b"POST /x HTTP/1.1\r\nx: caf\xe9\r\n\r\n")
    assert request.header(b"x") == b"caf\xe9"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (b"", 0),
        (b"content-length: 12\r\n", 12),
        (b"transfer-encoding: chunked\r\n", None),
        (b"transfer-encoding: CHUNKED\r\n", None),
        (b"content-length: 1\r\ntransfer-encoding: chunked\r\n", 400),
        (b"content-length: 3\r\ncontent-length: 3\r\n", 400),
        (b"content-length: -1\r\n", 400),
        (b"content-length: +1\r\n", 400),
        (b"content-length: 1_0\r\n", 400),
        (b"content-length: \xd9\xa1\r\n", 400),  # an Arabic-Indic digit: not ASCII
        (b"content-length: " + b"9" * 40 + b"\r\n", 400),
        (b"content-length: 1001\r\n", 413),
        (b"transfer-encoding: gzip, chunked\r\n", 501),
    ],
)
def test_body_framing(headers: bytes, expected: int | None) -> None:
    request = parse_head(b"POST /x HTTP/1.1\r\n" + headers + b"\r\n")
    if expected is None or expected < 400:
        assert body_length(request, 1000) == expected
    else:
        with pytest.raises(HttpRefusal) as refused:
            body_length(request, 1000)
        assert refused.value.status == expected


@pytest.mark.parametrize(
    "line", [b"-5", b"+5", b"0x5", b" 5", b"", b"g", b"5\x00", b"1" * 17, b"\xd9\xa1"]
)
def test_chunk_sizes_are_hex_digits_only(line: bytes) -> None:
    with pytest.raises(HttpRefusal) as refused:
        chunk_size(line)
    assert refused.value.status == HTTPStatus.BAD_REQUEST


def test_chunk_sizes_with_extensions() -> None:
    assert chunk_size(b"1A") == 26
    assert chunk_size(b"1a ;name=value;x") == 26
    assert chunk_size(b"0") == 0


# -- chunked bodies, through an in-memory stream ----------------------------------------


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as running:
        yield running


def decode(runner: asyncio.Runner, data: bytes, max_body: int = 1000) -> bytes:
    async def run() -> bytes:
        reader = asyncio.StreamReader(limit=4096)
        reader.feed_data(data)
        reader.feed_eof()
        return await read_chunked(reader, max_body, lambda _: None)

    return runner.run(run())


def test_a_chunked_body_with_extensions_and_trailers(runner: asyncio.Runner) -> None:
    data = b"2;ext=1\r\nhe\r\n3\r\nllo\r\n0\r\ntrailer: x\r\n\r\n"
    assert decode(runner, data) == b"hello"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"-5\r\nhello\r\n0\r\n\r\n", 400),
        (b"5\r\nhelloXX0\r\n\r\n", 400),
        (b"5" + b" " * 2000 + b"\r\n", 400),
        (b"400\r\n" + b"x" * 1024 + b"\r\n0\r\n\r\n", 413),
        (b"0\r\n" + b"t: x\r\n" * 100 + b"\r\n", 431),
    ],
)
def test_malformed_chunked_bodies(runner: asyncio.Runner, data: bytes, status: int) -> None:
    with pytest.raises(HttpRefusal) as refused:
        decode(runner, data)
    assert refused.value.status == status


def test_chunks_reserve_their_bytes_first(runner: asyncio.Runner) -> None:
    reserved: list[int] = []

    def reserve(size: int) -> None:
        if sum(reserved) + size > 4:
            raise HttpRefusal(HTTPStatus.SERVICE_UNAVAILABLE)
        reserved.append(size)

    async def run() -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
        reader.feed_eof()
        return await read_chunked(reader, 1000, reserve)

    with pytest.raises(HttpRefusal) as refused:
        runner.run(run())
    assert refused.value.status == HTTPStatus.SERVICE_UNAVAILABLE and reserved == [3]


# -- fuzzing ----------------------------------------------------------------------------

_FIELD = st.binary(max_size=40) | st.sampled_from(
    [b"content-length: 5", b"transfer-encoding: chunked", b"x: \x00", b"x:\xff", b" folded"]
)
_LINE = st.binary(max_size=60) | st.sampled_from(
    [b"POST / HTTP/1.1", b"POST /hooks/%00 HTTP/1.1", b"GET * HTTP/1.1", b"POST /x HTTP/9.9"]
)


@pytest.mark.hostile
@hostile.fuzz
@given(_LINE, st.lists(_FIELD, max_size=8), st.integers(min_value=0, max_value=2000))
def test_fuzzed_heads_parse_or_are_refused(line: bytes, fields: list[bytes], max_body: int) -> None:
    head = b"\r\n".join([line, *fields]) + b"\r\n\r\n"
    with hostile.attempt(
        "webhook request head (http_wire.parse_head)", refused=(HttpRefusal,)
    ) as outcome:
        request = parse_head(head)
        length = body_length(request, max_body)
    if outcome.accepted:
        assert request.target.startswith("/") and request.version in ("HTTP/1.0", "HTTP/1.1")
        for name, value in request.headers:
            assert name == name.lower() and b":" not in name
            assert not any(c in value for c in b"\x00\r\n")
        assert length is None or 0 <= length <= max_body


_CHUNK_PIECE = st.binary(max_size=12) | st.sampled_from(
    [b"\r\n", b"0\r\n\r\n", b"-5\r\n", b"5\r\n", b"ff;x\r\n", b"hello\r\n", b"t: x\r\n"]
)


@pytest.mark.hostile
@hostile.fuzz
@given(st.lists(_CHUNK_PIECE, max_size=10))
def test_fuzzed_chunked_bodies_decode_or_are_refused(
    runner: asyncio.Runner, pieces: list[bytes]
) -> None:
    # The input ends where the pieces do: IncompleteReadError is the client hanging up.
    refused = (HttpRefusal, asyncio.IncompleteReadError)
    with hostile.attempt(
        "webhook chunked body (http_wire.read_chunked)", refused=refused
    ) as outcome:
        body = decode(runner, b"".join(pieces), max_body=100)
    if outcome.accepted:
        assert len(body) <= 100


@pytest.mark.hostile
@hostile.fuzz
@given(st.binary(max_size=300), st.lists(st.integers(min_value=1, max_value=50), max_size=8))
def test_well_formed_chunked_bodies_round_trip(
    runner: asyncio.Runner, body: bytes, cuts: list[int]
) -> None:
    data, rest = b"", body
    for cut in [*cuts, len(body)]:
        piece, rest = rest[:cut], rest[cut:]
        if piece:
            data += b"%x;n=1\r\n%s\r\n" % (len(piece), piece)
    data += b"0\r\ntrailer: t\r\n\r\n"
    with hostile.attempt("webhook chunked body (http_wire.read_chunked)") as outcome:
        decoded = decode(runner, data, max_body=1000)
    assert outcome.accepted and decoded == body
