"""The subcommands of `outboxkit`; each module exposes `register(subparsers)`."""

from collections.abc import Callable
from typing import Any

from outboxkit.commands import demo, migrate, relay, status

COMMANDS: list[Callable[[Any], None]] = [
    migrate.register,
    relay.register,
    status.register,
    demo.register,
]
