"""`outboxkit bench`: the benchmark harness (benchmarks/, in a source checkout)."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _harness(module: str) -> ModuleType | None:
    """`benchmarks.<module>`, which ships in the checkout, not in the wheel; None without it."""
    if not (REPO / "benchmarks" / "runner.py").exists():
        return None
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module(f"benchmarks.{module}")


def register(subparsers: Any) -> None:
    """Add the `bench` subcommand; its flags come from `benchmarks.options` (a light import)."""
    options = _harness("options")
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="measure throughput and latency next to their references; write BENCHMARKS.md",
        description=options.DESCRIPTION if options is not None else None,
    )
    if options is not None:
        options.add_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `outboxkit bench`."""
    runner = _harness("runner")
    if runner is None:
        print("outboxkit bench runs benchmarks/ from a source checkout", file=sys.stderr)
        return 2
    command = shlex.join(["outboxkit", *sys.argv[1:]])
    code: int = runner.execute(runner.options_from(args, command))
    return code
