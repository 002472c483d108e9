"""`http://` / `https://` webhook URLs, envelope headers and signatures, shared by the HTTP
publisher (`http.publisher`) and the HTTP consumer (`http.consumer`).

Pure: no HTTP client is imported here (the write path never imports a broker client).

URL: `http[s]://[user:password@]host[:port]/path[?query]`. The URL itself is the endpoint.
`{topic}` in the path (also when percent-encoded, `%7Btopic%7D`) is replaced by the
message's topic, percent-encoded as one path segment (`/` becomes `%2F`, and a topic `.` or
`..` becomes `%2E` or `%2E%2E`, so no topic climbs out of its segment):
`http://hooks.internal/events/{topic}`. Query parameters named `outboxkit_*` are outboxkit's
options and are removed; every other parameter belongs to the endpoint and is sent exactly
as written. A user and password in the URL are sent as HTTP Basic auth (and required by our
consumer); never put the signing secret in the URL: `outboxkit_secret_env` names the
environment variable holding it. The options are documented in `http.publisher` and
`http.consumer`.

Headers (names are case-insensitive in HTTP; shown here as sent):

    Content-Type: <content_type>           Idempotency-Key: <message id>
    Outboxkit-Message-Id: <message id>     Outboxkit-Topic: <topic>
    Outboxkit-Key: <key>  (if any)         Outboxkit-Created-At: <ISO 8601>  (if known)
    Outboxkit-Attempt: <n>                 Outboxkit-Header-<name>: <user header value>
    Content-Digest: sha-256=:<base64>:     (with a secret)
    Outboxkit-Signature: t=<unix seconds>,v2=<hex>  (with a secret)

Values of the topic, the key and user headers are percent-encoded as UTF-8 (like URL
components): `%`, spaces, control characters and non-ASCII are escaped, everything else is
sent as is, so `order.created` stays readable. User header names are encoded the same way,
upper-case letters are escaped too (`X-Id` -> `%58-%49d`) because HTTP does not keep the
case of header names, and escapes use lower-case hex, so names are all lower case (as HTTP/2
wants them): every user header round-trips exactly. A receiver refuses (400) a decoded value
that cannot be stored: control characters (NUL included; user header values may hold
newlines), text that is not UTF-8, or more bytes than `outbox.limits` allows.

Signature (`outboxkit_secret_env=NAME`): `Content-Digest` and `Outboxkit-Signature: t=<unix
seconds>,v2=<hex>`, an HMAC-SHA256 over every envelope field, every user header, the attempt
and the body digest; `http.signature` defines it precisely. Options:
`outboxkit_sign=v2` (the publisher's; `v1,v2` also signs the old way, for receivers not yet
upgraded) and `outboxkit_accept_v1=false` (the receiver's; true accepts the old `v1`, which
leaves the attempt, the content type and user headers unsigned: for a rolling upgrade only).

A receiver needs credentials: a secret or a user in the URL. Without either our consumer
refuses to start unless the URL says `outboxkit_insecure_no_auth=true` (then it logs a
warning): anyone who can reach it could otherwise post messages into its inbox.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from outboxkit.brokers.http.signature import DEFAULT_VERSIONS, VERSIONS
from outboxkit.brokers.url_options import Option, OptionTable
from outboxkit.brokers.url_values import BOOL, SECONDS, TEXT, converter, integer
from outboxkit.outbox import limits
from outboxkit.outbox.envelope import CONTENT_TYPE, KEY, RESERVED, TOPIC, from_headers, to_headers
from outboxkit.outbox.errors import ConfigurationError, InvalidMessage
from outboxkit.outbox.message import Message
from outboxkit.outbox.redact import HARMLESS_OPTIONS

OPTION_PREFIX = "outboxkit_"
HEADER_PREFIX = "outboxkit-header-"
ATTEMPT = "outboxkit-attempt"
IDEMPOTENCY_KEY = "idempotency-key"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_BUFFERED_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 256

_PLACEHOLDER = re.compile(r"\{topic\}|%7Btopic%7D", re.IGNORECASE)
# Printable ASCII but `%`: what a header value keeps unescaped (quote() adds letters, digits, _.-~).
_VALUE_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%" and not chr(c).isalnum())
# A header name's token characters, without `%` (the escape) and without upper case.
_NAME_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789!#$&'*+-.^_`|~")
_VISIBLE = re.compile(r"[\x20-\x7e]*")


@dataclass(frozen=True, kw_only=True)
class HttpOptions:
    """An `http[s]://` URL's endpoint and `outboxkit_*` options (both sides' options)."""

    scheme: str
    host: str  # the hostname (IPv6 without brackets)
    port: int
    origin: str  # scheme://host:port as written, without user info
    path_prefix: str  # the raw path up to `{topic}` (or the whole path)
    path_suffix: str | None  # the raw path after `{topic}`; None: no `{topic}` in the path
    query: str = field(repr=False)  # the endpoint's own query string, raw (may hold a key)
    display: str  # the URL for messages and logs: no password
    user: str | None = field(default=None, repr=False)  # alone, it may be a token
    password: str | None = field(default=None, repr=False)
    # publisher and consumer
    timeout: float = 10.0
    secret_env: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    # publisher
    connect_timeout: float = 5.0
    concurrency: int = 16
    retry_status: frozenset[int] = frozenset()
    ca_file: str | None = None
    sign: tuple[str, ...] = DEFAULT_VERSIONS
    # consumer
    listen: tuple[str, int] | None = None
    tolerance: float = 300.0
    hold_timeout: float = 60.0
    accept_v1: bool = False
    insecure_no_auth: bool = False
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES

    def url_for(self, topic: str) -> str:
        """The URL a message of `topic` is posted to."""
        path = self.path_prefix
        if self.path_suffix is not None:
            path += topic_segment(topic) + self.path_suffix
        return f"{self.origin}{path}" + (f"?{self.query}" if self.query else "")

    def match_path(self, raw_path: str) -> tuple[bool, str | None]:
        """Whether a request's raw (still encoded) path is this endpoint, and its topic."""
        if self.path_suffix is None:
            return raw_path.rstrip("/") == self.path_prefix.rstrip("/"), None
        prefix, suffix = self.path_prefix, self.path_suffix
        if len(raw_path) <= len(prefix) + len(suffix) or not raw_path.startswith(prefix):
            return False, None
        if not raw_path.endswith(suffix):
            return False, None
        segment = raw_path[len(prefix) : len(raw_path) - len(suffix)]
        if "/" in segment:
            return False, None
        try:
            return True, unquote(segment, errors="strict")
        except UnicodeDecodeError:
            return False, None

    @property
    def authenticated(self) -> bool:
        """Whether a receiver checks credentials: a signing secret or a Basic user."""
        return self.secret_env is not None or self.user is not None

    @property
    def listen_address(self) -> tuple[str, int]:
        """Where a consumer listens: `outboxkit_listen`, else the URL's host and port."""
        return self.listen or (self.host, self.port)

    def secrets(self) -> list[bytes]:
        """The signing secrets from the environment variable `secret_env` names ([]: none).

        Read when a publisher or consumer starts, never at import;
        `ConfigurationError` if the variable is unset or empty.
        """
        if self.secret_env is None:
            return []
        found = os.environ.get(self.secret_env, "").split()
        if not found:
            raise ConfigurationError(
                f"the environment variable {self.secret_env} (outboxkit_secret_env in "
                f"{self.display}) is not set or empty"
            )
        return [secret.encode() for secret in found]

    def scrub(self, error: object) -> str:
        """`error` as text with the URL's password and query keys (`code=`…) masked."""
        text = str(error) or type(error).__name__
        if self.password:
            text = text.replace(self.password, "***")
        for item in filter(None, self.query.split("&")):
            name, _, raw = item.partition("=")
            # A value of a few characters would mask half the text and protect nothing.
            if unquote(name) not in HARMLESS_OPTIONS and len(raw) >= 4:
                for form in {raw, unquote(raw.replace("+", " "))}:
                    text = text.replace(form, "***")
        return text


