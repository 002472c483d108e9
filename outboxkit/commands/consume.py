"""`outboxkit consume` and `outboxkit inbox prune`: the consumer side."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from outboxkit.commands.options import dsn_option, env_option, schema_option
from outboxkit.inbox import ConsumerSettings, Mode, parse_duration, prune
from outboxkit.inbox.process import load_inbox
from outboxkit.inbox.process import run as run_consumer


def register(subparsers: Any) -> None:
    """Add `consume` and `inbox`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "consume", help="consume messages into an Inbox's handlers, effectively exactly once"
    )
    env_option(
        parser,
        "--app",
        "OUTBOXKIT_APP",
        required=True,
        help="the Inbox to run, as package.module:attribute",
    )
    dsn_option(parser)
    env_option(
        parser,
        "--broker",
        "OUTBOXKIT_BROKER",
        required=True,
        help="broker URL (nats://…), or postgresql://… when the relay fills this inbox",
    )
    env_option(
        parser,
        "--mode",
        "OUTBOXKIT_MODE",
        default="idempotent",
        choices=[m.value for m in Mode],
        help="idempotent or durable",
    )
    env_option(
        parser,
        "--concurrency",
        "OUTBOXKIT_CONCURRENCY",
        type=int,
        default=4,
        help="deliveries handled at once / durable workers",
    )
    env_option(
        parser,
        "--batch-size",
        "OUTBOXKIT_BATCH_SIZE",
        type=int,
        default=100,
        help="messages fetched or claimed at once",
    )
    env_option(
        parser,
        "--max-attempts",
        "OUTBOXKIT_MAX_ATTEMPTS",
        type=int,
        default=5,
        help="handler attempts before a message is dead-lettered",
    )
    env_option(
        parser,
        "--retention",
        "OUTBOXKIT_RETENTION",
        default="7d",
        help="how long dedup keys are kept (the dedup window)",
    )
    env_option(
        parser,
        "--prune-interval",
        "OUTBOXKIT_PRUNE_INTERVAL",
        default="10m",
        help="how often to prune automatically (0: never)",
    )
    env_option(parser, "--crash-at", "OUTBOXKIT_TEST_CRASH_AT", help=argparse.SUPPRESS)
    parser.set_defaults(handler=run_consume)

    inbox_parser = subparsers.add_parser("inbox", help="inbox maintenance")
    verbs = inbox_parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    prune_parser: argparse.ArgumentParser = verbs.add_parser(
        "prune", help="delete processed inbox rows older than the retention window"
    )
    dsn_option(prune_parser)
    schema_option(prune_parser)
    env_option(
        prune_parser,
        "--older-than",
        "OUTBOXKIT_RETENTION",
        default="7d",
        help="retention window, e.g. 7d, 12h",
    )
    prune_parser.add_argument("--consumer", help="only this consumer")
    prune_parser.add_argument(
        "--payloads-older-than", help="drop payloads of processed durable rows older than this"
    )
    prune_parser.set_defaults(handler=run_prune)


def run_consume(args: argparse.Namespace) -> int:
    """Handle `outboxkit consume`."""
    inbox = load_inbox(args.app)
    settings = ConsumerSettings(
        dsn=args.dsn,
        broker_url=args.broker,
        schema=inbox.schema,
        mode=Mode(args.mode),
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        max_attempts=args.max_attempts,
        retention=parse_duration(args.retention),
        prune_interval=parse_duration(args.prune_interval),
        crash_at=args.crash_at,
    )
    run_consumer(inbox, settings)
    return 0


def run_prune(args: argparse.Namespace) -> int:
    """Handle `outboxkit inbox prune`."""
    payloads = parse_duration(args.payloads_older_than) if args.payloads_older_than else None
    removed = asyncio.run(
        prune(
            args.dsn,
            args.schema,
            older_than=parse_duration(args.older_than),
            consumer=args.consumer,
            payloads_older_than=payloads,
        )
    )
    print(f"pruned {removed} processed inbox row(s)")
    return 0
