"""The subcommands of `outboxkit`; each module exposes `register(subparsers)`.

`bench` and `faults` drive benchmarks/ and tests/faults/, which live in a source checkout and
are not in the wheel: an installed CLI does not offer them.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from outboxkit.commands import bench, consume, demo, faults, migrate, relay, status

CHECKOUT = Path(__file__).resolve().parents[2]

COMMANDS: list[Callable[[Any], None]] = [
    migrate.register,
    relay.register,
    status.register,
    consume.register,
    demo.register,
]
if (CHECKOUT / "tests" / "faults").is_dir():
    COMMANDS.append(faults.register)
if (CHECKOUT / "benchmarks" / "runner.py").is_file():
    COMMANDS.append(bench.register)
