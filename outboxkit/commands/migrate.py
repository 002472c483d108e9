"""`outboxkit migrate`: apply, list or print the schema migrations."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from outboxkit import migrations
from outboxkit.commands.options import dsn_option, env_option, schema_option


def register(subparsers: Any) -> None:
    """Add the `migrate` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "migrate", help="apply pending migrations (or --status, --sql)"
    )
    dsn_option(parser, required=False)
    schema_option(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--status", action="store_true", help="list applied and pending migrations")
    mode.add_argument(
        "--sql", action="store_true", help="print the SQL instead of running it (no database)"
    )
    parser.add_argument("--target", type=int, help="stop after this version")
    env_option(
        parser,
        "--role-prefix",
        "OUTBOXKIT_ROLE_PREFIX",
        help="name the schema's roles <prefix>_writer, _relay, _consumer, _admin when they are "
        "created (default <database>_<schema>)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `outboxkit migrate`."""
    if args.sql:
        print(
            migrations.render_sql(args.schema, target=args.target, role_prefix=args.role_prefix),
            end="",
        )
        return 0
    if not args.dsn:
        print("outboxkit migrate: error: --dsn (or OUTBOXKIT_DSN) is required", file=sys.stderr)
        return 2
    if args.status:
        for state in migrations.status(args.dsn, args.schema):
            when = state.applied_at.isoformat() if state.applied_at else "pending"
            note = "" if state.known else "  (unknown to this outboxkit version)"
            print(f"{state.version:04d}_{state.name:<30} {when}{note}")
        return 0
    applied = migrations.apply(
        args.dsn, args.schema, target=args.target, role_prefix=args.role_prefix
    )
    for migration in applied:
        print(f"applied {migration.filename}")
    if not applied:
        print(f"schema {args.schema!r} is up to date")
    return 0
