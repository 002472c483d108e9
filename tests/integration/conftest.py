"""Fixtures shared by the integration tests."""

from tests.integration.brokers import nats_server, target_db

__all__ = ["nats_server", "target_db"]
