"""`http://` / `https://` webhook URLs, envelope headers and signatures, shared by the HTTP
publisher (`relay.brokers.http`) and the HTTP consumer (`inbox.consumers.http`).

Pure: no HTTP client is imported here (the write path never imports a broker client).

URL: `http[s]://[user:password@]host[:port]/path[?query]`. The URL itself is the endpoint.
`{topic}` in the path (also when percent-encoded, `%7Btopic%7D`) is replaced by the
message's topic, percent-encoded as one path segment (`/` becomes `%2F`):
`http://hooks.internal/events/{topic}`. Query parameters named `outboxkit_*` are outboxkit's
options and are removed; every other parameter belongs to the endpoint and is sent exactly
as written. A user and password in the URL are sent as HTTP Basic auth (and required by our
consumer); never put the signing secret in the URL: `outboxkit_secret_env` names the
environment variable holding it. The options are documented in `relay.brokers.http` and
`inbox.consumers.http`.

Headers (names are case-insensitive in HTTP; shown here as sent):

    Content-Type: <content_type>           Idempotency-Key: <message id>
    Outboxkit-Message-Id: <message id>     Outboxkit-Topic: <topic>
    Outboxkit-Key: <key>  (if any)         Outboxkit-Created-At: <ISO 8601>  (if known)
    Outboxkit-Attempt: <n>                 Outboxkit-Header-<name>: <user header value>
    Outboxkit-Signature: t=<unix seconds>,v1=<hex>  (with a secret)

Values of the topic, the key and user headers are percent-encoded as UTF-8 (like URL
components): `%`, spaces, control characters and non-ASCII are escaped, everything else is
sent as is, so `order.created` stays readable. User header names are encoded the same way,
upper-case letters are escaped too (`X-Id` -> `%58-%49d`) because HTTP does not keep the
case of header names, and escapes use lower-case hex, so names are all lower case (as HTTP/2
wants them): every user header round-trips exactly.

Signature (`outboxkit_secret_env=NAME`): `v1` is the hex HMAC-SHA256, keyed with the secret,
of the bytes

    f"{t}\\n{message_id}\\n{topic}\\n{key}\\n".encode() + body

where `t` is the `t=` value, `message_id`, `topic` and `key` are the `Outboxkit-Message-Id`,
`Outboxkit-Topic` and `Outboxkit-Key` header values exactly as received (still encoded; ""
without a key) and `body` is the raw request body. Unlike a signature of the body alone, it
also binds the message id (a replay under a fresh id would dodge the receiver's dedup) and
the topic (which chooses the handler); header values never contain a newline, so the
separators are unambiguous. To verify: split the header on `,`, take `t` and every `v1`,
refuse the request if `|now - t|` exceeds the tolerance (300 s by default: the replay
window), recompute the HMAC and compare it with each `v1` in constant time. The variable
may hold several secrets separated by whitespace: the publisher signs with each (one `v1`
per secret) and the receiver accepts any, so a secret can be rotated without downtime.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from outbox.envelope import CONTENT_TYPE, KEY, MESSAGE_ID, RESERVED, TOPIC, from_headers, to_headers
from outbox.errors import ConfigurationError, InvalidMessage
from outbox.message import Message
from outbox.redact import HARMLESS_OPTIONS, redact_dsn
from outbox.url_options import NETLOC_PROBLEM, STRAY_AT, finite_float, shown_name, stray_at

OPTION_PREFIX = "outboxkit_"
HEADER_PREFIX = "outboxkit-header-"
ATTEMPT = "outboxkit-attempt"
SIGNATURE = "outboxkit-signature"
IDEMPOTENCY_KEY = "idempotency-key"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024

_PLACEHOLDER = re.compile(r"\{topic\}|%7Btopic%7D", re.IGNORECASE)
# Printable ASCII but `%`: what a header value keeps unescaped (quote() adds letters, digits, _.-~).
_VALUE_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%" and not chr(c).isalnum())
# A header name's token characters, without `%` (the escape) and without upper case.
_NAME_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789!#$&'*+-.^_`|~")
_VISIBLE = re.compile(r"[\x20-\x7e]*")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


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
    # consumer
    listen: tuple[str, int] | None = None
    tolerance: float = 300.0
    hold_timeout: float = 60.0

    def url_for(self, topic: str) -> str:
        """The URL a message of `topic` is posted to."""
        path = self.path_prefix
        if self.path_suffix is not None:
            path += quote(topic, safe="") + self.path_suffix
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


Converter = Callable[[str], Any]


def _bool(raw: str) -> bool:
    if raw.lower() in _TRUE | _FALSE:
        return raw.lower() in _TRUE
    raise ValueError(f"expected true or false, got {raw!r}")


def _positive(raw: str) -> float:
    value = finite_float(raw)
    if not value > 0:
        raise ValueError(f"expected a number > 0, got {raw!r}")
    return value


def _count(low: int, high: int) -> Converter:
    def convert(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {raw!r}")
        return value

    return convert


def _env_name(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", raw):
        raise ValueError(f"expected the name of an environment variable, got {raw!r}")
    return raw


def _statuses(raw: str) -> frozenset[int]:
    found = frozenset(int(s) for s in raw.split(",") if s.strip())
    if any(not 400 <= s <= 499 for s in found):
        raise ValueError(f"expected 4xx statuses separated by commas, got {raw!r}")
    return found


def _listen(raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {raw!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


OPTIONS: dict[str, Converter] = {
    "timeout": _positive,
    "secret_env": _env_name,
    "max_bytes": _count(1, 2**31),
    "connect_timeout": _positive,
    "concurrency": _count(1, 1024),
    "retry_status": _statuses,
    "ca_file": str,
    "listen": _listen,
    "tolerance": _positive,
    "hold_timeout": _positive,
}


def parse_url(url: str) -> HttpOptions:
    """`HttpOptions` from an `http[s]://` URL; `ConfigurationError` for anything malformed."""
    shown = redact_dsn(url)
    if stray_at(url):
        raise ConfigurationError(f"invalid HTTP URL {shown}: {STRAY_AT}")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ConfigurationError(f"invalid HTTP URL {shown}: {NETLOC_PROBLEM}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        raise ConfigurationError(f"expected http[s]://host[:port]/path, got {shown}")
    if parts.fragment:
        raise ConfigurationError(f"{shown}: a webhook URL has no #fragment")
    path = parts.path or "/"
    pieces = _PLACEHOLDER.split(path)
    if len(pieces) > 2:
        raise ConfigurationError(f"{shown}: {{topic}} may appear once in the path")
    if _PLACEHOLDER.search(parts.query):
        raise ConfigurationError(f"{shown}: {{topic}} is only replaced in the path")
    kept, fields = [], {}
    try:
        for item in filter(None, parts.query.split("&")):
            raw_name, _, raw_value = item.partition("=")
            name = unquote(raw_name)
            if not name.startswith(OPTION_PREFIX):
                kept.append(item)  # the endpoint's own: sent as written
                continue
            option = name[len(OPTION_PREFIX) :]
            if option not in OPTIONS:
                known = ", ".join(OPTION_PREFIX + o for o in sorted(OPTIONS))
                raise ValueError(f"unknown option {shown_name(name)}; known: {known}")
            fields[option] = OPTIONS[option](unquote(raw_value.replace("+", " ")))
    except ValueError as exc:
        raise ConfigurationError(f"invalid option in {shown}: {exc}") from None
    hostport = parts.netloc.rpartition("@")[2]
    return HttpOptions(
        scheme=scheme,
        host=host,
        port=port or (443 if scheme == "https" else 80),
        origin=f"{scheme}://{hostport}",
        path_prefix=pieces[0],
        path_suffix=pieces[1] if len(pieces) == 2 else None,
        query="&".join(kept),
        display=shown,
        user=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        **fields,
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
        target[key] = decoded
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


# -- signatures -------------------------------------------------------------------------


def signed_content(timestamp: int, message_id: str, topic: str, key: str, body: bytes) -> bytes:
    """The bytes the `v1` HMAC covers (header values as sent; see the module docstring)."""
    return f"{timestamp}\n{message_id}\n{topic}\n{key}\n".encode() + body


def sign(secrets: list[bytes], timestamp: int, headers: Mapping[str, str], body: bytes) -> str:
    """The `Outboxkit-Signature` value for a request with these envelope `headers`."""
    content = _content(timestamp, headers, body)
    digests = (hmac.new(s, content, hashlib.sha256).hexdigest() for s in secrets)
    return ",".join([f"t={timestamp}", *(f"v1={d}" for d in digests)])


def verify(
    secrets: list[bytes],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float,
) -> str | None:
    """Why the request's `Outboxkit-Signature` fails (None: it is valid)."""
    raw = headers.get(SIGNATURE)
    if not raw:
        return "missing signature"
    timestamp, candidates = None, []
    for item in raw.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and value.isdigit() and len(value) < 16:
            timestamp = int(value)
        elif name == "v1" and value.strip().isascii():
            candidates.append(value.strip())
    if timestamp is None or not candidates:
        return "malformed signature"
    if abs(now - timestamp) > tolerance:
        return "signature timestamp outside the tolerance"
    content = _content(timestamp, headers, body)
    for secret in secrets:
        expected = hmac.new(secret, content, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, c) for c in candidates):
            return None
    return "signature mismatch"


def _content(timestamp: int, headers: Mapping[str, str], body: bytes) -> bytes:
    return signed_content(
        timestamp,
        headers.get(MESSAGE_ID, ""),
        headers.get(TOPIC, ""),
        headers.get(KEY, ""),
        body,
    )
