"""Keep credentials out of logs, errors, reprs and metrics.

`redact_dsn` is the one place that decides what of a DSN or broker URL may be shown:

- PostgreSQL DSNs are read by libpq itself (`psycopg.conninfo`), both forms: a keyword DSN
  is shown rebuilt from its parsed keywords, every value but those of `HARMLESS_OPTIONS`
  masked; a `postgresql://` URL is shown as a URL, masked like a broker URL. A DSN libpq
  cannot parse is shown as `UNPARSEABLE`, never echoed: nothing tells where its secret is.
- URLs: the whole userinfo up to the LAST `@` is the credential, so a password holding an
  unencoded `@`, `#`, `?` or `/` is still masked whole; a userinfo without a password is
  masked too except in `postgresql://` URLs (NATS, Pulsar and HTTP APIs take a bare token
  there); every query value whose name is not in `HARMLESS_OPTIONS` is masked (`code=`,
  `key=`, `sig=`, `X-Amz-Signature=`, names we do not know...), and so is any fragment.

Over-masking is the price of never guessing wrong: a URL with an `@` in its path or query
also loses what precedes that `@`.
"""

from __future__ import annotations

import re
from functools import cache
from urllib.parse import unquote_plus

import psycopg
from psycopg import conninfo

from outboxkit.outbox.broker_options import BROKER_OPTIONS

MASK = "***"
UNPARSEABLE = "<unparseable DSN>"

# Option names whose values are never secret: libpq's keywords that hold no credential, the
# postgresql:// publisher's own, and every broker URL table's options but secret ones
# (`BROKER_OPTIONS`, generated from brokers/*/options.py by scripts/brokers_doc.py).
# `password`, `sslpassword`, `passfile`, `options`, `scram_*_key` and `oauth_*` are left out
# on purpose. tests/unit/test_redact.py checks that every parser option is listed here.
HARMLESS_OPTIONS = BROKER_OPTIONS | frozenset(
    {
        # libpq
        "application_name", "channel_binding", "client_encoding", "connect_timeout",
        "dbname", "fallback_application_name", "gssdelegation", "gssencmode", "gsslib",
        "host", "hostaddr", "keepalives", "keepalives_count", "keepalives_idle",
        "keepalives_interval", "krbsrvname", "load_balance_hosts", "max_protocol_version",
        "min_protocol_version", "port", "replication", "require_auth", "requirepeer",
        "service", "ssl_max_protocol_version", "ssl_min_protocol_version", "sslcert",
        "sslcertmode", "sslcompression", "sslcrl", "sslcrldir", "sslkey", "sslmode",
        "sslnegotiation", "sslrootcert", "sslsni", "target_session_attrs",
        "tcp_user_timeout", "user",
        # postgresql:// publisher
        "consumer", "schema", "timeout",
    }
)  # fmt: skip

_PG_PREFIXES = ("postgresql://", "postgres://")  # what libpq reads as a URL (case matters)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")
_KEYWORD_SECRET = re.compile(
    r"\b((?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE
)
_QUERY_OR_FRAGMENT = re.compile(r"[?#]")
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")


def redact_dsn(dsn: str) -> str:
    """`dsn` (PostgreSQL keyword or URL form) or a broker URL, fit for messages and logs.

    Never raises and never shows a password, a token or an unknown query value (see the
    module docstring); unprintable characters come out as `\\xNN`/`\\uNNNN` escapes.
    """
    if dsn.startswith(_PG_PREFIXES):
        shown = _postgres_url(dsn)
    elif _SCHEME.match(dsn):
        shown = _url(dsn, bare_user_is_secret=True)
    else:
        shown = _keywords(dsn)
    return "".join(c if c.isprintable() else _escape(c) for c in shown)


def redact_text(text: str) -> str:
    """Free text (a readiness line, a client's error) with every URL in it redacted and
    any `password=`/`sslpassword=` keyword value masked: a last line of defence."""
    text = _URL_IN_TEXT.sub(_redact_match, text)
    return _KEYWORD_SECRET.sub(lambda m: m.group(1) + MASK, text)


