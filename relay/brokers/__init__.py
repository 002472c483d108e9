"""Broker publishers, one module per broker, chosen by the URL scheme of `--broker`.

Each module exposes `create(url: str) -> Publisher`; options travel in the URL's query string
(`nats://host:4222?stream=EVENTS&subject_prefix=orders.`). The relay's core never imports a
concrete broker module: it looks the scheme up here and imports the module on demand.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from outbox.errors import ConfigurationError
from outbox.redact import redact_dsn
from relay.brokers.base import Capabilities, Outcome, Publisher

SCHEMES: dict[str, str] = {
    "nats": "relay.brokers.nats",
    "postgresql": "relay.brokers.postgres",
    "postgres": "relay.brokers.postgres",
    "amqp": "relay.brokers.rabbitmq",
    "amqps": "relay.brokers.rabbitmq",
    "redis": "relay.brokers.redis",
    "rediss": "relay.brokers.redis",
    "sqs": "relay.brokers.sqs",
    "kafka": "relay.brokers.kafka",
    "http": "relay.brokers.http",
    "https": "relay.brokers.http",
    "pulsar": "relay.brokers.pulsar",
    "pulsar+ssl": "relay.brokers.pulsar",
}
# The pip extra each scheme's client comes with.
EXTRAS: dict[str, str] = {
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "rediss": "redis",
    "https": "http",
    "pulsar+ssl": "pulsar",
}


def create_publisher(url: str) -> Publisher:
    """The publisher for `url`'s scheme; `ConfigurationError` for an unknown scheme."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:  # an unbalanced `[`
        raise ConfigurationError(f"invalid broker URL {redact_dsn(url)}") from None
    module_name = SCHEMES.get(scheme)
    if module_name is None:
        known = ", ".join(f"{s}://" for s in sorted(SCHEMES))
        raise ConfigurationError(
            f"unknown broker URL scheme {scheme + '://' if scheme else '(none)'} in "
            f"{redact_dsn(url)}; known: {known}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"the {scheme}:// publisher needs an extra: "
            f"pip install 'outboxkit[{EXTRAS.get(scheme, scheme)}]' ({exc})"
        ) from None
    publisher: Publisher = module.create(url)
    return publisher


__all__ = ["SCHEMES", "Capabilities", "Outcome", "Publisher", "create_publisher"]
