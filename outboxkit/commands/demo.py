"""`outboxkit demo`: the end-to-end demo on embedded PostgreSQL and NATS."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from outboxkit.demo import DemoOptions, Verdict, run_demo
from outboxkit.demo_counts import Counts

HEADER = (
    f"{'orders':>8} {'pending':>8} {'in NATS':>8} "
    f"{'delivered':>10} {'processed':>10} {'invoices':>9}"
)


def register(subparsers: Any) -> None:
    """Add the `demo` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="run the end-to-end demo on embedded PostgreSQL and NATS"
    )
    parser.add_argument("--orders", type=int, default=2000, help="orders to place (default 2000)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent order requests")
    parser.add_argument(
        "--redeliver", type=int, default=50, help="events to redeliver on purpose (default 50)"
    )
    parser.add_argument("--data-dir", type=Path, help="keep servers' data here (default: temp)")
    parser.add_argument(
        "--keep-data", action="store_true", help="leave the databases in --data-dir for inspection"
    )
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.set_defaults(handler=run)


class LiveView:
    """Progress on one refreshed line on a terminal, a line a second otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.last = 0.0
        self.header_shown = False

    def __call__(self, note: str, counts: Counts) -> None:
        if note:
            self._end_line()
            print(f"» {note}", flush=True)
            self.header_shown = False
            return
        now = time.monotonic()
        if not self.tty and now - self.last < 1.0:
            return
        self.last = now
        if not self.header_shown:
            print(HEADER)
            self.header_shown = True
        row = (
            f"{counts.written:>8} {counts.pending:>8} {counts.in_broker:>8} "
            f"{counts.delivered:>10} {counts.processed:>10} {counts.invoices:>9}"
        )
        print(f"\r{row}" if self.tty else row, end="" if self.tty else "\n", flush=True)

    def _end_line(self) -> None:
        if self.tty and self.header_shown:
            print()


def run(args: argparse.Namespace) -> int:
    """Handle `outboxkit demo`."""
    options = DemoOptions(
        orders=args.orders,
        concurrency=args.concurrency,
        redeliver=args.redeliver,
        data_dir=args.data_dir,
        keep_data=args.keep_data,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per order placed
    view = LiveView()
    verdict = asyncio.run(run_demo(options, view))
    view._end_line()
    report(verdict, as_json=args.json)
    return 0 if verdict.ok else 1


def report(verdict: Verdict, *, as_json: bool) -> None:
    """Print the verdict."""
    c = verdict.counts
    if as_json:
        print(
            json.dumps(
                asdict(c)
                | {
                    "duplicates_absorbed": c.duplicates_absorbed,
                    "relay_kills": verdict.relay_kills,
                    "redelivered": verdict.redelivered,
                    "failures": verdict.failures,
                    "ok": verdict.ok,
                }
            )
        )
        return
    print()
    print(f"orders placed:            {c.written}")
    print(f"invoices:                 {c.invoices}  ({c.distinct_invoices} distinct orders)")
    print(f"relay SIGKILLed:          {verdict.relay_kills} time(s), then restarted")
    print(f"redelivered on purpose:   {verdict.redelivered}")
    print(
        f"duplicates absorbed:      {c.duplicates_absorbed} (delivered {c.delivered}, "
        f"handled once {c.processed})"
    )
    if verdict.ok:
        print("verdict: OK: orders = invoices, no invoice twice, every duplicate absorbed")
    else:
        for failure in verdict.failures:
            print(f"verdict: FAILED: {failure}")