def redact_message(message: str, dsn: str) -> str:
    """A libpq or psycopg error `message` about `dsn`, on one line, fit to show.

    These messages quote pieces of the DSN (`invalid port "…"`, `host '…'`), and a piece
    may be part of a password libpq misread as a host or port. A quoted piece stays only
    if the redacted DSN shows it anyway, or it is a libpq keyword or a single character.
    """
    shown = redact_dsn(dsn)
    keywords = _libpq_keywords()

    def piece(match: re.Match[str]) -> str:
        inner = match.group()[1:-1]
        if len(inner) <= 1 or inner in keywords or inner in shown:
            return match.group()
        return f"{match.group()[0]}{MASK}{match.group()[0]}"

    one_line = " ".join(message.split())
    return redact_text(_QUOTED.sub(piece, one_line))


# -- internals ------------------------------------------------------------------------------


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _redact_match(match: re.Match[str]) -> str:
    # A URL in a sentence: the punctuation after it is the sentence's.
    url = match.group()
    body = url.rstrip(".,;:!)]")
    return redact_dsn(body) + url[len(body) :]


def _keywords(dsn: str) -> str:
    try:
        found = conninfo.conninfo_to_dict(dsn)
        # libpq reads `host= password=x` as the host `password=x`: a value holding an `=`
        # may be the next pair.
        return conninfo.make_conninfo(
            "",
            **{
                k: v if k in HARMLESS_OPTIONS and "=" not in str(v) else MASK
                for k, v in found.items()
            },
        )
    except (psycopg.Error, ValueError, TypeError):  # UnicodeEncodeError is a ValueError
        return UNPARSEABLE


def _postgres_url(url: str) -> str:
    # libpq must accept it (less the postgresql:// publisher's own options, which it does
    # not know); how it is shown is then decided as for any URL, except that a bare user
    # is a user name, not a token.
    head, _, tail = url.partition("?")
    query, hash_, fragment = tail.partition("#")
    keywords = _libpq_keywords()
    kept = [p for p in query.split("&") if unquote_plus(p.partition("=")[0]) in keywords]
    libpq_part = head + (f"?{'&'.join(kept)}" if kept else "") + hash_ + fragment
    try:
        conninfo.conninfo_to_dict(libpq_part)
    except (psycopg.Error, ValueError, TypeError):
        return UNPARSEABLE
    return _url(url, bare_user_is_secret=False)


def _url(url: str, *, bare_user_is_secret: bool) -> str:
    scheme, _, rest = url.partition("://")
    at = rest.rfind("@")
    userinfo, in_query = "", False
    if at >= 0:
        before, rest = rest[:at], rest[at + 1 :]
        delimiter = _QUERY_OR_FRAGMENT.search(before)
        # Past a `?` or `#`, the `@` may be in a query value rather than in a password.
        in_query = delimiter is not None
        if delimiter and any(c in before[delimiter.start() :] for c in "=&"):
            return f"{scheme}://{MASK}@{MASK}"
        user, colon, password = before.partition(":")
        if any(c in user for c in "/?#@"):
            # The `@` sits in the path, or the user itself (a token) holds one of these.
            userinfo = f"{MASK}@"
        elif colon and (password or not bare_user_is_secret):
            userinfo = f"{user}:{MASK}@"
        else:  # `token@` or `token:@`
            userinfo = f"{MASK if bare_user_is_secret and user else user}{colon}@"
    rest, hash_, fragment = rest.partition("#")
    hostpath, question, query = rest.partition("?")
    if in_query and ("=" in hostpath or "&" in hostpath):
        hostpath = MASK  # not a host: the rest of that query
    shown = f"{scheme}://{userinfo}{hostpath}"
    if question:
        shown += "?" + "&".join(_query_item(item) for item in query.split("&"))
    if hash_:
        shown += "#" + (MASK if fragment else "")
    return shown


def _query_item(item: str) -> str:
    if not item:
        return item
    name, equals, value = item.partition("=")
    if not equals:
        return MASK  # a bare token, perhaps
    if unquote_plus(name) in HARMLESS_OPTIONS:
        return item
    return f"{name if _NAME.fullmatch(name) else MASK}={MASK if value else ''}"


@cache
def _libpq_keywords() -> frozenset[str]:
    return frozenset(o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults())
