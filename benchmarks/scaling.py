"""Scaling: 1, 2, 4 relays on one database; 1 → 64 partitions; relay memory while draining.

- relays: the same backlog drained by k relay subprocesses released together; reference:
  one relay. The machine's core count bounds this: relays, PostgreSQL and NATS share it.
- partitions: one relay, the partition count set with `relay.admin.set_partitions` before
  the backlog is written; reference: the default 16.
- memory: the RSS of one relay process sampled while it drains a large backlog; flat means
  the RSS at the end is within 20 % of the RSS at 10 % of the drain.
"""

from __future__ import annotations

from benchmarks import backlog
from benchmarks.brokers import NatsTarget
from benchmarks.env import SCHEMA, Context
from benchmarks.model import Result, Row, Target
from benchmarks.relays import Drain, drain
from outboxkit.relay.admin import set_partitions

NAME = "scaling"
TITLE = "Scaling: relays, partitions, memory"
DEFAULT_PARTITIONS = 16


def rss_at(run: Drain, fraction: float, total: int) -> float | None:
    """RSS (MiB) at the first sample where `fraction` of the backlog was delivered."""
    for delivered, kib in run.rss:
        if delivered >= fraction * total and kib:
            return kib / 1024
    return None


async def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    target = NatsTarget(ctx.env.nats_url)
    count = ctx.sizes.scaling_backlog
    dsn = ctx.database("bench_scaling")
    try:
        rates: dict[int, float] = {}
        for relays in ctx.sizes.relay_counts:
            ctx.log(f"scaling: {relays} relay(s), {count:,} messages")
            backlog.fill(dsn, count)
            rates[relays] = (
                await drain(dsn, target, f"relays{relays}", count, ctx.work_dir, relays=relays)
            ).rate
        for relays, rate in rates.items():
            result.rows.append(
                Row(f"{relays} relay(s)", rate, "msg/s", rates[1], "1 relay", chart=relays > 1)
            )
        by_partitions: dict[int, float] = {}
        order = sorted(ctx.sizes.partitions, key=lambda p: p != DEFAULT_PARTITIONS)
        for partitions in (DEFAULT_PARTITIONS, *[p for p in order if p != DEFAULT_PARTITIONS]):
            ctx.log(f"scaling: {partitions} partitions, one relay")
            set_partitions(dsn, SCHEMA, partitions)
            backlog.fill(dsn, count)
            by_partitions[partitions] = (
                await drain(dsn, target, f"parts{partitions}", count, ctx.work_dir)
            ).rate
        set_partitions(dsn, SCHEMA, DEFAULT_PARTITIONS)
        for partitions in sorted(by_partitions):
            result.rows.append(
                Row(
                    f"{partitions} partitions",
                    by_partitions[partitions],
                    "msg/s",
                    by_partitions[DEFAULT_PARTITIONS],
                    f"{DEFAULT_PARTITIONS} partitions",
                )
            )
        big = ctx.sizes.memory_backlog
        ctx.log(f"scaling: relay memory while draining {big:,} messages")
        backlog.fill(dsn, big)
        sampled = await drain(dsn, target, "memory", big, ctx.work_dir, sample_rss=True)
        early, middle, end = (rss_at(sampled, f, big) for f in (0.1, 0.5, 1.0))
        peak = max((kib for _, kib in sampled.rss), default=0) / 1024
        if early and end:
            result.rows += [
                Row("relay RSS at 50 % of the drain", middle, "MiB", early, "RSS at 10 %",
                    lower_is_better=True),
                Row("relay RSS at the end", end, "MiB", early, "RSS at 10 %", lower_is_better=True),
                Row("relay RSS peak", peak, "MiB", early, "RSS at 10 %", lower_is_better=True),
            ]  # fmt: skip
            growth = (end / early - 1) * 100
            result.targets.append(
                Target("relay RSS growth, 10 % → end of drain ≤ 20 %", growth, 20, False, "%")
            )
        result.notes.append(
            f"Relays and partitions: {count:,} messages each run, batch 500. Memory: "
            f"{big:,} messages at {sampled.rate:,.0f} msg/s, {len(sampled.rss)} RSS samples "
            "of the relay process (/proc/PID/status VmRSS)."
        )
    finally:
        await target.close()
        ctx.env.drop("bench_scaling")
    return result
