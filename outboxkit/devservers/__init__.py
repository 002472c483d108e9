"""Servers started on loopback from pip-installed binaries, for the demo, tests and benchmarks.

Not for production: they run with settings chosen for a laptop or a CI machine.
"""

from outboxkit.devservers.nats import NatsServer
from outboxkit.devservers.ports import free_port
from outboxkit.devservers.postgres import PostgresServer

__all__ = ["NatsServer", "PostgresServer", "free_port"]
