"""Run the selected benchmarks against fresh embedded servers and write the report.

Every benchmark is a module with `NAME`, `TITLE` and `async def run(ctx) -> Result`. A
benchmark that fails is reported as not completed; the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from benchmarks import (
    chart,
    consumer,
    latency,
    peers,
    producer,
    relay_throughput,
    report,
    scaling,
    semantics,
)
from benchmarks.env import Context, Environment, Sizes, load_average, machine_facts, nats_version
from benchmarks.model import Result, merge
from benchmarks.options import DESCRIPTION, NAMES, Options, add_arguments, options_from

__all__ = ["BENCHMARKS", "add_arguments", "execute", "main", "options_from"]

MODULES: tuple[ModuleType, ...] = (
    producer,
    relay_throughput,
    consumer,
    latency,
    scaling,
    peers,
    semantics,
)
BENCHMARKS: dict[str, ModuleType] = {module.NAME: module for module in MODULES}
assert tuple(BENCHMARKS) == NAMES, "benchmarks.options.NAMES lists the modules in order"


def selected(options: Options) -> list[ModuleType]:
    """The benchmark modules `--only` asks for (all by default), in the standard order."""
    if not options.only:
        return list(MODULES)
    unknown = [name for name in options.only if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    return [module for module in MODULES if module.NAME in options.only]


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} bench: {message}", file=sys.stderr, flush=True)


async def run_all(options: Options) -> tuple[report.RunInfo, list[Result]]:
    """Start the servers, run every selected benchmark, stop the servers."""
    chosen = selected(options)
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = machine_facts()
    began = time.perf_counter()
    base = options.data_dir or Path(tempfile.mkdtemp(prefix="outboxkit-bench-"))
    env = Environment(base, keep=options.keep)
    results: list[Result] = []
    try:
        log(f"starting PostgreSQL and NATS in {base}")
        await asyncio.to_thread(env.start)
        postgres = await asyncio.to_thread(env.postgres_facts)
        brokers, broker_notes = await _brokers(env, options.brokers)
        ctx = Context(
            env=env,
            sizes=Sizes.for_run(options.quick, options.large),
            quick=options.quick,
            work_dir=base / "logs",
            log=log,
            broker_urls=brokers,
        )
        ctx.shared["broker_notes"] = broker_notes
        for module in chosen:
            runs = []
            for attempt in range(options.repeat):
                if options.repeat > 1:
                    log(f"{module.NAME}: run {attempt + 1} of {options.repeat}")
                runs.append(await _run_one(module.NAME, module.TITLE, module.run, ctx))
            results.append(merge(runs))
    finally:
        await asyncio.to_thread(env.close)
    info = report.RunInfo(
        command=options.command,
        started=started_at,
        seconds=time.perf_counter() - began,
        quick=options.quick,
        machine=machine,
        postgres=postgres,
        nats=nats_version(),
        load_at_end=load_average(),
    )
    return info, results


async def _brokers(env: Environment, wanted: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
    """The extra brokers' URLs (`rabbitmq` starts an embedded node), and what went wrong."""
    urls, notes = [], []
    for broker in wanted:
        if broker != "rabbitmq":
            urls.append(broker)
            continue
        log("starting an embedded RabbitMQ node")
        try:
            urls.append(await asyncio.to_thread(env.start_rabbitmq))
        except (ImportError, OSError, RuntimeError) as exc:
            notes.append(f"RabbitMQ left out: the embedded node did not start ({exc}).")
            log(notes[-1])
    return tuple(urls), notes


async def _run_one(
    name: str, title: str, run: Callable[[Context], Awaitable[Result]], ctx: Context
) -> Result:
    log(f"{name}: {title}")
    began = time.perf_counter()
    try:
        result = await run(ctx)
    except Exception as exc:  # noqa: BLE001 - one failed benchmark must not lose the others
        traceback.print_exc()
        result = Result(name, title, error=f"{type(exc).__name__}: {exc}".strip()[:500])
    result.seconds = time.perf_counter() - began
    for row in result.rows:
        log(
            f"{name}: {row.label}: {report.number(row.ours, row.unit)} vs "
            f"{report.number(row.reference, row.unit)} → {report.ratio(row.ratio)}"
        )
    for target in result.targets:
        log(
            f"{name}: {target.description}: {report.target_value(target)}, {report.verdict(target)}"
        )
    return result


async def _interruptible(options: Options) -> tuple[report.RunInfo, list[Result]]:
    """`run_all`, cancelled by SIGTERM or SIGINT so that its servers and children stop."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        return await run_all(options)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def execute(options: Options) -> int:
    """Run, then write the report and the chart; 1 if a benchmark did not complete."""
    try:
        info, results = asyncio.run(_interruptible(options))
    except asyncio.CancelledError:
        log("interrupted: servers and children stopped, no report written")
        return 130
    title = "outboxkit benchmarks" + (" (--quick)" if options.quick else "")
    charted = chart.write(options.chart_path, results, title)
    report.write(options.out, info, results, options.chart_path if charted else None)
    log(f"wrote {options.out}" + (f" and {options.chart_path}" if charted else ""))
    return 1 if any(r.error for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks [--quick] [--only NAME] [--out FILE]`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=DESCRIPTION)
    add_arguments(parser)
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    logging.basicConfig(level=logging.WARNING)
    command = shlex.join(["python", "-m", "benchmarks", *arguments])
    return execute(options_from(args, command))
