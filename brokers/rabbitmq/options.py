"""`amqp://` and `amqps://` broker URLs and topic patterns, shared by the RabbitMQ publisher
and consumer.

Pure parsing: no import of the AMQP client here (the write path never imports a broker
client), so the publisher (`rabbitmq.publisher`) and the consumer
(`rabbitmq.consumer`) read one URL the same way: `OUTBOXKIT_BROKER` can serve both,
each side ignoring the options only the other uses.

URL: `amqp[s]://[user[:password]@]host[:port][/vhost][?option=value&...]`, the user, password
and vhost percent-quoted (the vhost `/` is the path `/` or empty, or `/%2F`). The options are
documented in `rabbitmq.publisher` and `rabbitmq.consumer`.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from outboxkit.brokers.url import NETLOC_PROBLEM, STRAY_AT, finite_float, shown_name, stray_at
from outboxkit.outbox.errors import ConfigurationError
from outboxkit.outbox.redact import redact_dsn
from outboxkit.outbox.topics import matches_any

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
DEFAULT_EXCHANGE = "outboxkit"
# RabbitMQ's default `max_message_size` (3.8 to 3.13): 128 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024
MAX_SHORTSTR = 255  # bytes: routing keys, exchange and queue names, header names
QUEUE_TYPES = ("classic", "quorum")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


@dataclass(frozen=True, kw_only=True)
class AmqpOptions:
    """The connection, topology and consumer settings parsed from an `amqp[s]://` URL."""

    display: str  # the URL without its password, for messages
    tls: bool = False
    host: str = "127.0.0.1"
    port: int = 5672
    user: str = field(default="guest", repr=False)  # `display` shows it with a password
    password: str = field(default="guest", repr=False)
    vhost: str = "/"
    # TLS (amqps://): CA bundle, client certificate, and whether to verify the server.
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True
    # connection
    timeout: float = 5.0  # seconds: publisher confirms, declarations, acks of naks
    connect_timeout: float = 5.0
    heartbeat: int = 30
    reconnect_wait: float = 2.0
    # topology
    exchange: str = DEFAULT_EXCHANGE
    declare: bool = True
    # publisher
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # consumer
    queue: str | None = None  # default: the inbox consumer name
    prefetch: int = 100
    dead_letter_exchange: str | None = None
    queue_type: str = "classic"

    def scrub(self, error: object) -> str:
        """`error` as text with the password masked (client errors may quote the URL)."""
        text = str(error) or type(error).__name__
        if self.password and self.password != "guest":
            text = text.replace(self.password, "***")
        return text


def _bool(raw: str) -> bool:
    if raw.lower() in _TRUE | _FALSE:
        return raw.lower() in _TRUE
    raise ValueError(f"expected true or false, got {raw!r}")


def _positive(kind: type[int] | Callable[[str], float]) -> Any:
    def convert(raw: str) -> object:
        value = kind(raw)
        if not value > 0:
            raise ValueError(f"expected a number > 0, got {raw!r}")
        return value

    return convert


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(f"expected a number >= 0, got {raw!r}")
    return value


def _name(raw: str) -> str:
    if not raw or len(raw.encode()) > MAX_SHORTSTR:
        raise ValueError(f"expected a name of 1 to {MAX_SHORTSTR} bytes, got {raw!r}")
    return raw


def _queue_type(raw: str) -> str:
    if raw not in QUEUE_TYPES:
        raise ValueError(f"queue_type must be one of {', '.join(QUEUE_TYPES)}, got {raw!r}")
    return raw


OPTIONS: dict[str, Any] = {
    "cafile": str,
    "certfile": str,
    "keyfile": str,
    "verify": _bool,
    "timeout": _positive(finite_float),
    "connect_timeout": _positive(finite_float),
    "heartbeat": _non_negative_int,
    "reconnect_wait": _positive(finite_float),
    "exchange": _name,
    "declare": _bool,
    "max_message_bytes": _positive(int),
    "queue": _name,
    "prefetch": _non_negative_int,
    "dead_letter_exchange": str,  # "" is RabbitMQ's default exchange, a legal target
    "queue_type": _queue_type,
}


def parse_url(url: str) -> AmqpOptions:
    """`AmqpOptions` from a broker URL; `ConfigurationError` for anything malformed."""
    shown = redact_dsn(url)
    if stray_at(url):
        raise ConfigurationError(f"invalid AMQP URL {shown}: {STRAY_AT}")
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        raise ConfigurationError(f"invalid AMQP URL {shown}: {NETLOC_PROBLEM}") from None
    if scheme not in DEFAULT_PORTS or not host:
        raise ConfigurationError(f"expected amqp://host[:port][/vhost] or amqps://…, got {shown}")
    fields: dict[str, Any] = {}
    if parts.username is not None:
        fields["user"] = unquote(parts.username)
        fields["password"] = unquote(parts.password or "")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    fields["vhost"] = unquote(path) or "/"
    try:
        for name, raw in parse_qsl(parts.query, keep_blank_values=True):
            if name not in OPTIONS:
                known = ", ".join(sorted(OPTIONS))
                raise ValueError(f"unknown option {shown_name(name)}; known: {known}")
            fields[name] = OPTIONS[name](raw)
    except ValueError as exc:
        raise ConfigurationError(f"invalid option in {shown}: {exc}") from None
    if scheme != "amqps" and any(k in fields for k in ("cafile", "certfile", "keyfile")):
        raise ConfigurationError(f"{shown}: cafile/certfile/keyfile need an amqps:// URL")
    if fields.get("keyfile") and not fields.get("certfile"):
        raise ConfigurationError(f"{shown}: keyfile= needs certfile=")
    return AmqpOptions(
        display=shown,
        tls=scheme == "amqps",
        host=host,
        port=port or DEFAULT_PORTS[scheme],
        **fields,
    )


def ssl_context(options: AmqpOptions) -> ssl.SSLContext | None:
    """The TLS context for an `amqps://` URL (None for `amqp://`)."""
    if not options.tls:
        return None
    context = ssl.create_default_context(cafile=options.cafile)
    if options.certfile:
        context.load_cert_chain(options.certfile, options.keyfile)
    if not options.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def describe(exc: BaseException, options: AmqpOptions) -> str:
    """An exception as one line for errors and logs, with the password masked."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = options.scrub(exc.args[0] if len(exc.args) == 1 else exc)
    return f"{type(exc).__name__}: {text}"


