"""`redis://` and `rediss://` broker URLs and the stream entry layout, shared by the Redis
Streams publisher (`redis.publisher`) and consumer (`redis.consumer`).

Pure parsing: no import of the `redis` client here (the write path never imports a broker
client).

URL: `redis[s]://[[user]:password@]host[:port][/db][?option=value&...]` (`rediss` is TLS).
The options both sides read:

- `stream=outboxkit`: the one stream every topic goes to (the default layout).
- `per_topic=false`: `true` gives each topic its own stream, `prefix + topic`.
- `prefix=outboxkit:`: the stream key prefix of `per_topic=true` (refused without it).
- `timeout=5`: seconds for any one command; a pipelined batch is written in one go, so
  raise it if a whole batch of large messages takes longer to send over your link.
- `connect_timeout=5`: seconds to open a connection.
- `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`, `ssl_cert_reqs=required|optional|none`,
  `ssl_check_hostname=true`: TLS settings, `rediss://` only.

Publisher only (ignored by the consumer, so one URL serves both): `maxlen`,
`max_message_bytes`, `replicas`. Consumer only (ignored by the publisher): `claim_idle`.
Both are documented in their modules.

Stream entry layout: one field per envelope header (`outbox.envelope.to_headers`: the
`outboxkit-*` fields, `content-type`, and each user header under its own name), plus the
payload, as raw bytes, in the field `outboxkit-payload`. Names and header values are UTF-8.
A user header called `outboxkit-payload` would collide with the payload: the publisher
rejects such a message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from outboxkit.brokers.url import NETLOC_PROBLEM, STRAY_AT, finite_float, shown_name, stray_at
from outboxkit.outbox.errors import ConfigurationError
from outboxkit.outbox.redact import redact_dsn

DEFAULT_PORT = 6379
PAYLOAD_FIELD = "outboxkit-payload"
CERT_REQS = ("required", "optional", "none")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}

Converter = Callable[[str], object]


@dataclass(frozen=True, kw_only=True)
class RedisOptions:
    """The connection, layout and side-specific settings parsed from a Redis URL."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    display: str
    username: str | None = field(default=None, repr=False)  # alone, it may be a token
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    stream: str = "outboxkit"
    per_topic: bool = False
    prefix: str = "outboxkit:"
    timeout: float = 5.0
    connect_timeout: float = 5.0
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: str = "required"
    ssl_check_hostname: bool = True
    # publisher
    maxlen: int | None = None
    max_message_bytes: int | None = None
    replicas: int = 0
    # consumer
    claim_idle: float = 30.0

    def stream_for(self, topic: str) -> str:
        """The stream key a message of `topic` goes to."""
        return self.prefix + topic if self.per_topic else self.stream

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `redis.asyncio.Redis` for this URL (retries excluded)."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "db": self.db,
            "username": self.username,
            "password": self.password,
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.connect_timeout,
        }
        if self.tls:
            kwargs |= {
                "ssl": True,
                "ssl_ca_certs": self.ssl_ca_certs,
                "ssl_certfile": self.ssl_certfile,
                "ssl_keyfile": self.ssl_keyfile,
                "ssl_cert_reqs": self.ssl_cert_reqs,
                "ssl_check_hostname": self.ssl_check_hostname,
            }
        return kwargs


def to_bool(raw: str) -> bool:
    """`true`/`false` (also 1/0, yes/no, on/off)."""
    if raw.lower() in _TRUE | _FALSE:
        return raw.lower() in _TRUE
    raise ValueError(f"expected true or false, got {raw!r}")


def _positive(kind: type[int] | Callable[[str], float]) -> Converter:
    def convert(raw: str) -> object:
        value = kind(raw)
        if not value > 0:
            raise ValueError(f"expected a number > 0, got {raw!r}")
        return value

    return convert


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(f"expected a whole number >= 0, got {raw!r}")
    return value


def _key(raw: str) -> str:
    if not raw:
        raise ValueError("a stream key cannot be empty")
    return raw


def _cert_reqs(raw: str) -> str:
    if raw not in CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be one of {', '.join(CERT_REQS)}, got {raw!r}")
    return raw


OPTIONS: dict[str, Converter] = {
    "stream": _key,
    "per_topic": to_bool,
    "prefix": str,
    "timeout": _positive(finite_float),
    "connect_timeout": _positive(finite_float),
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_check_hostname": to_bool,
    "maxlen": _positive(int),
    "max_message_bytes": _positive(int),
    "replicas": _non_negative_int,
    "claim_idle": _positive(finite_float),
}
_TLS_ONLY = frozenset(name for name in OPTIONS if name.startswith("ssl_"))


def parse_url(url: str) -> RedisOptions:
    """`RedisOptions` from a broker URL; `ConfigurationError` for anything malformed."""
    shown = redact_dsn(url)
    if stray_at(url):
        raise ConfigurationError(f"invalid Redis URL {shown}: {STRAY_AT}")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigurationError(f"invalid Redis URL {shown}: {NETLOC_PROBLEM}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss") or not host:
        raise ConfigurationError(f"expected redis://host[:port][/db] or rediss://..., got {shown}")
    found: dict[str, Any] = {}
    try:
        found["db"] = _db(parts.path)
        for name, raw in parse_qsl(parts.query, keep_blank_values=True):
            if name not in OPTIONS:
                known = ", ".join(sorted(OPTIONS))
                raise ValueError(f"unknown option {shown_name(name)}; known: {known}")
            if name in _TLS_ONLY and scheme != "rediss":
                raise ValueError(f"{name} needs a rediss:// URL")
            found[name] = OPTIONS[name](raw)
    except ValueError as exc:
        raise ConfigurationError(f"invalid option in {shown}: {exc}") from None
    if "prefix" in found and not found.get("per_topic", False):
        raise ConfigurationError(f"{shown}: prefix= applies only with per_topic=true")
    if "stream" in found and found.get("per_topic", False):
        raise ConfigurationError(f"{shown}: stream= and per_topic=true exclude each other")
    return RedisOptions(
        host=host,
        port=port,
        display=shown,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=scheme == "rediss",
        **found,
    )


def _db(path: str) -> int:
    number = path.strip("/")
    if not number:
        return 0
    if not (number.isascii() and number.isdigit()):
        # Not quoted: it may be a piece of a password with an unencoded `/`.
        raise ValueError("the database (the path, /N) must be a number")
    return int(number)


def scrub(error: object, options: RedisOptions) -> str:
    """`error` as text with the URL's password masked."""
    text = str(error) or type(error).__name__
    if options.password:
        text = text.replace(options.password, "***")
    return text


def to_fields(headers: Mapping[str, str], payload: bytes) -> dict[bytes, bytes]:
    """The stream entry for a message: its envelope headers plus the payload field."""
    entry = {name.encode(): value.encode() for name, value in headers.items()}
    entry[PAYLOAD_FIELD.encode()] = payload
    return entry


def from_fields(entry: Mapping[bytes, bytes]) -> tuple[dict[str, str], bytes]:
    """The envelope headers and the payload of a stream entry.

    `ValueError` if the payload field is missing or a name or header is not UTF-8.
    """
    payload = entry.get(PAYLOAD_FIELD.encode())
    if payload is None:
        raise ValueError(f"no {PAYLOAD_FIELD} field")
    headers = {
        name.decode(): value.decode()
        for name, value in entry.items()
        if name != PAYLOAD_FIELD.encode()
    }
    return headers, payload
