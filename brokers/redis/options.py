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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from outboxkit.brokers.url import SplitUrl
from outboxkit.brokers.url import scrub as _scrub
from outboxkit.brokers.url_options import CONNECT_TIMEOUT, Option, OptionTable
from outboxkit.brokers.url_values import BOOL, SECONDS, TEXT, choice, converter, integer

DEFAULT_PORT = 6379
PAYLOAD_FIELD = "outboxkit-payload"
CERT_REQS = ("required", "optional", "none")


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


@converter("stream key, not empty")
def _key(raw: str) -> str:
    if not raw:
        raise ValueError("a stream key cannot be empty")
    return raw


_TLS = "(rediss:// only)"
TABLE = OptionTable(
    label="Redis",
    form="redis://host[:port][/db] or rediss://...",
    schemes={"redis": DEFAULT_PORT, "rediss": DEFAULT_PORT},
    kind=RedisOptions,
    options=(
        Option("stream", _key, "the one stream every topic goes to"),
        Option("per_topic", BOOL, "each topic its own stream, `prefix + topic`"),
        Option("prefix", TEXT, "stream key prefix of per_topic=true (refused without it)"),
        Option("timeout", SECONDS, "seconds for any one command (a pipelined batch is one)"),
        CONNECT_TIMEOUT,
        Option("ssl_ca_certs", TEXT, f"CA bundle to verify the server with {_TLS}"),
        Option("ssl_certfile", TEXT, f"client certificate {_TLS}"),
        Option("ssl_keyfile", TEXT, f"client certificate's key {_TLS}"),
        Option("ssl_cert_reqs", choice(*CERT_REQS), f"server certificate check {_TLS}"),
        Option("ssl_check_hostname", BOOL, f"check the server's host name {_TLS}"),
        Option("maxlen", integer(0, above=True), "approximate cap of a stream", "publisher"),
        Option("max_message_bytes", integer(0, above=True), "largest message sent", "publisher"),
        Option("replicas", integer(0), "replicas that must confirm a write (WAIT)", "publisher"),
        Option(
            "claim_idle",
            SECONDS,
            "seconds before a pending entry of a dead consumer is claimed",
            side="consumer",
        ),
    ),
)
_TLS_ONLY = frozenset(name for name in TABLE.names() if name.startswith("ssl_"))


def parse_url(url: str) -> RedisOptions:
    """`RedisOptions` from a broker URL; `ConfigurationError` for anything malformed."""
    parts = TABLE.split(url)
    found = TABLE.read_url(parts)
    if parts.scheme != "rediss" and (tls_only := _TLS_ONLY & found.keys()):
        raise parts.error(f"{min(tls_only)} needs a rediss:// URL")
    if "prefix" in found and not found.get("per_topic", False):
        raise parts.error("prefix= applies only with per_topic=true")
    if "stream" in found and found.get("per_topic", False):
        raise parts.error("stream= and per_topic=true exclude each other")
    host = parts.hosts[0]
    return RedisOptions(
        host=host.name,
        port=host.port or DEFAULT_PORT,
        db=_db(parts),
        display=parts.shown,
        username=parts.user or None,
        password=parts.password,
        tls=parts.scheme == "rediss",
        **found,
    )


def _db(parts: SplitUrl) -> int:
    number = parts.path.strip("/")
    if not number:
        return 0
    if not (number.isascii() and number.isdigit()):
        # Not quoted: it may be a piece of a password with an unencoded `/`.
        raise parts.error("the database (the path, /N) must be a number")
    return int(number)


def scrub(error: object, options: RedisOptions) -> str:
    """`error` as text with the URL's password masked."""
    return _scrub(error, (options.password,))


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
