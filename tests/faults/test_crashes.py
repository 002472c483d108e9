"""Scenarios 1, 2 and 11: rollbacks, relay crashes at each step, consumer crash before ack."""

from __future__ import annotations

import asyncio
import signal

import pytest

from outboxkit.faults.checker import check
from outboxkit.faults.world import World
from tests.faults.conftest import Report


async def test_01_rolled_back_transactions_and_savepoints_publish_nothing(
    world: World, report: Report
) -> None:
    world.start_relay()
    world.start_consumer()
    committed = world.produce(300, tx_size=3, rollback_every=4, savepoint_rollback_every=3)
    recovery = await world.wait_drained(expected=committed)
    verdict = await check(world, max_duplicates=0)
    report(
        1,
        "producer rollback and savepoint rollback",
        verdict,
        faults="every 4th tx rolled back, savepoint rolled back in every 3rd",
        recovery=recovery,
    )
    assert verdict.ok, verdict.problems
    assert verdict.committed == committed


@pytest.mark.parametrize("step", ["after_claim", "after_publish", "before_commit", "after_commit"])
async def test_02_relay_sigkill_at_each_step(world: World, report: Report, step: str) -> None:
    world.produce(400, tx_size=10, rollback_every=7)
    crashed = world.start_relay("crashing", crash_at=f"{step}:2")
    world.start_consumer()
    await asyncio.to_thread(crashed.popen.wait, 60)
    assert crashed.popen.returncode == -signal.SIGKILL, crashed.output()[-2000:]
    world.start_relay("restarted")
    recovery = await world.wait_drained()
    verdict = await check(world, max_duplicates=world.batch_size)
    report(2, f"relay SIGKILL {step}", verdict, faults="1 SIGKILL", recovery=recovery)
    assert verdict.ok, verdict.problems


async def test_11_consumer_killed_after_commit_before_ack(world: World, report: Report) -> None:
    world.produce(200, tx_size=10)
    world.start_relay()
    crashed = world.start_consumer("crashing", crash_at="after_handle_commit:2")
    await asyncio.to_thread(crashed.popen.wait, 60)
    assert crashed.popen.returncode == -signal.SIGKILL, crashed.output()[-2000:]
    world.start_consumer("restarted")
    recovery = await world.wait_drained()
    verdict = await check(world)
    report(
        11,
        "consumer SIGKILL after handler commit, before ack",
        verdict,
        faults="1 SIGKILL",
        recovery=recovery,
    )
    assert verdict.ok, verdict.problems
