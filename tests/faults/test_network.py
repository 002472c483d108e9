"""Scenarios 3, 5 and 18: the network between the relay and the broker fails.

3: the broker stores a message but its confirm never reaches the relay (lost PubAck).
5: the broker refuses connections, then swallows everything (blackhole), ~10 s each.
18: packet loss, then a full partition, with nftables drop rules in a network namespace.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import nats
import pytest

from outboxkit.devservers import free_port
from outboxkit.faults import netns
from outboxkit.faults.checker import check
from outboxkit.faults.proxy import FaultProxy
from outboxkit.faults.world import STREAM, Process, World
from tests.faults.conftest import Report

# The world's broker URL through its proxy sets the PubAck timeout and the consumer's ack
# wait to 2 s.
PUBACK_TIMEOUT = 2.0
# Hang guard for one HTTP call to the relay's ops server.
HTTP_GUARD = 5.0
FAULT_SECONDS = 10.0  # each fault of scenario 18


class Stream:
    """The stream's last sequence number, read over one connection of our own."""

    def __init__(self, client: nats.NATS) -> None:
        self.client = client

    async def last_seq(self) -> int:
        info = await self.client.jetstream().stream_info(STREAM)
        return int(info.state.last_seq)

    async def grown(self, by: int, within: float) -> float:
        """Wait until `by` more messages are in the stream; the seconds it took."""
        started = time.monotonic()
        target = await self.last_seq() + by
        while await self.last_seq() < target:
            if time.monotonic() - started > within:
                raise TimeoutError(f"the stream did not grow by {by} in {within} s")
            await asyncio.sleep(0.05)
        return time.monotonic() - started


@asynccontextmanager
async def stream_of(world: World) -> AsyncIterator[Stream]:
    assert world.nats is not None
    client = await nats.connect(world.nats.url)
    try:
        yield Stream(client)
    finally:
        await client.close()


@dataclass
class Producing:
    """Keeps writing small transactions in a thread until stopped."""

    world: World
    pause: float = 0.05
    committed: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> Producing:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while not self._stop.is_set():
            production = await asyncio.to_thread(
                self.world.produce_through_outages, 5, tx_size=5, within=60
            )
            self.committed += production.committed
            await asyncio.sleep(self.pause)

    async def stop(self) -> int:
        self._stop.set()
        assert self._task is not None
        await self._task
        return self.committed


def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, dict[str, object] | str]:
    """GET the relay's ops server (bounded by HTTP_GUARD); (status, JSON body or text)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=HTTP_GUARD) as r:
            status, body = r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    try:
        return status, json.loads(body)
    except json.JSONDecodeError:
        return status, body


def failed_total(port: int, host: str = "127.0.0.1") -> int:
    """The relay's `outboxkit_relay_failed_total` over all topics: attempts counted."""
    _, text = get(port, "/metrics", host)
    assert isinstance(text, str)
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("outboxkit_relay_failed_total{")
    )


