"""`outboxkit status` and `outboxkit dead-letters`: what an operator looks at."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any
from uuid import UUID

from outboxkit.commands.options import dsn_option, schema_option
from outboxkit.inbox import admin as inbox_admin
from outboxkit.outbox.errors import ConfigurationError
from outboxkit.relay import admin


def register(subparsers: Any) -> None:
    """Add `status` and `dead-letters`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status", help="backlog, oldest age, dead letters, relays and their partitions"
    )
    dsn_option(parser)
    schema_option(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run_status)

    dead: argparse.ArgumentParser = subparsers.add_parser(
        "dead-letters", help="list, retry or purge dead-lettered messages"
    )
    dead.add_argument("action", choices=["list", "retry", "purge"])
    dsn_option(dead)
    schema_option(dead)
    dead.add_argument(
        "--id",
        dest="message_ids",
        action="append",
        type=UUID,
        default=None,
        help="a message id (repeatable)",
    )
    dead.add_argument("--topic", help="topic, `*` wildcards allowed")
    dead.add_argument("--key", help="ordering key")
    dead.add_argument("--all", action="store_true", help="every dead letter (retry/purge)")
    dead.add_argument(
        "--inbox",
        action="store_true",
        help="the consumers' inbox dead letters instead of the relay's",
    )
    dead.add_argument("--consumer", help="with --inbox: only this consumer")
    dead.add_argument("--limit", type=int, default=1000, help="at most this many")
    dead.add_argument("--dry-run", action="store_true", help="show what would be done")
    dead.add_argument("--json", action="store_true", help="machine-readable output")
    dead.set_defaults(handler=run_dead_letters)


def run_status(args: argparse.Namespace) -> int:
    """Handle `outboxkit status`."""
    state = admin.status(args.dsn, args.schema)
    if args.json:
        payload = asdict(state) | {
            "pending": state.pending,
            "oldest_age_seconds": state.oldest_age_seconds,
        }
        print(json.dumps(payload, indent=2, default=str))
        return 0
    print(
        f"pending: {state.pending}   oldest: {state.oldest_age_seconds:.1f} s   "
        f"dead letters: {sum(state.dead_letters.values())}   partitions: {state.partitions}"
    )
    if state.blocked_keys:
        print("blocked keys: " + ", ".join(f"{n} {why}" for why, n in state.blocked_keys.items()))
    for topic in state.backlog:
        print(
            f"  {topic.topic:<40} {topic.pending:>9} pending"
            f"  oldest {topic.oldest_age_seconds:8.1f} s  retrying {topic.retrying}"
        )
    for topic_name, count in state.dead_letters.items():
        print(f"  {topic_name:<40} {count:>9} dead")
    print(f"relays: {len(state.relays)}")
    for relay in state.relays:
        print(
            f"  {relay.relay_id:<40} pid {relay.pid:<7}"
            f" seen {relay.heartbeat_age_seconds:4.1f} s ago  partitions {relay.partitions}"
        )
    return 0


def run_dead_letters(args: argparse.Namespace) -> int:
    """Handle `outboxkit dead-letters list|retry|purge`, the relay's or (--inbox) the inbox's."""
    filters: dict[str, Any] = {
        "message_ids": args.message_ids,
        "topic": args.topic,
        "key": args.key,
        "limit": args.limit,
    }
    if args.inbox:
        return _inbox_dead_letters(args, filters)
    if args.consumer is not None:
        # Acting on the relay's dead letters when the operator named a consumer would touch
        # the wrong table: refuse instead of guessing.
        raise ConfigurationError(
            "--consumer names an inbox consumer: add --inbox to act on the inbox's dead letters"
        )
    if args.action == "list":
        found = admin.find_dead_letters(args.dsn, args.schema, **filters)
    else:
        act = admin.retry_dead_letters if args.action == "retry" else admin.purge_dead_letters
        found = act(args.dsn, args.schema, dry_run=args.dry_run, all=args.all, **filters)
    if args.json:
        print(json.dumps([asdict(d) for d in found], indent=2, default=str))
    else:
        for d in found:
            print(f"{d.message_id}  {d.topic}  key={d.key}  attempts={d.attempts}  {d.last_error}")
        verb = {"list": "found", "retry": "retried", "purge": "purged"}[args.action]
        suffix = " (dry run: nothing changed)" if args.dry_run and args.action != "list" else ""
        print(f"{len(found)} dead letter(s) {verb}{suffix}")
    return 0


def _inbox_dead_letters(args: argparse.Namespace, filters: dict[str, Any]) -> int:
    filters["consumer"] = args.consumer
    if args.action == "list":
        found = inbox_admin.find_dead_letters(args.dsn, args.schema, **filters)
    else:
        act = (
            inbox_admin.retry_dead_letters
            if args.action == "retry"
            else inbox_admin.purge_dead_letters
        )
        found = act(args.dsn, args.schema, dry_run=args.dry_run, all=args.all, **filters)
    if args.json:
        print(json.dumps([asdict(d) for d in found], indent=2, default=str))
        return 0
    for d in found:
        print(
            f"{d.consumer}  {d.message_id}  {d.topic}  key={d.key}  "
            f"attempts={d.attempts}  {d.last_error}"
        )
    verb = {"list": "found", "retry": "retried", "purge": "purged"}[args.action]
    suffix = " (dry run: nothing changed)" if args.dry_run and args.action != "list" else ""
    print(f"{len(found)} inbox dead letter(s) {verb}{suffix}")
    return 0