# -- topics and binding keys -------------------------------------------------------------


def routing_key_error(topic: str) -> str | None:
    """Why `topic` cannot be a routing key, or None."""
    size = len(topic.encode())
    if size > MAX_SHORTSTR:
        return f"topic is {size} bytes; an AMQP routing key has at most {MAX_SHORTSTR}"
    return None


def binding_key(pattern: str) -> str:
    """The narrowest AMQP topic binding key covering handler `pattern` (`*` = any run).

    Words without `*` stay literal (they can only match whole words of a topic); a word
    with a `*` becomes `#` (zero or more words), since our `*` also spans dots. An exact
    topic binds exactly. `#` may match more than the pattern: the consumer filters again.
    """
    words = ["#" if "*" in word or word == "#" else word for word in pattern.split(".")]
    collapsed: list[str] = []
    for word in words:
        if not (word == "#" and collapsed and collapsed[-1] == "#"):
            collapsed.append(word)
    return ".".join(collapsed)


def binding_keys(patterns: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The binding keys for `patterns`, without duplicates; just `#` if one covers all."""
    keys = sorted({binding_key(p) for p in patterns})
    return ("#",) if "#" in keys else tuple(keys)


def matches(patterns: tuple[str, ...], topic: str) -> bool:
    """Whether a handler pattern matches `topic` (the one rule, `outbox.topics`)."""
    return matches_any(patterns, topic)
