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
from dataclasses import dataclass, field
from typing import Any

from outboxkit.brokers.url import scrub
from outboxkit.brokers.url_options import CONNECT_TIMEOUT, Option, OptionTable, Side
from outboxkit.brokers.url_values import SECONDS, TEXT, choice, integer, number, optional
from outboxkit.outbox.redact import redact_dsn

DEFAULT_PORT = 9092
MAX_TOPIC_LENGTH = 249  # Kafka's limit on a topic name
SECURITY_PROTOCOLS = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
OFFSET_RESETS = ("earliest", "latest")
_NOT_IN_TOPIC = re.compile(r"[^a-zA-Z0-9._-]")


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
        return scrub(error, (self.password,))

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


TABLE = OptionTable(
    label="Kafka",
    form="kafka://host[:port]",
    schemes={"kafka": DEFAULT_PORT},
    kind=KafkaOptions,
    many_hosts=True,
    options=(
        Option("topic_prefix", TEXT, "a message's Kafka topic is `topic_prefix + topic`"),
        Option("topic", optional(TEXT), "one Kafka topic for every message"),
        Option(
            "security_protocol",
            choice(*SECURITY_PROTOCOLS, any_case=True),
            "librdkafka's security.protocol",
            default="plaintext, sasl_plaintext with a user",
        ),
        Option("sasl_mechanism", choice(*SASL_MECHANISMS, any_case=True), "SASL mechanism"),
        Option("ssl_ca_location", optional(TEXT), "CA bundle to verify the brokers with"),
        Option("client_id", TEXT, "librdkafka's client.id"),
        CONNECT_TIMEOUT,
        Option("timeout", SECONDS, "seconds for a delivery report or a client call"),
        Option("max_message_bytes", integer(0, above=True), "largest message sent", "publisher"),
        Option("linger_ms", number(0), "milliseconds a batch waits for more", "publisher"),
        Option("session_timeout", SECONDS, "seconds of the group session", "consumer"),
        Option("max_poll_interval", SECONDS, "seconds allowed between two polls", "consumer"),
        Option("metadata_refresh", SECONDS, "seconds between topic metadata refreshes", "consumer"),
        Option(
            "auto_offset_reset",
            choice(*OFFSET_RESETS, any_case=True),
            "where a new consumer group starts",
            side="consumer",
        ),
    ),
)


def parse_url(url: str, side: Side | None = None) -> KafkaOptions:
    """`KafkaOptions` from a broker URL as `side` reads it (None: every option kept);
    `ConfigurationError` for anything malformed."""
    parts = TABLE.split(url)
    parts.refuse_path()
    options = KafkaOptions(
        servers=",".join(map(str, parts.hosts)),
        display=parts.shown,
        user=parts.user or None,
        password=parts.password,
        **TABLE.read_url(parts, side),
    )
    if options.topic is not None and not valid_topic(options.topic):
        raise parts.error(f"topic={options.topic!r} is not a valid Kafka topic")
    if sanitize(options.topic_prefix) != options.topic_prefix:
        raise parts.error("topic_prefix may only hold letters, digits, '.', '_' and '-'")
    return options


def ms(seconds: float) -> int:
    """`seconds` as librdkafka milliseconds (at least 1)."""
    return max(1, round(seconds * 1000))


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
