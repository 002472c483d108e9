"""Delivery semantics: the cost of at_most_once and exactly_once against at_least_once.

The same backlog is drained three times by one relay, with `--semantics 'bench.*=…'`.
at_least_once (the default) is the reference.
"""

from __future__ import annotations

from benchmarks import backlog
from benchmarks.brokers import NatsTarget
from benchmarks.env import Context
from benchmarks.model import Result, Row
from benchmarks.relays import drain

NAME = "semantics"
TITLE = "Delivery semantics"
MODES = ("at_least_once", "at_most_once", "exactly_once")


async def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    count = ctx.sizes.semantics_backlog
    target = NatsTarget(ctx.env.nats_url)
    dsn = ctx.database("bench_semantics")
    rates: dict[str, float] = {}
    try:
        for mode in MODES:
            ctx.log(f"semantics: {mode}, {count:,} messages")
            backlog.fill(dsn, count)
            spec = f"{backlog.TOPIC.split('.')[0]}.*={mode}"
            measured = await drain(
                dsn, target, f"sem{mode.replace('_', '')}", count, ctx.work_dir,
                extra_args=("--semantics", spec),
            )  # fmt: skip
            rates[mode] = measured.rate
    finally:
        await target.close()
        ctx.env.drop("bench_semantics")
    reference = rates["at_least_once"]
    for mode in MODES:
        result.rows.append(
            Row(mode, rates[mode], "msg/s", reference, "at_least_once", chart=mode != MODES[0])
        )
    result.notes.append(
        f"{count:,} messages, one relay, batch 500. at_most_once deletes and commits a batch "
        "before publishing it (never retried); exactly_once is at_least_once plus the "
        "broker's dedup id, which the NATS publisher sets on every message anyway."
    )
    return result
