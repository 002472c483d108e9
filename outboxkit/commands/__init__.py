"""The subcommands of `outboxkit`; each module exposes `register(subparsers)`."""

from collections.abc import Callable
from typing import Any

from outboxkit.commands import demo, migrate

COMMANDS: list[Callable[[Any], None]] = [migrate.register, demo.register]