async def wait_ready(
    port: int, relay: Process, within: float = 60.0, host: str = "127.0.0.1"
) -> float:
    """Wait until /readyz answers 200; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        assert relay.alive, relay.output()[-3000:]
        try:
            status, _ = await asyncio.to_thread(get, port, "/readyz", host)
            if status == 200:
                return time.monotonic() - started
        except OSError:
            pass  # not listening yet
        await asyncio.sleep(0.2)
    raise TimeoutError(f"/readyz not 200 within {within} s:\n{relay.output()[-3000:]}")


# -- 3 -----------------------------------------------------------------------------------


async def test_03_broker_confirm_lost(world: World, report: Report) -> None:
    """The relay's connection is cut right after the broker stored a message and before its
    PubAck reaches the relay: the relay must republish, the inbox absorb the copies."""
    world.produce(500, tx_size=10)  # a backlog, so that batches are in flight at each fault
    relay = world.start_relay(via_broker_proxy=True)
    world.start_consumer()
    proxy = world.broker_proxy
    assert proxy is not None
    producing = Producing(world, pause=0.02).start()
    faults, recoveries, connections = 0, [], []
    async with stream_of(world) as stream:
        for _ in range(5):
            await stream.grown(world.batch_size, within=60)
            before = proxy.connections_seen
            await proxy.set_mode("drop_replies")
            faults += 1
            await asyncio.sleep(1.0)
            await proxy.set_mode("pass")
            recoveries.append(await stream.grown(1, within=60))
            connections.append(proxy.connections_seen - before)
            assert relay.alive, relay.output()[-3000:]
    await producing.stop()
    recovery = await world.wait_drained()
    verdict = await check(world, max_duplicates=faults * world.batch_size)
    report(
        3,
        "broker confirm lost (connection cut after the broker stored, before the PubAck)",
        verdict,
        faults=f"{faults} x drop_replies for 1 s, under load",
        recovery=max([*recoveries, recovery]),
    )
    print(
        f"duplicates {verdict.duplicates_delivered} (bound {faults * world.batch_size}), "
        f"recoveries {[round(r, 1) for r in recoveries]} s, drain {recovery:.1f} s, "
        f"reconnections per fault {connections}"
    )
    assert verdict.ok, verdict.problems
    # Each fault hit a batch in flight: its stored-but-unconfirmed messages came again.
    assert verdict.duplicates_delivered >= 1
    assert relay.alive


# -- 5 -----------------------------------------------------------------------------------


@dataclass
class Observed:
    """What /readyz and /healthz said while a fault lasted."""

    ready_statuses: list[int] = field(default_factory=list)
    broker_checks: list[str] = field(default_factory=list)
    health_statuses: list[int] = field(default_factory=list)
    slowest_call: float = 0.0

    @property
    def reported_down(self) -> bool:
        return any(
            status == 503 and check.startswith("down")
            for status, check in zip(self.ready_statuses, self.broker_checks, strict=True)
        )


async def observe(port: int, relay: Process, seconds: float, host: str = "127.0.0.1") -> Observed:
    """Poll /readyz and /healthz for `seconds`; every call must answer (no hang)."""
    seen = Observed()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert relay.alive, relay.output()[-3000:]
        started = time.monotonic()
        status, body = await asyncio.to_thread(get, port, "/readyz", host)
        health, _ = await asyncio.to_thread(get, port, "/healthz", host)
        seen.slowest_call = max(seen.slowest_call, time.monotonic() - started)
        seen.ready_statuses.append(status)
        checks = body.get("checks", {}) if isinstance(body, dict) else {}
        seen.broker_checks.append(str(checks.get("broker", "")) if isinstance(checks, dict) else "")
        seen.health_statuses.append(health)
        await asyncio.sleep(0.5)
    return seen


async def test_05_broker_refused_then_blackholed(world: World, report: Report) -> None:
    """~10 s of connection refused, then ~10 s of a broker that accepts and never answers,
    while the service keeps writing: the relay must neither hang nor exit, must say on
    /readyz that the broker is down, and must drain the backlog once the broker is back."""
    port = free_port()
    relay = world.start_relay(via_broker_proxy=True, extra=("--http-port", str(port)))
    world.start_consumer()
    proxy = world.broker_proxy
    assert proxy is not None
    await wait_ready(port, relay)
    producing = Producing(world, pause=0.05).start()
    observed: dict[str, Observed] = {}
    recoveries: dict[str, float] = {}
    async with stream_of(world) as stream:
        for mode in ("refuse", "blackhole"):
            await stream.grown(world.batch_size, within=60)
            await proxy.set_mode(mode)
            observed[mode] = await observe(port, relay, 10.0)
            backlog_at_heal = await asyncio.to_thread(world.pending)
            await proxy.set_mode("pass")
            healed = time.monotonic()
            await wait_ready(port, relay)
            await stream.grown(1, within=60)
            recoveries[mode] = time.monotonic() - healed
            print(
                f"{mode}: readyz {observed[mode].ready_statuses}, broker "
                f"{sorted(set(observed[mode].broker_checks))}, slowest call "
                f"{observed[mode].slowest_call:.2f} s, backlog at heal {backlog_at_heal}, "
                f"recovered in {recoveries[mode]:.1f} s"
            )
    await producing.stop()
    drain = await world.wait_drained()
    verdict = await check(world, max_duplicates=2 * world.batch_size)
    dead_letters = world.scalar(
        world.service_dsn, "SELECT count(*) FROM outboxkit.outbox_dead_letters"
    )
    report(
        5,
        "broker down (refused) and blackholed (silent), 10 s each, under load",
        verdict,
        faults="10 s refuse + 10 s blackhole",
        recovery=max([*recoveries.values(), drain]),
    )
    attempts_counted = await asyncio.to_thread(failed_total, port)
    print(
        f"duplicates {verdict.duplicates_delivered}, drain {drain:.1f} s, "
        f"attempts counted {attempts_counted}"
    )
    assert verdict.ok, verdict.problems
    # A broker outage, refused or silent, counts no attempt against the messages (they
    # would end up dead-lettered after a long enough outage).
    assert attempts_counted == 0
    assert dead_letters == 0
    for mode, seen in observed.items():
        assert seen.reported_down, f"{mode}: /readyz never said the broker was down: {seen}"
        assert set(seen.health_statuses) == {200}, f"{mode}: /healthz failed: {seen}"
    assert relay.alive


# -- 18 ----------------------------------------------------------------------------------


async def test_18_packet_loss_and_partition_with_nftables(world: World, report: Report) -> None:
    """The relay runs in its own network namespace; nftables rules there drop (not reject)
    first 30 % of the packets to and from the broker for ~10 s, then all of them for
    ~10 s (a partition); the database path is untouched. Then the rules are flushed."""
    name = "packet loss and partition relay-broker (nftables in a netns)"
    reason = await asyncio.to_thread(netns.unavailable)
    if reason is not None:
        report(18, name, None, faults="none", outcome=f"not run: {reason}")
        pytest.skip(reason)
    assert world.nats is not None and world.postgres is not None
    namespace = await asyncio.to_thread(netns.NetworkNamespace().create)
    proxies: list[FaultProxy] = []
    relay: Process | None = None
    try:
        host = namespace.host_ip
        broker_proxy = await FaultProxy(world.nats.port, listen_host=host).start()
        db_proxy = await FaultProxy(world.postgres.port, listen_host=host).start()
        proxies += [broker_proxy, db_proxy]
        dsn = f"postgresql://{world.postgres.user}@{host}:{db_proxy.port}/service"
        broker = world.broker_url(timeout=str(PUBACK_TIMEOUT)).replace(
            f"127.0.0.1:{world.nats.port}", f"{host}:{broker_proxy.port}"
        )
        world.produce(300, tx_size=10)
        inside, port = namespace.namespace_ip, free_port()
        relay = world.start_relay(
            prefix=namespace.prefix,
            dsn=dsn,
            broker=broker,
            extra=("--http-host", inside, "--http-port", str(port)),
        )
        world.start_consumer()
        await wait_ready(port, relay, host=inside)
        producing = Producing(world, pause=0.05).start()
        recoveries, observed = [], {}
        async with stream_of(world) as stream:
            await stream.grown(world.batch_size, within=60)
            for percent in (30, 100):
                await asyncio.to_thread(namespace.drop, broker_proxy.port, percent=percent)
                observed[percent] = await observe(port, relay, FAULT_SECONDS, host=inside)
                await asyncio.to_thread(namespace.heal)
                healed = time.monotonic()
                await stream.grown(world.batch_size, within=90)
                recoveries.append(time.monotonic() - healed)
        await producing.stop()
        drain = await world.wait_drained(within=180)
        # A batch whose PubAcks are lost waits PUBACK_TIMEOUT before it is given up and
        # published again, so at most FAULT_SECONDS / PUBACK_TIMEOUT (+1 at each edge of a
        # fault) batches can come twice.
        bound = world.batch_size * (int(2 * FAULT_SECONDS / PUBACK_TIMEOUT) + 2 * 2)
        verdict = await check(world, max_duplicates=bound)
        attempts_counted = await asyncio.to_thread(failed_total, port, inside)
        report(
            18,
            name,
            verdict,
            faults="10 s of 30 % packet loss + 10 s partition (nftables drop)",
            recovery=max([*recoveries, drain]),
        )
        print(
            f"duplicates {verdict.duplicates_delivered} (bound {bound}), recoveries "
            f"{[round(r, 1) for r in recoveries]} s, drain {drain:.1f} s, attempts counted "
            f"{attempts_counted}"
        )
        for percent, seen in observed.items():
            print(f"{percent} % dropped: readyz {seen.ready_statuses}")
        assert verdict.ok, verdict.problems
        assert relay.alive
        for seen in observed.values():
            assert set(seen.health_statuses) == {200}, seen  # never hung
        # The partition is an outage, not a failure of the messages.
        assert observed[100].reported_down, observed[100]
    finally:
        if relay is not None and relay.alive:
            relay.kill()
        for proxy in proxies:
            await proxy.close()
        await asyncio.to_thread(namespace.delete)
