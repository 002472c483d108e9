"""One registry of broker URL schemes, used by the relay and the consumer runner alike.

Each scheme names its broker's folder under `outboxkit.brokers` (whose `publisher` module
exposes `create(url) -> Publisher` and whose `consumer` module exposes
`create(url, subscription) -> Consumer`), the pip extra its client comes with, and which
sides it has. A broker's modules are imported on demand, so a missing client library is a
`ConfigurationError` naming the extra to install, never an ImportError at start-up.

`postgresql://` has a publisher (the relay writes straight into another database's inbox
table) and no consumer: that table is the source, so the runner only runs its durable
workers (`create_consumer` returns None).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from urllib.parse import urlsplit

from outboxkit.brokers.consuming import Consumer, Subscription
from outboxkit.brokers.publishing import Publisher
from outboxkit.outbox.errors import ConfigurationError
from outboxkit.outbox.redact import redact_dsn


@dataclass(frozen=True)
class Scheme:
    """What one URL scheme maps to."""

    broker: str  # the folder under outboxkit/brokers/
    extra: str  # pip install 'outboxkit[<extra>]'
    consumer: bool = True  # False: no consumer speaks this scheme
    table: bool = False  # the consumer side reads the inbox table: no broker consumer


SCHEMES: dict[str, Scheme] = {
    "nats": Scheme("nats", "nats"),
    "amqp": Scheme("rabbitmq", "rabbitmq"),
    "amqps": Scheme("rabbitmq", "rabbitmq"),
    "redis": Scheme("redis", "redis"),
    "rediss": Scheme("redis", "redis"),
    "sqs": Scheme("sqs", "sqs"),
    "kafka": Scheme("kafka", "kafka"),
    "http": Scheme("http", "http"),
    # TLS ends in a proxy in front of the webhook consumer: only the relay speaks https.
    "https": Scheme("http", "http", consumer=False),
    "pulsar": Scheme("pulsar", "pulsar"),
    "pulsar+ssl": Scheme("pulsar", "pulsar"),
    "postgresql": Scheme("postgres", "binary", table=True),
    "postgres": Scheme("postgres", "binary", table=True),
}


def scheme_of(url: str) -> tuple[str, Scheme]:
    """The scheme of `url` and its entry; `ConfigurationError` for an unknown one."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:  # an unbalanced `[`
        raise ConfigurationError(f"invalid broker URL {redact_dsn(url)}") from None
    entry = SCHEMES.get(scheme)
    if entry is None:
        known = ", ".join(f"{s}://" for s in sorted(SCHEMES))
        raise ConfigurationError(
            f"unknown broker URL scheme {scheme + '://' if scheme else '(none)'} in "
            f"{redact_dsn(url)}; known: {known}"
        )
    return scheme, entry


def _module(scheme: str, entry: Scheme, side: str) -> ModuleType:
    try:
        return importlib.import_module(f"outboxkit.brokers.{entry.broker}.{side}")
    except ImportError as exc:
        raise ConfigurationError(
            f"the {scheme}:// {side} needs an extra: pip install 'outboxkit[{entry.extra}]' ({exc})"
        ) from None


def create_publisher(url: str) -> Publisher:
    """The publisher for `url`'s scheme; `ConfigurationError` for an unknown scheme."""
    scheme, entry = scheme_of(url)
    publisher: Publisher = _module(scheme, entry, "publisher").create(url)
    return publisher


def create_consumer(url: str, subscription: Subscription) -> Consumer | None:
    """The consumer for `url`'s scheme; None for `postgresql://` (the inbox table is the source)."""
    scheme, entry = scheme_of(url)
    if entry.table:
        return None
    if not entry.consumer:
        raise ConfigurationError(
            f"{redact_dsn(url)}: no consumer speaks {scheme}:// (end TLS in a proxy and give "
            "the consumer an http:// URL)"
        )
    consumer: Consumer = _module(scheme, entry, "consumer").create(url, subscription)
    return consumer


__all__ = ["SCHEMES", "Scheme", "create_consumer", "create_publisher", "scheme_of"]
