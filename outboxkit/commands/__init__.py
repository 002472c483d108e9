"""The subcommands of `outboxkit`; each module exposes `register(subparsers)`."""

from collections.abc import Callable
from typing import Any

from outboxkit.commands import bench, consume, demo, faults, migrate, relay, status

COMMANDS: list[Callable[[Any], None]] = [
    migrate.register,
    relay.register,
    status.register,
    consume.register,
    demo.register,
    faults.register,
    bench.register,
]
