"""The brokers the conformance suite runs against, one module per broker.

Each module exposes `CASE: BrokerCase`. In CI (CI=true) a broker whose server cannot start
fails its tests; locally it is skipped with the reason.
"""

from __future__ import annotations

import importlib

from tests.conformance.cases.base import BrokerCase

NAMES = ["nats", "rabbitmq", "redis", "sqs", "kafka", "http", "pulsar"]


def load(name: str) -> BrokerCase:
    case: BrokerCase = importlib.import_module(f"tests.conformance.cases.{name}").CASE
    return case