def topic_segment(topic: str) -> str:
    """`topic` as one path segment: `/` escaped, and `.`/`..` escaped too, since clients and
    proxies remove those dot segments (`/events/../in` is `/in`)."""
    segment = quote(topic, safe="")
    return "%2E" * len(segment) if segment in (".", "..") else segment


@converter("environment variable name")
def _env_name(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", raw):
        raise ValueError(f"expected the name of an environment variable, got {raw!r}")
    return raw


@converter("4xx statuses, comma-separated")
def _statuses(raw: str) -> frozenset[int]:
    found = frozenset(int(s) for s in raw.split(",") if s.strip())
    if any(not 400 <= s <= 499 for s in found):
        raise ValueError(f"expected 4xx statuses separated by commas, got {raw!r}")
    return found


@converter("v2 or v1,v2")
def _versions(raw: str) -> tuple[str, ...]:
    found = tuple(dict.fromkeys(v.strip() for v in raw.split(",") if v.strip()))
    if "v2" not in found or any(v not in VERSIONS for v in found):
        raise ValueError(f"expected v2 or v1,v2, got {raw!r}")
    return found


@converter("host:port")
def _listen(raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {raw!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


TABLE = OptionTable(
    label="HTTP",
    form="http[s]://host[:port]/path",
    schemes={"http": 80, "https": 443},
    kind=HttpOptions,
    prefix=OPTION_PREFIX,
    options=(
        Option("timeout", SECONDS, "seconds for a request (publisher) or a body (consumer)"),
        Option("secret_env", _env_name, "the environment variable holding the signing secrets"),
        Option("max_bytes", integer(1, 2**31), "largest body sent or accepted"),
        Option("connect_timeout", SECONDS, "seconds to open a connection", "publisher"),
        Option("concurrency", integer(1, 1024), "requests in flight", "publisher"),
        Option(
            "retry_status",
            _statuses,
            "4xx statuses that are retried, not rejected",
            side="publisher",
        ),
        Option("ca_file", TEXT, "CA bundle to verify an https:// endpoint with", "publisher"),
        Option("sign", _versions, "signature versions sent", "publisher"),
        Option(
            "listen", _listen, "where the consumer listens", "consumer", default="the URL's host"
        ),
        Option("tolerance", SECONDS, "seconds a signature's time may be off", "consumer"),
        Option("hold_timeout", SECONDS, "seconds a request waits for its inbox batch", "consumer"),
        Option("accept_v1", BOOL, "accept v1 signatures (rolling upgrades only)", "consumer"),
        Option(
            "insecure_no_auth",
            BOOL,
            "run the consumer without any credentials (logs a warning)",
            side="consumer",
        ),
        Option("max_connections", integer(1, 65536), "connections served at once", "consumer"),
        Option(
            "max_buffered_bytes",
            integer(1, 2**40),
            "bytes of bodies held in memory at once",
            side="consumer",
        ),
    ),
)


def parse_url(url: str) -> HttpOptions:
    """`HttpOptions` from an `http[s]://` URL; `ConfigurationError` for anything malformed."""
    parts = TABLE.split(url)
    if parts.fragment or url.endswith("#"):
        raise parts.error("a webhook URL has no #fragment")
    pieces = _PLACEHOLDER.split(parts.path or "/")
    if len(pieces) > 2:
        raise parts.error("{topic} may appear once in the path")
    if _PLACEHOLDER.search(parts.query):
        raise parts.error("{topic} is only replaced in the path")
    ours = [(n, v) for n, v, _ in parts.items() if n.startswith(OPTION_PREFIX)]
    kept = [item for n, _, item in parts.items() if not n.startswith(OPTION_PREFIX)]
    host = parts.hosts[0]
    return HttpOptions(
        scheme=parts.scheme,
        host=host.name,
        port=host.port or 80,  # (the table gives each scheme its default)
        origin=f"{parts.scheme}://{parts.netloc}",
        path_prefix=pieces[0],
        path_suffix=pieces[1] if len(pieces) == 2 else None,
        query="&".join(kept),  # the endpoint's own: sent as written
        display=parts.shown,
        user=parts.user,
        password=parts.password,
        **TABLE.read(ours, parts.shown),
    )


# -- header values and names --------------------------------------------------------------


def encode_value(value: str) -> str:
    """A header value for `value`: `%`, blanks, controls and non-ASCII percent-encoded."""
    return quote(value, safe=_VALUE_SAFE)


def decode_value(raw: str) -> str:
    """The value `encode_value` encoded; `ValueError` if it is not valid UTF-8."""
    return unquote(raw, errors="strict")


def encode_name(name: str) -> str:
    """A header-name token for a user header name (case kept by escaping upper case)."""
    return "".join(c if c in _NAME_SAFE else "".join(f"%{b:02x}" for b in c.encode()) for c in name)


def decode_name(raw: str) -> str:
    """The user header name `encode_name` encoded (case-insensitive escapes)."""
    return unquote(raw, errors="strict")


def envelope_headers(message: Message) -> dict[str, str]:
    """The HTTP headers carrying `message`'s envelope (lower-case names).

    `InvalidMessage` if its content type cannot be an HTTP header value.
    """
    headers: dict[str, str] = {}
    for name, value in to_headers(message).items():
        if name == CONTENT_TYPE:
            if not _VISIBLE.fullmatch(value) or value != value.strip():
                raise InvalidMessage(f"content type {value!r} is not a valid HTTP header value")
            headers[name] = value
        elif name in RESERVED:
            headers[name] = encode_value(value)
        else:
            headers[HEADER_PREFIX + encode_name(name)] = encode_value(value)
    headers[IDEMPOTENCY_KEY] = str(message.message_id)
    return headers


def message_from_headers(
    headers: Iterable[tuple[str, str]], body: bytes, *, topic: str | None = None
) -> Message:
    """The message carried by HTTP `headers` (lower-case names, values as received) and
    `body`; `topic` is the path's if the URL has `{topic}`. `InvalidMessage` if broken."""
    envelope: dict[str, str] = {}
    user: dict[str, str] = {}
    for name, value in headers:
        if name in RESERVED:
            target, key = envelope, name
        elif name.startswith(HEADER_PREFIX):
            target, key = user, name[len(HEADER_PREFIX) :]
        else:
            continue
        try:
            if target is user:
                key = decode_name(key)
            decoded = value if name == CONTENT_TYPE else decode_value(value)
        except UnicodeDecodeError:
            raise InvalidMessage(f"header {name} is not valid percent-encoded UTF-8") from None
        if key in target:
            raise InvalidMessage(f"header {name} appears more than once")
        _check_storable(name, key if target is user else None, decoded)
        target[key] = decoded
    if len(user) > limits.MAX_HEADERS:
        raise InvalidMessage(f"{len(user)} user headers; the maximum is {limits.MAX_HEADERS}")
    size = sum(limits.utf8_length(k) + limits.utf8_length(v) for k, v in user.items())
    if size > limits.MAX_HEADERS_BYTES:
        raise InvalidMessage(
            f"user headers are {size} bytes; the maximum is {limits.MAX_HEADERS_BYTES}"
        )
    if topic is not None and (problem := limits.text_problem(topic, limits.MAX_TOPIC_BYTES)):
        raise InvalidMessage(f"the topic in the path {problem}")
    message = from_headers(user | envelope, body, topic=topic)
    if topic is not None and message.topic != topic:
        raise InvalidMessage(
            f"{TOPIC} {message.topic!r} differs from the topic {topic!r} in the path"
        )
    return message


def attempt_of(headers: Mapping[str, str]) -> int:
    """`Outboxkit-Attempt` as a number >= 1 (1 when missing or malformed)."""
    raw = headers.get(ATTEMPT, "")
    return max(int(raw), 1) if raw.isdigit() and len(raw) < 10 else 1


# The UTF-8 bytes each decoded envelope field may hold (others: the key's limit).
_FIELD_LIMITS = {
    TOPIC: limits.MAX_TOPIC_BYTES,
    KEY: limits.MAX_KEY_BYTES,
    CONTENT_TYPE: limits.MAX_CONTENT_TYPE_BYTES,
}


def _check_storable(header: str, user_name: str | None, value: str) -> None:
    """`InvalidMessage` unless the decoded field can be stored in the inbox.

    Checked here, before the message exists: a NUL or a lone surrogate that reached the
    inbox's INSERT would fail the whole batch's transaction, every time it is redelivered.
    """
    if user_name is not None:
        if problem := limits.text_problem(user_name, limits.MAX_HEADER_NAME_BYTES):
            raise InvalidMessage(f"header {header}: the name {problem}")
        problem = limits.text_problem(value, limits.MAX_HEADER_VALUE_BYTES, allow_newlines=True)
    else:
        problem = limits.text_problem(value, _FIELD_LIMITS.get(header, limits.MAX_KEY_BYTES))
    if problem:
        raise InvalidMessage(f"header {header} {problem}")
