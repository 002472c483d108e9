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
from dataclasses import dataclass, field
from urllib.parse import unquote

from outboxkit.brokers.url import scrub
from outboxkit.brokers.url_options import CONNECT_TIMEOUT, Option, OptionTable
from outboxkit.brokers.url_values import BOOL, SECONDS, TEXT, choice, converter, integer
from outboxkit.outbox.topics import matches_any

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
DEFAULT_EXCHANGE = "outboxkit"
# RabbitMQ's default `max_message_size` (3.8 to 3.13): 128 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024
MAX_SHORTSTR = 255  # bytes: routing keys, exchange and queue names, header names
QUEUE_TYPES = ("classic", "quorum")


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
        return scrub(error, (self.password if self.password != "guest" else None,))


@converter(f"name of 1 to {MAX_SHORTSTR} bytes")
def _name(raw: str) -> str:
    if not raw or len(raw.encode()) > MAX_SHORTSTR:
        raise ValueError(f"expected a name of 1 to {MAX_SHORTSTR} bytes, got {raw!r}")
    return raw


TABLE = OptionTable(
    label="AMQP",
    form="amqp://host[:port][/vhost] or amqps://…",
    schemes=DEFAULT_PORTS,
    kind=AmqpOptions,
    options=(
        Option("cafile", TEXT, "CA bundle to verify the server with (amqps:// only)"),
        Option("certfile", TEXT, "client certificate (amqps:// only)"),
        Option("keyfile", TEXT, "client certificate's key (amqps:// only; needs certfile)"),
        Option("verify", BOOL, "verify the server's certificate and host name"),
        Option("timeout", SECONDS, "seconds for publisher confirms, declarations and acks"),
        CONNECT_TIMEOUT,
        Option("heartbeat", integer(0), "seconds between AMQP heartbeats (0: none)"),
        Option("reconnect_wait", SECONDS, "seconds between reconnection attempts"),
        Option("exchange", _name, "the topic exchange messages are published to"),
        Option("declare", BOOL, "declare the exchange (and the consumer's queue) if missing"),
        Option(
            "max_message_bytes",
            integer(0, above=True),
            "largest message sent (the broker's max_message_size)",
            side="publisher",
        ),
        Option(
            "queue", _name, "the consumer's queue", side="consumer", default="the consumer name"
        ),
        Option("prefetch", integer(0), "unacked deliveries in flight (0: no limit)", "consumer"),
        Option(
            "dead_letter_exchange",
            TEXT,  # "" is RabbitMQ's default exchange, a legal target
            "exchange of the consumer queue's dead letters",
            side="consumer",
        ),
        Option("queue_type", choice(*QUEUE_TYPES), "type of a queue we declare", "consumer"),
    ),
)


def parse_url(url: str) -> AmqpOptions:
    """`AmqpOptions` from a broker URL; `ConfigurationError` for anything malformed."""
    parts = TABLE.split(url)
    fields = TABLE.read_url(parts)
    if parts.user is not None:
        fields["user"] = parts.user
        fields["password"] = parts.password or ""
    fields["vhost"] = unquote(parts.path.removeprefix("/")) or "/"
    if parts.scheme != "amqps" and any(k in fields for k in ("cafile", "certfile", "keyfile")):
        raise parts.error("cafile/certfile/keyfile need an amqps:// URL")
    if fields.get("keyfile") and not fields.get("certfile"):
        raise parts.error("keyfile= needs certfile=")
    host = parts.hosts[0]
    return AmqpOptions(
        display=parts.shown,
        tls=parts.scheme == "amqps",
        host=host.name,
        port=host.port or DEFAULT_PORTS[parts.scheme],
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
