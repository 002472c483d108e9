"""Hostile broker URLs and DSNs: every parser refuses with `ConfigurationError` or gives
options a client can use, and a credential planted in the URL never shows in an error,
a repr or a redacted DSN.

The URLs come from a grammar with hostile pieces (NUL, control and non-ASCII characters,
lone surrogates, broken percent-encoding, URL delimiters inside passwords), hostile numbers
(`nan`, `inf`, `-0`, `1e999`, 30-digit ports), empty hosts and repeated options.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outboxkit.outbox.errors import ConfigurationError
from outboxkit.outbox.redact import redact_dsn
from tests.support import hostile
from tests.support.secrets import SECRET, SECRET_QUERY_NAMES
from tests.support.url_parsers import PARSERS, UrlParser

HOSTILE = [
    "\x00", "\x01", "\n", "\r\n", "\t", " ", "\x7f", "\x85", "é", "😀", "\u202e", "\udcff",
    "%", "%00", "%zz", "%2F", "%40", "%3A", "%23", "%3F", "%25", "@", ":", "/", "?", "#",
    "&", "=", "[", "]", "+", ";", ",", "\\", "'", '"',
]  # fmt: skip
NUMBERS = [
    "nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999", "1e-999", "-0", "-0.0", "0",
    "1", "-1", "1.5", "0x10", "1_000", " 1", "٣", "²", "9" * 40, "1" * 5000, "", "true",
    "false", "yes", "file", "memory", "quorum", "none", "earliest", "sasl_ssl", "PLAIN",
]  # fmt: skip

pieces = st.lists(
    st.one_of(
        st.sampled_from(HOSTILE),
        st.text(alphabet=string.ascii_letters + string.digits + "-._~", max_size=6),
    ),
    max_size=4,
).map("".join)


def mostly(
    usual: st.SearchStrategy[str], hostile: st.SearchStrategy[str]
) -> st.SearchStrategy[str]:
    """`usual` seven times in eight: a URL must get far enough to be parsed at all."""
    return st.integers(0, 7).flatmap(lambda n: hostile if n == 0 else usual)


clean = st.text(alphabet=string.ascii_letters + string.digits + "-._~!$*+,;=", max_size=6)
secrets = mostly(
    st.builds(lambda a, b: a + SECRET + b, clean, clean),
    st.builds(lambda a, b: a + SECRET + b, pieces, pieces),
)

hosts = mostly(
    st.sampled_from(["h", "127.0.0.1", "[::1]", "h"]),
    st.one_of(st.sampled_from(["", "[::1", "::1", "hôst", "h\x00", "[]", "h h"]), pieces),
)
ports = mostly(
    st.sampled_from(["", ":1", ":4222"]),
    st.one_of(
        st.integers(min_value=-5, max_value=10**30).map(lambda n: f":{n}"),
        st.sampled_from([":", ":nan", ":٣", ":0", ":65535", ":65536", ": 1"]),
    ),
)
paths = mostly(
    st.sampled_from(["", "/", "/0"]),
    st.one_of(st.sampled_from(["/16", "/vh", "/%2F", "//", "/{topic}"]), pieces.map("/".__add__)),
)
fragments = mostly(st.just(""), pieces.map("#".__add__))
values = mostly(
    st.sampled_from(NUMBERS),
    st.one_of(st.integers().map(str), st.floats().map(str), pieces),
)


@st.composite
def hostile_urls(
    draw: st.DrawFn, schemes: tuple[str, ...], options: tuple[str, ...]
) -> tuple[str, str]:
    """A URL with a secret planted in its userinfo or in a secret-bearing query option."""
    scheme = draw(st.sampled_from([*schemes, *schemes, *schemes, "", "NATS", "x", "http"]))
    secret = draw(secrets)
    user = draw(st.sampled_from(["", "app", "a:b", "ü"]))
    # A bare token with an unencoded `:` would be a user name and a password; in a
    # PostgreSQL URL a bare user is only a user name.
    token = f"{user}@" if scheme.startswith("postgres") else secret.replace(":", "%3A") + "@"
    in_query = draw(st.integers(0, 3)) == 0  # mostly in the userinfo: unknown options fail
    userinfo = draw(
        st.sampled_from(
            ["", f"{user}@"] if in_query else [f"{user}:{secret}@", token, f":{secret}@"]
        )
    )
    names = mostly(st.sampled_from(options), pieces) if options else pieces
    query = draw(st.lists(st.tuples(names, values).map("=".join), max_size=3))
    if in_query:
        planted = f"{draw(st.sampled_from(SECRET_QUERY_NAMES))}={secret}"
        query.insert(draw(st.integers(0, len(query))), planted)
    url = f"{scheme}://{userinfo}{draw(hosts)}{draw(ports)}{draw(paths)}"
    if query or draw(st.booleans()):
        url += "?" + "&".join(query)
    return url + draw(fragments), secret


def _leaks(text: str, secret: str) -> bool:
    return any(form in text for form in {secret, unquote(secret), SECRET})


def _fuzz_parser(parser: UrlParser, url: str, secret: str) -> None:
    for side in parser.sides:
        with hostile.attempt(parser.name, refused=(ConfigurationError,)) as outcome:
            options = side(url)
            parser.use(options)
        if outcome.refused is not None:
            assert not _leaks(str(outcome.refused), secret), str(outcome.refused)
        else:
            assert not _leaks(repr(options), secret), repr(options)
            assert not _leaks(options.display, secret), options.display
            for name, value in vars(options).items():
                assert not isinstance(value, float) or math.isfinite(value), (name, value)


def _parser_test(parser: UrlParser) -> Callable[..., None]:
    """One Hypothesis test per parser, so each is counted and reported on its own."""

    @pytest.mark.hostile
    @hostile.fuzz
    @given(hostile_urls(parser.schemes, parser.options))
    def test(case: tuple[str, str]) -> None:
        _fuzz_parser(parser, *case)

    return test


test_nats_urls = _parser_test(PARSERS[0])
test_rabbitmq_urls = _parser_test(PARSERS[1])
test_redis_urls = _parser_test(PARSERS[2])
test_kafka_urls = _parser_test(PARSERS[3])
test_sqs_urls = _parser_test(PARSERS[4])
test_pulsar_urls = _parser_test(PARSERS[5])
test_http_urls = _parser_test(PARSERS[6])


def test_every_parser_is_fuzzed() -> None:
    assert [p.name for p in PARSERS] == [
        "NATS URL options", "RabbitMQ URL options", "Redis URL options", "Kafka URL options",
        "SQS URL options", "Pulsar URL options", "HTTP URL options",
    ]  # fmt: skip


ALL_SCHEMES = ("postgresql", "postgres", *(s for p in PARSERS for s in p.schemes))
ALL_OPTIONS = tuple(sorted({o for p in PARSERS for o in p.options} | {"sslmode", "host"}))


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@st.composite
def keyword_dsns(draw: st.DrawFn) -> tuple[str, str]:
    """A keyword DSN with a secret, quoted as libpq wants it, among hostile other pairs."""
    secret = draw(secrets)
    pairs = draw(
        st.lists(
            st.tuples(st.sampled_from(["host", "port", "dbname", "user", "sslmode", "x"]), pieces),
            max_size=5,
        )
    )
    where = draw(st.integers(0, len(pairs)))
    name = draw(st.sampled_from(["password", "sslpassword", "passfile", "options"]))
    spacing = draw(st.sampled_from(["=", " = ", "=\t"]))
    items = [f"{k}={v}" for k, v in pairs]
    items.insert(where, f"{name}{spacing}{_quoted(secret)}")
    return draw(st.sampled_from([" ", "  ", "\n"])).join(items), secret


@pytest.mark.hostile
@hostile.fuzz
@given(st.one_of(hostile_urls(ALL_SCHEMES, ALL_OPTIONS), keyword_dsns()))
def test_redacted_dsns_and_urls_never_show_the_secret(case: tuple[str, str]) -> None:
    dsn, secret = case
    with hostile.attempt("DSN redaction"):
        shown = redact_dsn(dsn)
    assert not _leaks(shown, secret), shown
    assert shown.isprintable()


@pytest.mark.hostile
@hostile.fuzz
@given(st.text())
def test_redaction_of_any_text_never_raises(text: str) -> None:
    with hostile.attempt("DSN redaction"):
        shown = redact_dsn(text)
    assert shown.isprintable()
