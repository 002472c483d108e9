"""Broker consumers, one module per broker, chosen by the URL scheme of `--broker`.

Each module exposes `create(url: str, subscription: Subscription) -> Consumer`. The
`postgresql://` scheme has no module: the relay already wrote the messages into this
database's inbox table, so the runner only runs its durable workers.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from inbox.consumers.base import Consumer, Delivery, Subscription
from outbox.envelope import Malformed
from outbox.errors import ConfigurationError
from outbox.redact import redact_dsn

SCHEMES: dict[str, str] = {
    "nats": "inbox.consumers.nats",
    "amqp": "inbox.consumers.rabbitmq",
    "amqps": "inbox.consumers.rabbitmq",
    "redis": "inbox.consumers.redis",
    "rediss": "inbox.consumers.redis",
    "sqs": "inbox.consumers.sqs",
    "kafka": "inbox.consumers.kafka",
    "http": "inbox.consumers.http",
    "pulsar": "inbox.consumers.pulsar",
    "pulsar+ssl": "inbox.consumers.pulsar",
}
# HTTP webhooks: the runner's consumer listens on the URL (inbox.consumers.http); an ASGI
# app (inbox.consumers.http.webhook_app) serves the same inbox inside your own web server.
EXTRAS: dict[str, str] = {"amqp": "rabbitmq", "amqps": "rabbitmq", "rediss": "redis"}
TABLE_SCHEMES = frozenset({"postgresql", "postgres"})


def create_consumer(url: str, subscription: Subscription) -> Consumer | None:
    """The consumer for `url`'s scheme; None for `postgresql://` (the inbox table is the source)."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:  # an unbalanced `[`
        raise ConfigurationError(f"invalid broker URL {redact_dsn(url)}") from None
    if scheme in TABLE_SCHEMES:
        return None
    module_name = SCHEMES.get(scheme)
    if module_name is None:
        known = ", ".join(f"{s}://" for s in sorted({*SCHEMES, *TABLE_SCHEMES}))
        raise ConfigurationError(
            f"unknown broker URL scheme {scheme + '://' if scheme else '(none)'} in "
            f"{redact_dsn(url)}; known: {known}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"the {scheme}:// consumer needs an extra: "
            f"pip install 'outboxkit[{EXTRAS.get(scheme, scheme)}]' ({exc})"
        ) from None
    consumer: Consumer = module.create(url, subscription)
    return consumer


__all__ = [
    "SCHEMES",
    "Consumer",
    "Delivery",
    "Malformed",
    "Subscription",
    "create_consumer",
]
