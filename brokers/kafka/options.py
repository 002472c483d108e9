"""`kafka://` broker URLs and topic names, shared by the Kafka publisher and consumer.

Pure parsing: no import of `confluent_kafka` here (the write path never imports a broker
client), so the publisher (`kafka.publisher`) and the consumer (`kafka.consumer`)
read the same options, build the same client settings and map topics the same way.

URL: `kafka://[user:password@]host[:port][,host2[:port]...][?option=value&...]` (port 9092
by default). The options are documented in `kafka.publisher` (common and publisher) and
`kafka.consumer` (consumer). Each side accepts the other side's options and ignores
them, so one URL (`OUTBOXKIT_BROKER`) can serve both the relay and the consumer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import parse_qsl, unquote

from outboxkit.brokers.url import STRAY_AT, finite_float, shown_name, stray_at
from outboxkit.outbox.errors import ConfigurationError
from outboxkit.outbox.redact import redact_dsn

DEFAULT_PORT = 9092
MAX_TOPIC_LENGTH = 249  # Kafka's limit on a topic name
SECURITY_PROTOCOLS = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
OFFSET_RESETS = ("earliest", "latest")
_NOT_IN_TOPIC = re.compile(r"[^a-zA-Z0-9._-]")

Converter = Callable[[str], object]


@dataclass(frozen=True, kw_only=True)
class KafkaOptions:
    """The connection, topic and client settings parsed from a `kafka://` URL."""

    servers: str  # librdkafka's bootstrap.servers: host:port[,host:port...]
    display: str
    user: str | None = field(default=None, repr=False)  # alone, it may be a token
    password: str | None = field(default=None, repr=False)
    # topics
    topic_prefix: str = ""
    topic: str | None = None  # one Kafka topic for every message
    # connection
    security_protocol: str | None = None  # default: plaintext, sasl_plaintext with a user
    sasl_mechanism: str = "PLAIN"
    ssl_ca_location: str | None = None
    client_id: str = "outboxkit"
    connect_timeout: float = 5.0
    timeout: float = 10.0
    # publisher
    max_message_bytes: int = 1_048_576
    linger_ms: float = 5.0
    # consumer
    session_timeout: float = 10.0
    max_poll_interval: float = 300.0
    metadata_refresh: float = 5.0
    auto_offset_reset: str = "earliest"

    def kafka_topic(self, topic: str) -> str:
        """The Kafka topic a message of outboxkit `topic` goes to (may still be invalid)."""
        return self.topic or sanitize(self.topic_prefix + topic)

    def scrub(self, error: object) -> str:
        """`error` as text with the URL's password masked."""
        text = str(error) or type(error).__name__
        return text.replace(self.password, "***") if self.password else text

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings every client of this URL shares."""
        protocol = self.security_protocol or ("sasl_plaintext" if self.user else "plaintext")
        config: dict[str, Any] = {
            "bootstrap.servers": self.servers,
            "client.id": self.client_id,
            "security.protocol": protocol,
            "socket.connection.setup.timeout.ms": ms(self.connect_timeout),
            "socket.timeout.ms": max(ms(self.timeout), 10),
            # librdkafka backs off up to 10 s between reconnects by default: too slow to
            # notice a broker that came back.
            "reconnect.backoff.max.ms": 1000,
        }
        if self.ssl_ca_location:
            config["ssl.ca.location"] = self.ssl_ca_location
        if protocol.startswith("sasl"):
            config |= {
                "sasl.mechanism": self.sasl_mechanism,
                "sasl.username": self.user or "",
                "sasl.password": self.password or "",
            }
        return config


# Options read by one side only; the other accepts and ignores them.
PUBLISHER_ONLY = frozenset({"max_message_bytes", "linger_ms"})
CONSUMER_ONLY = frozenset(
    {"session_timeout", "max_poll_interval", "metadata_refresh", "auto_offset_reset"}
)


def parse_url(url: str, *, ignored: frozenset[str] = frozenset()) -> KafkaOptions:
    """`KafkaOptions` from a broker URL; `ConfigurationError` for anything malformed.

    Options named in `ignored` are accepted and left at their defaults.
    """
    shown = display(url)
    if stray_at(url):
        raise ConfigurationError(f"invalid Kafka URL {shown}: {STRAY_AT}")
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "kafka" or not sep:
        raise ConfigurationError(f"expected kafka://host[:port], got {shown}")
    netloc, _, query = rest.partition("?")
    netloc = netloc.split("#", 1)[0].rstrip("/")
    if "/" in netloc:
        raise ConfigurationError(f"{shown}: a kafka:// URL has no path")
    userinfo, at, hosts = netloc.rpartition("@")
    user = password = None
    if at:
        raw_user, colon, raw_password = userinfo.partition(":")
        user = unquote(raw_user) or None
        password = unquote(raw_password) if colon else None
    fields: dict[str, Any] = {}
    try:
        servers = ",".join(_server(host) for host in hosts.split(","))
        for name, raw in parse_qsl(query, keep_blank_values=True):
            if name not in OPTIONS:
                _unknown(name, OPTIONS)
            if name not in ignored:
                fields[name] = OPTIONS[name](raw)
        options = KafkaOptions(
            servers=servers, display=shown, user=user, password=password, **fields
        )
    except ValueError as exc:
        raise ConfigurationError(f"invalid Kafka URL {shown}: {exc}") from None
    if options.topic is not None and not valid_topic(options.topic):
        raise ConfigurationError(f"{shown}: topic={options.topic!r} is not a valid Kafka topic")
    if sanitize(options.topic_prefix) != options.topic_prefix:
        raise ConfigurationError(
            f"{shown}: topic_prefix may only hold letters, digits, '.', '_' and '-'"
        )
    return options


def _server(host: str) -> str:
    host = host.strip()
    if not host:
        raise ValueError("missing host")
    if host.startswith("["):  # [v6]:port
        address, _, port = host[1:].partition("]")
        port = port.removeprefix(":")
        return f"[{address}]:{_port(port)}"
    name, _, port = host.partition(":")
    if not name:
        raise ValueError("missing host")
    return f"{name}:{_port(port)}"


def _port(raw: str) -> int:
    if not raw:
        return DEFAULT_PORT
    # The port may be a piece of a password with an unencoded `/`, `?` or `#`: not quoted.
    if not (len(raw) <= 5 and raw.isascii() and raw.isdigit() and 0 < int(raw) < 65536):
        raise ValueError("the port must be a number from 1 to 65535")
    return int(raw)


def _unknown(name: str, converters: Mapping[str, Converter]) -> NoReturn:
    raise ValueError(f"unknown option {shown_name(name)}; known: {', '.join(sorted(converters))}")


def ms(seconds: float) -> int:
    """`seconds` as librdkafka milliseconds (at least 1)."""
    return max(1, round(seconds * 1000))


def _positive(kind: type[int] | Callable[[str], float]) -> Converter:
    def convert(raw: str) -> object:
        value = kind(raw)
        if value <= 0:
            raise ValueError(f"expected a number > 0, got {raw!r}")
        return value

    return convert


def _non_negative(raw: str) -> float:
    value = finite_float(raw)
    if value < 0:
        raise ValueError(f"expected a number >= 0, got {raw!r}")
    return value


def _choice(choices: Iterable[str], *, upper: bool = False) -> Converter:
    allowed = tuple(choices)

    def convert(raw: str) -> object:
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {raw!r}")
        return value

    return convert


OPTIONS: dict[str, Converter] = {
    "topic_prefix": str,
    "topic": lambda raw: raw or None,
    "security_protocol": _choice(SECURITY_PROTOCOLS),
    "sasl_mechanism": _choice(SASL_MECHANISMS, upper=True),
    "ssl_ca_location": lambda raw: raw or None,
    "client_id": str,
    "connect_timeout": _positive(finite_float),
    "timeout": _positive(finite_float),
    "max_message_bytes": _positive(int),
    "linger_ms": _non_negative,
    "session_timeout": _positive(finite_float),
    "max_poll_interval": _positive(finite_float),
    "metadata_refresh": _positive(finite_float),
    "auto_offset_reset": _choice(OFFSET_RESETS),
}


class LibrdkafkaLog:
    """librdkafka's log lines to a Python logger at DEBUG, the password masked.

    Given as confluent-kafka's `logger` setting, which calls `log(level, msg, *args)`.
    """

    def __init__(self, logger: logging.Logger, options: KafkaOptions) -> None:
        self.logger = logger
        self.options = options

    def log(self, level: int, msg: str, *args: object) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("%s", self.options.scrub(msg % args if args else msg))


def display(url: str) -> str:
    """The URL for messages: no password."""
    return redact_dsn(url)


# -- topics ------------------------------------------------------------------------------


def sanitize(name: str) -> str:
    """`name` with every character Kafka refuses in a topic name replaced by `_`."""
    return _NOT_IN_TOPIC.sub("_", name)


def valid_topic(name: str) -> bool:
    """Whether Kafka accepts `name` as a topic name."""
    return (
        0 < len(name) <= MAX_TOPIC_LENGTH
        and name not in (".", "..")
        and _NOT_IN_TOPIC.search(name) is None
    )


def topic_regex(prefix: str, pattern: str) -> str:
    """A librdkafka subscription regex for the Kafka topics of handler `pattern`.

    `*` in a pattern matches any run of characters; the literal parts are sanitized like
    topics are, so a topic that matches `pattern` always lands in a matching Kafka topic
    (the converse need not hold: the consumer checks the envelope's topic again).
    """
    parts = (prefix + pattern).split("*")
    body = ".*".join(sanitize(part).replace(".", "\\.") for part in parts)
    return f"^{body}$"
