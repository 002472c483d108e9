"""`outboxkit faults`: run the fault suite and write RELIABILITY.md from its results."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def register(subparsers: Any) -> None:
    """Add the `faults` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "faults", help="run the fault scenarios and write RELIABILITY.md"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("RELIABILITY.md"),
        help="report file (default RELIABILITY.md)",
    )
    parser.add_argument("-k", dest="select", help="only scenarios matching this pytest -k")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `outboxkit faults`."""
    from outboxkit.faults.report import write

    suite = REPO / "tests" / "faults"
    if not suite.is_dir():
        print("outboxkit faults runs tests/faults: run it from a source checkout", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        rows = Path(scratch) / "rows.jsonl"
        rows.touch()
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)]
        if args.select:
            command += ["-k", args.select]
        env = os.environ | {"OUTBOXKIT_RELIABILITY_ROWS": str(rows)}
        result = subprocess.run(command, cwd=REPO, env=env, check=False)
        shown = "outboxkit faults" + (f" -k {args.select!r}" if args.select else "")
        write(rows, args.out, shown)
    print(f"wrote {args.out}")
    return result.returncode
