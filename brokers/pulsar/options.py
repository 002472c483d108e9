"""`pulsar://` broker URLs and topic names, shared by the Pulsar publisher and consumer.

Pure parsing: no import of the `pulsar` client here (the write path never imports a broker
client), so the publisher (`pulsar.publisher`) and the consumer (`pulsar.consumer`)
read the same options and map topics the same way.

URL: `pulsar[+ssl]://[user:password@ | :token@]host[:port][,host2[:port]...][?option=...]`
(port 6650, 6651 for `pulsar+ssl`). The options are documented in `pulsar.publisher`
(common and publisher) and `pulsar.consumer` (consumer). Each side accepts the other
side's options and ignores them, so one URL (`OUTBOXKIT_BROKER`) serves both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from outboxkit.brokers.url import scrub
from outboxkit.brokers.url_options import CONNECT_TIMEOUT, Option, OptionTable, Side
from outboxkit.brokers.url_values import BOOL, SECONDS, TEXT, integer, optional
from outboxkit.outbox.errors import ConfigurationError
from outboxkit.outbox.redact import redact_dsn

SCHEMES = {"pulsar": 6650, "pulsar+ssl": 6651}
# Pulsar's default maxMessageSize; the client refuses a message whose payload plus metadata
# exceeds it minus FRAME_PADDING (room the broker keeps for the command around it).
DEFAULT_MAX_MESSAGE_BYTES = 5 * 1024 * 1024
FRAME_PADDING = 10 * 1024
_NOT_IN_TOPIC = re.compile(r"[^A-Za-z0-9._-]")
_NAMED_ENTITY = re.compile(r"^[-=:.\w]+$")  # Pulsar's rule for tenant and namespace names
_PARTITION_SUFFIX = "-partition-"  # reserved: the broker would read a partition index after it


@dataclass(frozen=True, kw_only=True)
class PulsarOptions:
    """The connection, topic and client settings parsed from a `pulsar://` URL."""

    service_url: str  # what the client connects to: scheme://host:port[,host:port...]
    display: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)  # with a user: basic auth; else a token
    # topics
    tenant: str = "public"
    namespace: str = "default"
    topic_prefix: str = ""
    topic: str | None = None  # one Pulsar topic for every message
    # connection
    connect_timeout: float = 5.0
    timeout: float = 10.0
    tls_trust_certs: str | None = None
    tls_allow_insecure: bool = False
    tls_validate_hostname: bool = True
    # publisher
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # consumer
    receiver_queue_size: int = 1000
    discovery_interval: int = 60

    @property
    def tls(self) -> bool:
        return self.service_url.startswith("pulsar+ssl://")

    def local_name(self, topic: str) -> str:
        """The local Pulsar topic name for outboxkit `topic` (may still be invalid)."""
        return self.topic or sanitize(self.topic_prefix + topic)

    def full_name(self, local: str) -> str:
        """`persistent://tenant/namespace/local`."""
        return f"persistent://{self.tenant}/{self.namespace}/{local}"

    def pulsar_topic(self, topic: str) -> str:
        """The full Pulsar topic a message of outboxkit `topic` goes to."""
        return self.full_name(self.local_name(topic))

    def topic_of(self, pulsar_topic: str) -> str | None:
        """The outboxkit topic a per-topic Pulsar topic stands for (None with `topic=`)."""
        local = pulsar_topic.rsplit("/", 1)[-1]
        if self.topic is not None or not local.startswith(self.topic_prefix):
            return None
        return local[len(self.topic_prefix) :] or None

    def scrub(self, error: object) -> str:
        """`error` as text with the URL's password or token masked."""
        return scrub(error, (self.password,))

    @property
    def operation_timeout(self) -> int:
        """The client's `operation_timeout_seconds` (whole seconds, at least 1)."""
        return max(1, math.ceil(self.timeout))

    def client_settings(self) -> dict[str, Any]:
        """Keyword arguments for `pulsar.Client` besides the URL, authentication and logger.

        The client's own log goes to the null device (see `pulsar.publisher`).
        """
        settings: dict[str, Any] = {
            "operation_timeout_seconds": self.operation_timeout,
            "connection_timeout_ms": max(1, round(self.connect_timeout * 1000)),
        }
        if self.tls:
            settings["tls_allow_insecure_connection"] = self.tls_allow_insecure
            settings["tls_validate_hostname"] = self.tls_validate_hostname
            if self.tls_trust_certs:
                settings["tls_trust_certs_file_path"] = self.tls_trust_certs
        return settings


