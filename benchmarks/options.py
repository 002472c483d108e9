"""The harness's options and flags, importable without loading any benchmark.

`outboxkit bench` builds its parser from `add_arguments` at every start of the CLI, so this
module stays light: no server client, no benchmark module.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

DESCRIPTION = (
    "Measure outboxkit next to its references (raw SQL, raw broker clients, peers) on "
    "embedded PostgreSQL and NATS started for the run; write a Markdown report and a PNG chart."
)
# The benchmarks, in the order they run (each is `benchmarks/<module>.py` with this NAME).
NAMES = ("producer", "relay", "inbox", "latency", "scaling", "peers", "semantics")


@dataclass(frozen=True)
class Options:
    """What to run and where to write it."""

    quick: bool = False
    only: tuple[str, ...] = ()
    out: Path = Path("BENCHMARKS.md")
    chart: Path | None = None
    large: bool = False
    brokers: tuple[str, ...] = ()
    repeat: int = 1
    data_dir: Path | None = None
    keep: bool = False
    command: str = ""

    @property
    def chart_path(self) -> Path:
        return self.chart or self.out.with_suffix(".png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `outboxkit bench` and `python -m benchmarks`."""
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run of a few minutes"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these benchmarks (repeat or comma-separate): {', '.join(NAMES)}",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("BENCHMARKS.md"), help="the report (default BENCHMARKS.md)"
    )
    parser.add_argument(
        "--chart", type=Path, help="the PNG chart (default: the report's name with .png)"
    )
    parser.add_argument(
        "--large",
        action="store_true",
        help="1M-message backlogs for the relay and memory runs (instead of 100k and 300k)",
    )
    parser.add_argument(
        "--broker",
        action="append",
        default=[],
        metavar="URL",
        help="also benchmark the relay into this broker: `rabbitmq` (an embedded node, from "
        "Debian's rabbitmq-server) or an amqp:// URL",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run each benchmark N times and report medians, with each ratio's spread",
    )
    parser.add_argument("--data-dir", type=Path, help="where the servers keep data (default temp)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory afterwards")


def options_from(args: argparse.Namespace, command: str) -> Options:
    only = tuple(name.strip() for item in args.only for name in item.split(",") if name.strip())
    return Options(
        quick=args.quick,
        only=only,
        out=args.out,
        chart=args.chart,
        large=args.large,
        brokers=tuple(args.broker),
        repeat=max(args.repeat, 1),
        data_dir=args.data_dir,
        keep=args.keep,
        command=command,
    )
