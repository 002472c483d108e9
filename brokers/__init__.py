"""Broker adapters, one subpackage per broker, behind one registry of URL schemes.

The contracts every adapter fulfils live here too: `Publisher`/`Outcome`/`Capabilities`
(the relay's side) and `Consumer`/`Delivery`/`Subscription` (the consumer runner's side).
"""

from outboxkit.brokers.consuming import Consumer, Delivery, Subscription
from outboxkit.brokers.publishing import Capabilities, Outcome, Publisher
from outboxkit.brokers.registry import SCHEMES, create_consumer, create_publisher
from outboxkit.outbox.envelope import Malformed

__all__ = [
    "SCHEMES",
    "Capabilities",
    "Consumer",
    "Delivery",
    "Malformed",
    "Outcome",
    "Publisher",
    "Subscription",
    "create_consumer",
    "create_publisher",
]
