"""`outboxkit relay`: the sidecar."""

from __future__ import annotations

import argparse
from typing import Any

from outboxkit.commands.options import dsn_option, env_option, schema_option
from outboxkit.relay import RelaySettings, TopicSemantics
from outboxkit.relay import run as run_relay


def register(subparsers: Any) -> None:
    """Add the `relay` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "relay", help="forward committed outbox messages to a broker (the sidecar)"
    )
    dsn_option(parser)
    env_option(
        parser,
        "--broker",
        "OUTBOXKIT_BROKER",
        required=True,
        help="broker URL; the scheme picks the publisher (nats://, postgresql://)",
    )
    schema_option(parser)
    env_option(
        parser,
        "--batch-size",
        "OUTBOXKIT_BATCH_SIZE",
        type=int,
        default=500,
        help="messages claimed per transaction",
    )
    env_option(
        parser,
        "--poll-interval",
        "OUTBOXKIT_POLL_INTERVAL",
        type=float,
        default=1.0,
        help="seconds between polls without a NOTIFY",
    )
    env_option(
        parser,
        "--partitions",
        "OUTBOXKIT_PARTITIONS",
        type=int,
        help="set the number of partitions of the outbox (repartitions safely)",
    )
    env_option(
        parser,
        "--max-attempts",
        "OUTBOXKIT_MAX_ATTEMPTS",
        type=int,
        default=10,
        help="publish attempts before a message is dead-lettered",
    )
    env_option(
        parser,
        "--semantics",
        "OUTBOXKIT_SEMANTICS",
        default="",
        help="per-topic delivery, e.g. 'telemetry.*=at_most_once,pay.*=exactly_once'",
    )
    env_option(
        parser,
        "--http-host",
        "OUTBOXKIT_HTTP_HOST",
        default="127.0.0.1",
        help="address of the /healthz /readyz /metrics server",
    )
    env_option(
        parser,
        "--http-port",
        "OUTBOXKIT_HTTP_PORT",
        type=int,
        help="port of the /healthz /readyz /metrics server (off if unset)",
    )
    env_option(
        parser,
        "--relay-id",
        "OUTBOXKIT_RELAY_ID",
        help="name of this relay in `outboxkit status` (default host-pid-random)",
    )
    env_option(parser, "--crash-at", "OUTBOXKIT_TEST_CRASH_AT", help=argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `outboxkit relay`."""
    options: dict[str, Any] = {}
    if args.relay_id:
        options["relay_id"] = args.relay_id
    settings = RelaySettings(
        dsn=args.dsn,
        broker_url=args.broker,
        schema=args.schema,
        batch_size=args.batch_size,
        poll_interval=args.poll_interval,
        max_attempts=args.max_attempts,
        semantics=TopicSemantics.parse(args.semantics),
        http_host=args.http_host,
        http_port=args.http_port,
        crash_at=args.crash_at,
        **options,
    )
    if args.partitions is not None:
        from outboxkit.relay.admin import set_partitions

        set_partitions(args.dsn, args.schema, args.partitions)
    run_relay(settings)
    return 0
