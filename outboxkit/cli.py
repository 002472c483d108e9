"""`outboxkit …`: a thin command line over the library. Flags fall back to OUTBOXKIT_* variables."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from outboxkit.commands import COMMANDS
from outboxkit.outbox.errors import OutboxkitError


def build_parser() -> argparse.ArgumentParser:
    """The parser for every subcommand; environment fallbacks are read now, not at import."""
    parser = argparse.ArgumentParser(
        prog="outboxkit",
        description="Transactional outbox and inbox for PostgreSQL.",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    try:
        # Option types (e.g. --schema) raise typed errors, also for environment fallbacks
        # read while the parser is built: the same one-line message and exit code 2.
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
            stream=sys.stderr,
        )
        code: int = args.handler(args)
    except OutboxkitError as exc:
        print(f"outboxkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
