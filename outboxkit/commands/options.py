"""Options shared by the subcommands, each with an OUTBOXKIT_* environment fallback."""

from __future__ import annotations

import argparse
import os
from typing import Any

from outboxkit.outbox.identifiers import check_schema_name


def env_option(
    parser: argparse.ArgumentParser,
    flag: str,
    env: str,
    *,
    help: str,
    required: bool = False,
    type: Any = str,
    default: Any = None,
    **kwargs: Any,
) -> None:
    """Add `flag`, defaulting to `$env` (read when the parser is built, at start-up)."""
    value = os.environ.get(env)
    fallback = type(value) if value is not None else default
    parser.add_argument(
        flag,
        default=fallback,
        required=required and fallback is None,
        type=type,
        help=f"{help} [env {env}]" + (f" (default {default})" if default is not None else ""),
        **kwargs,
    )


def dsn_option(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """--dsn / OUTBOXKIT_DSN: the service database."""
    env_option(
        parser,
        "--dsn",
        "OUTBOXKIT_DSN",
        required=required,
        help="PostgreSQL connection string of the service database",
    )


def schema_option(parser: argparse.ArgumentParser) -> None:
    """--schema / OUTBOXKIT_SCHEMA; a name with control characters is a `ConfigurationError`."""
    env_option(
        parser,
        "--schema",
        "OUTBOXKIT_SCHEMA",
        type=check_schema_name,
        default="outboxkit",
        help="schema holding the outboxkit tables",
    )
