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
}


def create_publisher(url: str) -> Publisher:
    """The publisher for `url`'s scheme; `ConfigurationError` for an unknown scheme."""
    scheme = urlsplit(url).scheme.lower()
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
            f"the {scheme}:// publisher needs an extra: pip install 'outboxkit[{scheme}]' ({exc})"
        ) from None
    publisher: Publisher = module.create(url)
    return publisher


__all__ = ["SCHEMES", "Capabilities", "Outcome", "Publisher", "create_publisher"]