TABLE = OptionTable(
    label="Pulsar",
    form="pulsar://host[:port] or pulsar+ssl://…",
    schemes=SCHEMES,
    kind=PulsarOptions,
    many_hosts=True,
    options=(
        Option("tenant", TEXT, "the tenant of the topics"),
        Option("namespace", TEXT, "the namespace of the topics"),
        Option("topic_prefix", TEXT, "a message's Pulsar topic is `topic_prefix + topic`"),
        Option("topic", optional(TEXT), "one Pulsar topic for every message"),
        CONNECT_TIMEOUT,
        Option("timeout", SECONDS, "seconds for a send or a client call (whole seconds up)"),
        Option("tls_trust_certs", optional(TEXT), "CA bundle to verify the brokers with"),
        Option("tls_allow_insecure", BOOL, "accept an unverified server certificate"),
        Option("tls_validate_hostname", BOOL, "check the server's host name"),
        Option(
            "max_message_bytes",
            integer(FRAME_PADDING, above=True),
            "largest message sent (payload and metadata)",
            side="publisher",
        ),
        Option("receiver_queue_size", integer(0, above=True), "messages prefetched", "consumer"),
        Option(
            "discovery_interval",
            integer(0, above=True),
            "seconds between scans for new topics of a pattern",
            side="consumer",
        ),
    ),
)


def parse_url(url: str, side: Side | None = None) -> PulsarOptions:
    """`PulsarOptions` from a broker URL as `side` reads it (None: every option kept);
    `ConfigurationError` for anything malformed."""
    parts = TABLE.split(url)
    parts.refuse_path("a pulsar:// URL has no path (use tenant=, namespace=)")
    if parts.user is not None and parts.password is None:
        raise parts.error("give user:password@ (basic auth) or :token@ (token auth)")
    options = PulsarOptions(
        service_url=f"{parts.scheme}://{','.join(map(str, parts.hosts))}",
        display=parts.shown,
        user=parts.user or None,
        password=parts.password or None,
        **TABLE.read_url(parts, side),
    )
    _check(options)
    return options


def _check(options: PulsarOptions) -> None:
    shown = options.display
    for name in ("tenant", "namespace"):
        if not _NAMED_ENTITY.match(getattr(options, name)):
            raise ConfigurationError(
                f"{shown}: {name} may only hold letters, digits, '_', '-', '=', ':' and '.'"
            )
    if options.topic is not None and not valid_topic(options.topic):
        raise ConfigurationError(f"{shown}: topic={options.topic!r} is not a valid Pulsar topic")
    if sanitize(options.topic_prefix) != options.topic_prefix:
        raise ConfigurationError(
            f"{shown}: topic_prefix may only hold letters, digits, '.', '_' and '-'"
        )
    if options.user is not None and options.password is None:
        raise ConfigurationError(f"{shown}: basic auth needs a password (user:password@)")


def display(url: str) -> str:
    """The URL for messages: no password or token, not even a bare one (`redact_dsn`)."""
    return redact_dsn(url)


# -- topics ------------------------------------------------------------------------------


def sanitize(name: str) -> str:
    """`name` with what Pulsar refuses or misreads in a topic name replaced by `_`.

    Only letters, digits, `.`, `_` and `-` stay, and `-partition-` (the broker would read
    a partition index after it) becomes `_partition-`.
    """
    return _NOT_IN_TOPIC.sub("_", name).replace(_PARTITION_SUFFIX, "_partition-")


def valid_topic(name: str) -> bool:
    """Whether `name` is usable as a local Pulsar topic name."""
    return bool(name) and name not in (".", "..") and sanitize(name) == name


def topic_regex(options: PulsarOptions, patterns: Iterable[str]) -> str:
    """A regex subscription (`persistent://tenant/namespace/(…|…)`) for handler `patterns`.

    `*` in a pattern matches any run of characters; the literal parts are sanitized like
    topics are, so a topic that matches a pattern always lands in a matching Pulsar topic
    (the converse need not hold: the consumer checks the envelope's topic again). The
    client matches the part after `persistent://` against the namespace's topics.
    """
    bodies = sorted(
        {
            ".*".join(
                sanitize(part).replace(".", "\\.") for part in (options.topic_prefix + p).split("*")
            )
            for p in patterns
        }
    )
    # The tenant and namespace stay unescaped: the client reads the namespace from them.
    return f"persistent://{options.tenant}/{options.namespace}/({'|'.join(bodies)})"
