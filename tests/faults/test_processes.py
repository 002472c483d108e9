"""Scenarios 6-9, 15 and 16: processes frozen, killed and added; transactions committing out
of id order; a long transaction elsewhere; clock skew; a full disk.

Bounds in these tests are hang guards, never performance thresholds: the figures they
observe (duplicates, seconds to recover, latencies) go into RELIABILITY.md instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import psycopg
import pytest

from outboxkit import outbox
from outboxkit.devservers.ports import free_port
from outboxkit.devservers.postgres import UNPRIVILEGED_USER
from outboxkit.faults.checker import check
from outboxkit.faults.world import STREAM, Process, World
from outboxkit.outbox.envelope import CREATED_AT, MESSAGE_ID
from tests.faults.conftest import Report
from tests.support.waiting import eventually

PARTITIONS = 16
TTL = 5.0  # RelaySettings.relay_ttl: a relay silent this long is pruned by its peers
GAUGE_INTERVAL = 5.0  # relay.runner.GAUGE_INTERVAL: the backlog gauges' refresh period


# -- helpers -------------------------------------------------------------------------------


class Producer:
    """Keeps writing `tx_size`-message transactions in a thread until stopped."""

    def __init__(self, world: World, *, tx_size: int = 5, pause: float = 0.02) -> None:
        self.world, self.tx_size, self.pause = world, tx_size, pause
        self.committed = 0
        self._stop = threading.Event()
        self._task: asyncio.Future[None] | None = None

    def start(self) -> Producer:
        self._task = asyncio.ensure_future(asyncio.to_thread(self._run))
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.committed += self.world.produce(self.tx_size, tx_size=self.tx_size)
            time.sleep(self.pause)

    async def stop(self) -> int:
        """Stop writing; raises what the writing thread raised, if anything."""
        self._stop.set()
        if self._task is not None:
            await self._task
        return self.committed


Producers = Callable[..., Producer]


@pytest.fixture
async def producers(world: World) -> AsyncIterator[Producers]:
    """`producers(**options)` starts a `Producer`; all are stopped when the test ends."""
    started: list[Producer] = []

    def start(**options: Any) -> Producer:
        started.append(Producer(world, **options).start())
        return started[-1]

    yield start
    for producer in started:
        with contextlib.suppress(Exception):
            await producer.stop()


def relay_named(world: World, relay_id: str, *extra: str, prefix: tuple[str, ...] = ()) -> Process:
    """A relay with a fixed id (the `--relay-id` given last wins)."""
    return world.start_relay(relay_id, extra=("--relay-id", relay_id, *extra), prefix=prefix)


async def settled_ownership(world: World, relay_ids: set[str], within: float = 60.0) -> float:
    """Wait until exactly `relay_ids` hold every partition's lock (pg_locks), each a share,
    and the relay table says the same, twice in a row; then check that `outboxkit status
    --json` agrees. Returns the seconds it took to settle."""
    started = time.monotonic()
    previous: dict[str, list[int]] = {}

    async def agreed() -> bool:
        nonlocal previous
        owners = await asyncio.to_thread(world.lock_owners)
        table = await asyncio.to_thread(relay_table, world)
        held = sorted(p for parts in owners.values() for p in parts)
        ok = (
            set(owners) == relay_ids
            and table == owners
            and held == list(range(PARTITIONS))
            and all(owners.values())
            and owners == previous
        )
        previous = owners
        return ok

    await eventually(agreed, within=within, every=0.2)
    took = time.monotonic() - started
    status = await asyncio.to_thread(world.status)
    assert {r["relay_id"]: sorted(r["partitions"]) for r in status["relays"]} == previous
    return took


def relay_table(world: World) -> dict[str, list[int]]:
    """outbox_relays: relay id -> the partitions it last reported owning."""
    with psycopg.connect(world.service_dsn) as conn:
        rows = conn.execute("SELECT relay_id, partitions FROM outboxkit.outbox_relays").fetchall()
    return {str(relay_id): sorted(parts) for relay_id, parts in rows}


def heartbeat_ages(world: World) -> dict[str, float]:
    """Relay id -> seconds since its last heartbeat, by the database's clock."""
    with psycopg.connect(world.service_dsn) as conn:
        rows = conn.execute(
            "SELECT relay_id, extract(epoch FROM now() - heartbeat_at)::float8"
            " FROM outboxkit.outbox_relays"
        ).fetchall()
    return {str(relay_id): float(age) for relay_id, age in rows}


def partitions_of_keys(world: World) -> dict[str, int]:
    return {f"k{n}": world.partition_of(f"k{n}") for n in range(world.keys)}


def ledger_ids(world: World) -> dict[str, str]:
    """message id -> key of every committed message."""
    with psycopg.connect(world.service_dsn) as conn:
        return {str(m): k for m, k in conn.execute("SELECT message_id, key FROM ledger")}


def pending_ids(world: World) -> set[str]:
    with psycopg.connect(world.service_dsn) as conn:
        rows = conn.execute("SELECT message_id FROM outboxkit.outbox_messages").fetchall()
    return {str(row[0]) for row in rows}


async def stream_entries(world: World) -> list[tuple[str, datetime, dict[str, str]]]:
    """(message id, JetStream arrival time, headers) of every stream message, in order."""
    assert world.nats is not None
    client = await nats.connect(world.nats.url)
    try:
        js = client.jetstream()
        info = await js.stream_info(STREAM)
        found = []
        for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                stored = await js.get_msg(STREAM, seq)
                headers = dict(stored.headers or {})
                assert stored.time is not None
                found.append((headers.get(MESSAGE_ID, ""), stored.time, headers))
        return found
    finally:
        await client.close()


async def in_stream(world: World) -> set[str]:
    return {message_id for message_id, _, _ in await stream_entries(world)}


def backend_in_flight(world: World, relay_id: str) -> bool:
    """Whether the relay's connection sits inside a claim transaction (claimed, not settled)."""
    return bool(
        world.scalar(
            world.service_dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND state = 'idle in transaction' AND query LIKE '%%SKIP LOCKED%%'",
            (f"outboxkit-relay {relay_id}",),
        )
    )


# -- 6. a relay frozen past its lease ----------------------------------------------------------


async def test_06_relay_frozen_past_its_lease_then_resumed(
    world: World, report: Report, producers: Producers
) -> None:
    frozen = relay_named(world, "relay-a")
    relay_named(world, "relay-b")
    world.start_consumer()
    await settled_ownership(world, {"relay-a", "relay-b"})
    key_partition = await asyncio.to_thread(partitions_of_keys, world)
    producer = producers(pause=0.05)
    await eventually(lambda: _true(producer.committed >= 100), within=60)

    frozen.freeze()
    stopped_at = time.monotonic()
    owned = await asyncio.to_thread(world.lock_owners)
    a_parts, b_parts = set(owned["relay-a"]), set(owned["relay-b"])
    before = set(await asyncio.to_thread(ledger_ids, world))  # all written before the freeze
    try:
        # relay-b prunes relay-a's silent row after the TTL, wants every partition, and
        # fails to lock relay-a's: the frozen session still holds those locks.
        async def a_pruned() -> bool:
            return list(await asyncio.to_thread(relay_table, world)) == ["relay-b"]

        await eventually(a_pruned, within=60, every=0.1)
        pruned_after = time.monotonic() - stopped_at
        await asyncio.sleep(3.0)  # several more heartbeats of relay-b trying to take them
        during = await asyncio.to_thread(world.lock_owners)
        status = await asyncio.to_thread(world.status)
        written = {
            m: k for m, k in (await asyncio.to_thread(ledger_ids, world)).items() if m not in before
        }
        a_new = {m for m, k in written.items() if key_partition[k] in a_parts}
        b_new = {m for m, k in written.items() if key_partition[k] in b_parts}

        async def b_side_flowed() -> bool:
            return b_new <= await in_stream(world)

        await eventually(b_side_flowed, within=60)  # the live relay's partitions flow
        published = await in_stream(world)
        still_pending = await asyncio.to_thread(pending_ids, world)
        frozen_seconds = time.monotonic() - stopped_at
    finally:
        frozen.thaw()
    resumed_at = time.monotonic()

    assert during == {"relay-a": sorted(a_parts), "relay-b": sorted(b_parts)}, during
    assert [(r["relay_id"], r["partitions"]) for r in status["relays"]] == [
        ("relay-b", sorted(b_parts))
    ]
    assert a_new and b_new, "the producer wrote to both relays' partitions during the freeze"
    assert not a_new & published, "a frozen relay's partition was published by another relay"
    assert a_new <= still_pending, "the frozen relay's messages wait, pending, in the outbox"

    await settled_ownership(world, {"relay-a", "relay-b"})  # relay-a back with its share
    committed = await producer.stop()
    await world.wait_drained()
    recovery = time.monotonic() - resumed_at
    verdict = await check(world, max_duplicates=world.batch_size)
    report(
        6,
        "relay frozen (SIGSTOP) past its lease, then resumed",
        verdict,
        faults=f"1 SIGSTOP for {frozen_seconds:.0f} s (pruned after {pruned_after:.1f} s, "
        f"TTL {TTL:.0f} s); {len(a_new)} messages of its partitions waited, "
        f"{len(b_new)} of the other relay's flowed",
        recovery=recovery,
    )
    assert verdict.ok, verdict.problems
    assert verdict.committed == committed
    assert frozen.alive, frozen.output()[-2000:]


async def _true(value: bool) -> bool:
    return value


# -- 7. three relays, one killed, one added -----------------------------------------------------


async def test_07_three_relays_one_killed_one_added(
    world: World, report: Report, producers: Producers
) -> None:
    relays = {rid: relay_named(world, rid) for rid in ("relay-1", "relay-2", "relay-3")}
    world.start_consumer()
    await settled_ownership(world, set(relays))
    before = await asyncio.to_thread(world.lock_owners)
    producer = producers(tx_size=10, pause=0.01)
    await eventually(lambda: _true(producer.committed >= 200), within=60)

    deadline = time.monotonic() + 30  # catch relay-2 between its claim and its commit
    while not await asyncio.to_thread(backend_in_flight, world, "relay-2"):
        if time.monotonic() > deadline:
            break  # idle: killed between batches, which is a fault too
        await asyncio.sleep(0.002)
    mid_batch = time.monotonic() <= deadline
    relays["relay-2"].kill()
    killed_at = time.monotonic()
    relays["relay-4"] = relay_named(world, "relay-4")

    await settled_ownership(world, {"relay-1", "relay-3", "relay-4"}, within=90)
    moved = time.monotonic() - killed_at
    after = await asyncio.to_thread(world.lock_owners)
    await eventually(lambda: _true(producer.committed >= 600), within=60)
    committed = await producer.stop()
    await world.wait_drained()
    recovery = time.monotonic() - killed_at
    verdict = await check(world, max_duplicates=1 * world.batch_size)
    report(
        7,
        "3 relays: one SIGKILLed, one added, while publishing",
        verdict,
        faults=f"1 SIGKILL ({'mid-batch' if mid_batch else 'between batches'}), 1 relay "
        f"added; ownership moved in {moved:.1f} s",
        recovery=recovery,
    )
    assert verdict.ok, verdict.problems
    assert verdict.committed == committed
    assert set(after) == {"relay-1", "relay-3", "relay-4"}
    assert set(before["relay-2"]) <= {
        p for r in ("relay-1", "relay-3", "relay-4") for p in after[r]
    }
    for rid in ("relay-1", "relay-3", "relay-4"):
        assert relays[rid].alive, relays[rid].output()[-2000:]


# -- 8. transactions committing out of id order -------------------------------------------------


async def test_08_transactions_committing_out_of_id_order(
    world: World, report: Report, producers: Producers
) -> None:
    """The first transaction to write (the lower ids) commits last. Claim-and-delete has no
    `id > last_seen` cursor, so nothing is skipped. Same-key messages of two *concurrent*
    transactions have no defined order: the relay publishes, in id order, what is committed
    when it claims, so here (the later-id transaction commits and is published first) they
    arrive in commit order. The ledger gives both the same `seq` (unordered); messages of
    the key written after both commit must come after both."""
    world.start_relay()
    world.start_consumer()
    producer = producers(pause=0.02)  # background traffic on keys k0..k19
    rounds, lower_first_published = 5, 0
    for n in range(rounds):
        first, second = await asyncio.to_thread(_open_pair, world, n)
        try:
            # `second` wrote after `first` (higher ids) and commits first ...
            second_ids = await asyncio.to_thread(second.commit)

            async def second_published(ids: set[str] = second_ids) -> bool:
                return ids <= await in_stream(world)

            await eventually(second_published, within=60)
            # ... while `first` still holds its lower ids, uncommitted; now it commits.
            first_ids = await asyncio.to_thread(first.commit)
        finally:
            await asyncio.to_thread(first.close)
            await asyncio.to_thread(second.close)

        async def first_published(ids: set[str] = first_ids) -> bool:
            return ids <= await in_stream(world)

        await eventually(first_published, within=60)  # not skipped
        order = [m for m, _, _ in await stream_entries(world) if m in first_ids | second_ids]
        lower_first_published += order[0] in first_ids
        # after both: the next message of the shared key, which must follow both
        await asyncio.to_thread(world.write_message, key=f"shared-{n}")
    committed = await producer.stop()
    recovery = await world.wait_drained()
    verdict = await check(world, max_duplicates=0)
    report(
        8,
        "transactions committing out of id order",
        verdict,
        faults=f"{rounds} x 2 concurrent transactions, the lower-id one committed last "
        "(same key and distinct keys); same-key order across concurrent transactions "
        "is commit order here, undefined in general",
        recovery=recovery,
    )
    assert verdict.ok, verdict.problems
    assert verdict.committed == committed + rounds * 6  # 2 + 3 in the pair, 1 after
    assert lower_first_published == 0  # published as committed: the later ids went first


class _OpenTransaction:
    """A producer transaction left open on its own connection."""

    def __init__(self, world: World) -> None:
        self.conn = psycopg.connect(world.service_dsn)
        self.ids: set[str] = set()

    def write(self, key: str, seq: int) -> None:
        message = outbox.write(self.conn, "faults.event", {"seq": seq}, key=key)
        self.conn.execute(
            "INSERT INTO ledger (message_id, key, seq) VALUES (%s, %s, %s)",
            (message.message_id, key, seq),
        )
        self.ids.add(str(message.message_id))

    def commit(self) -> set[str]:
        self.conn.commit()
        return self.ids

    def close(self) -> None:
        self.conn.close()


def _open_pair(world: World, n: int) -> tuple[_OpenTransaction, _OpenTransaction]:
    """Two open transactions; `first` writes (gets lower ids) before `second`."""
    first, second = _OpenTransaction(world), _OpenTransaction(world)
    first.write(f"first-{n}", 1)
    first.write(f"shared-{n}", 1)  # concurrent with second's shared-n: the same seq
    second.write(f"second-{n}", 1)
    second.write(f"shared-{n}", 1)
    second.write(f"second-{n}", 2)
    world.seq[f"shared-{n}"] = 1
    return first, second


# -- 9. a long transaction elsewhere in the database --------------------------------------------


async def test_09_long_transaction_elsewhere(
    world: World, report: Report, producers: Producers
) -> None:
    port = free_port()
    relay = world.start_relay(extra=("--http-port", str(port)))
    world.start_consumer()
    await eventually(lambda: _scrape_ok(port), within=60, every=0.2)
    samples: list[tuple[str, float, float]] = []  # (phase, backlog gauge, oldest age gauge)
    phase = ["before"]
    sampling = asyncio.ensure_future(_sample_gauges(port, phase, samples))
    producer = producers(pause=0.05)
    await asyncio.sleep(4.0)

    hold = 10.0
    notices: list[str] = []
    phase[0] = "during"
    held = await asyncio.to_thread(_hold_long_transactions, world, hold, notices)
    phase[0] = "after"
    ended_at = time.monotonic()
    after_vacuum = await asyncio.to_thread(_vacuum_verbose, world)
    await asyncio.sleep(4.0)
    committed = await producer.stop()
    await world.wait_drained()

    async def gauges_back_to_zero() -> bool:
        return bool(samples) and samples[-1][0] == "after" and samples[-1][1] == 0

    await eventually(gauges_back_to_zero, within=3 * GAUGE_INTERVAL + 60, every=0.5)
    recovery = time.monotonic() - ended_at
    sampling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampling
    latency = _latencies(await stream_entries(world), held)
    verdict = await check(world, max_duplicates=0)
    dead_during, dead_after = _not_removable(notices), _not_removable(after_vacuum)
    gauges = {
        name: max((s[1] for s in samples if s[0] == name), default=0.0)
        for name in ("before", "during", "after")
    }
    oldest = {
        name: max((s[2] for s in samples if s[0] == name), default=0.0)
        for name in ("before", "during", "after")
    }
    observed = (
        f"txid_current() + REPEATABLE READ snapshot held {hold:.0f} s; dead outbox rows "
        f"VACUUM could not remove: {dead_during} during, {dead_after} after; backlog gauge max "
        f"{gauges['before']:.0f}/{gauges['during']:.0f}/{gauges['after']:.0f}, oldest age "
        f"max {oldest['before']:.1f}/{oldest['during']:.1f}/{oldest['after']:.1f} s, "
        f"publish latency p50 {latency['before']:.3f}/{latency['during']:.3f}/"
        f"{latency['after']:.3f} s (before/during/after)"
    )
    print(observed)
    report(
        9, "long transaction elsewhere in the database", verdict, faults=observed, recovery=recovery
    )
    assert verdict.ok, verdict.problems
    assert verdict.committed == committed
    assert dead_during > 0  # what a long transaction really costs: vacuum is held back
    assert relay.alive, relay.output()[-2000:]


async def _scrape_ok(port: int) -> bool:
    try:
        await asyncio.to_thread(_scrape, port)
    except OSError:
        return False
    return True


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            values[name] = float(value)
    return values


async def _sample_gauges(port: int, phase: list[str], out: list[tuple[str, float, float]]) -> None:
    while True:
        with contextlib.suppress(OSError):
            values = await asyncio.to_thread(_scrape, port)
            out.append(
                (
                    phase[0],
                    values["outboxkit_relay_backlog_messages"],
                    values["outboxkit_relay_oldest_pending_age_seconds"],
                )
            )
        await asyncio.sleep(0.5)


def _hold_long_transactions(
    world: World, seconds: float, notices: list[str]
) -> tuple[datetime, datetime]:
    """An xid held open and a REPEATABLE READ snapshot, `seconds` long; VACUUM near the end.
    Returns the database times the hold started and ended."""
    with (
        psycopg.connect(world.service_dsn) as xid_holder,
        psycopg.connect(world.service_dsn) as snapshot_holder,
    ):
        row = xid_holder.execute("SELECT now(), txid_current()").fetchone()
        assert row is not None
        started: datetime = row[0]
        snapshot_holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        snapshot_holder.execute("SELECT count(*) FROM outboxkit.outbox_messages")
        time.sleep(seconds - 2)
        notices += _vacuum_verbose(world)
        time.sleep(2)
        row = xid_holder.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        ended: datetime = row[0]
        xid_holder.rollback()
        snapshot_holder.rollback()
    return started, ended


def _vacuum_verbose(world: World) -> list[str]:
    found: list[str] = []
    with psycopg.connect(world.service_dsn, autocommit=True) as conn:
        conn.add_notice_handler(lambda notice: found.append(notice.message_primary or ""))
        conn.execute("VACUUM (VERBOSE) outboxkit.outbox_messages")
    return found


def _not_removable(notices: list[str]) -> int:
    for notice in notices:
        match = re.search(r"(\d+) are dead but not yet removable", notice)
        if match:
            return int(match[1])
    return 0


def _latencies(
    entries: list[tuple[str, datetime, dict[str, str]]], held: tuple[datetime, datetime]
) -> dict[str, float]:
    """Median seconds from a message's commit-time `created_at` to its arrival in the stream,
    for messages written before, during and after the hold."""
    phases: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    for _, arrived, headers in entries:
        if CREATED_AT not in headers:
            continue
        created = datetime.fromisoformat(headers[CREATED_AT])
        name = "before" if created < held[0] else "during" if created <= held[1] else "after"
        phases[name].append((arrived - created).total_seconds())
    return {name: statistics.median(v) if v else 0.0 for name, v in phases.items()}


# -- 15. clock skew -----------------------------------------------------------------------------


FAKETIME = shutil.which("faketime")


async def test_15_clock_skew(world: World, report: Report) -> None:
    name = "clock skew: relays under faketime +1h and -10m"
    if FAKETIME is None:
        reason = "faketime is not installed (scripts/install-brokers installs it as root)"
        report(15, name, None, faults="-", outcome=f"not run: {reason}")
        pytest.skip(reason)
    skew = await asyncio.to_thread(_skew_of, ("-f", "+1h"))
    assert abs(skew - 3600) < 120, f"faketime does not skew Python's clock here ({skew:.0f} s)"

    relay_named(world, "relay-real")
    relay_named(world, "relay-ahead", prefix=(FAKETIME, "-f", "+1h"))
    relay_named(world, "relay-behind", prefix=(FAKETIME, "-f", "-10m"))
    world.start_consumer()
    ids = {"relay-real", "relay-ahead", "relay-behind"}
    await settled_ownership(world, ids)
    settled = await asyncio.to_thread(world.lock_owners)

    delayed = []
    for n in range(world.keys):  # keys spread over every relay's partitions
        delayed.append(await asyncio.to_thread(world.write_message, key=f"d{n}", delay=3.0))
    committed = await asyncio.to_thread(world.produce, 200) + len(delayed)
    # Watch well past the TTL: nobody is pruned or loses a partition.
    watch_until, ages = time.monotonic() + 2 * TTL, list[float]()
    while time.monotonic() < watch_until:
        owners = await asyncio.to_thread(world.lock_owners)
        assert owners == settled, f"ownership changed under clock skew: {owners}"
        heartbeats = await asyncio.to_thread(heartbeat_ages, world)
        assert set(heartbeats) == ids, f"a relay was pruned under clock skew: {heartbeats}"
        ages += heartbeats.values()
        await asyncio.sleep(0.2)
    status = await asyncio.to_thread(world.status)
    assert {r["relay_id"] for r in status["relays"]} == ids
    recovery = await world.wait_drained(expected=committed)

    arrived = {m: t for m, t, _ in reversed(await stream_entries(world))}  # first arrival
    early = [
        m for m in delayed if m.available_at is None or arrived[str(m.message_id)] < m.available_at
    ]
    verdict = await check(world, max_duplicates=0)
    report(
        15,
        name,
        verdict,
        faults=f"3 relays at +1h, -10m and real time for {2 * TTL:.0f} s; max heartbeat age "
        f"{max(ages):.1f} s (database clock); {len(delayed)} delayed messages, "
        f"{len(early)} early",
        recovery=recovery,
    )
    assert verdict.ok, verdict.problems
    assert max(ages) < TTL
    assert not early, f"delayed messages published before their available_at: {early}"


def _skew_of(faketime_args: tuple[str, ...]) -> float:
    assert FAKETIME is not None
    result = subprocess.run(
        [FAKETIME, *faketime_args, sys.executable, "-c", "import time; print(time.time())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return float(result.stdout.strip()) - time.time()


# -- 16. disk full for the database -------------------------------------------------------------


async def test_16_disk_full(world: World, report: Report) -> None:
    name = "disk full: the outbox's tablespace on a full tmpfs"
    assert world.base is not None
    mount = world.base / "small-tablespace"
    reason = await asyncio.to_thread(_mount_tmpfs, mount, "24m")
    if reason:
        report(16, name, None, faults="-", outcome=f"not run: {reason}")
        pytest.skip(reason)
    processes: list[Process] = []
    try:
        await asyncio.to_thread(_move_outbox_to, world, mount)
        processes += [world.start_relay(), world.start_consumer()]
        committed = await asyncio.to_thread(world.produce, 50)
        await world.wait_drained()

        filled = await asyncio.to_thread(_fill, world)
        order_id = uuid.uuid4()
        big = {"blob": os.urandom(300_000).hex()}  # TOASTed: the table must grow
        with pytest.raises(psycopg.errors.DiskFull) as failure:
            await asyncio.to_thread(_order_with_message, world, order_id, big)
        error = str(failure.value)
        assert "No space left on device" in error, error
        assert await asyncio.to_thread(_order_exists, world, order_id) is False
        assert world.pending() == 0  # neither the order nor its message exists

        freed_at = time.monotonic()
        await asyncio.to_thread(_free, world)
        await asyncio.to_thread(_order_with_message, world, order_id, big)
        assert await asyncio.to_thread(_order_exists, world, order_id) is True
        committed += 1 + await asyncio.to_thread(world.produce, 50)
        await world.wait_drained()
        recovery = time.monotonic() - freed_at
        verdict = await check(world, max_duplicates=0)
        report(
            16,
            name,
            verdict,
            faults=f"tablespace tmpfs filled ({filled} MiB of filler); the order + outbox "
            "transaction failed whole with DiskFull (53100), then succeeded once freed",
            recovery=recovery,
        )
        assert verdict.ok, verdict.problems
        assert verdict.committed == committed
    finally:
        for process in processes:
            process.kill()
        await asyncio.to_thread(_restore, world, mount)


def _mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` at `path` for PostgreSQL's user; why not, if impossible."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return f"mount -t tmpfs failed: {result.stderr.strip() or result.returncode}"
    owner = pwd.getpwnam(UNPRIVILEGED_USER)
    os.chown(path, owner.pw_uid, owner.pw_gid)
    return None


def _move_outbox_to(world: World, location: Path) -> None:
    with psycopg.connect(world.service_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLESPACE small LOCATION '{location}'")
        conn.execute("ALTER TABLE outboxkit.outbox_messages SET TABLESPACE small")
        conn.execute(
            "CREATE TABLE orders (id uuid PRIMARY KEY, created_at timestamptz DEFAULT now())"
        )


def _fill(world: World) -> int:
    """Fill the tablespace with incompressible rows until PostgreSQL reports it full."""
    with psycopg.connect(world.service_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE filler (blob bytea) TABLESPACE small")
        conn.execute("ALTER TABLE filler ALTER COLUMN blob SET STORAGE EXTERNAL")
        written = 0
        for size in (1 << 20, 64 << 10, 8 << 10, 1 << 10):
            while True:
                try:
                    conn.execute("INSERT INTO filler VALUES (%s)", (os.urandom(size),))
                    written += size
                except psycopg.errors.DiskFull:
                    break
        return written >> 20


def _order_with_message(world: World, order_id: uuid.UUID, payload: dict[str, Any]) -> None:
    """The business transaction: an order row and its outbox message, all or nothing."""
    with psycopg.connect(world.service_dsn) as conn, conn.transaction():
        conn.execute("INSERT INTO orders (id) VALUES (%s)", (order_id,))
        message = outbox.write(conn, "faults.event", {"seq": 1, **payload}, key="big-order")
        conn.execute(
            "INSERT INTO ledger (message_id, key, seq) VALUES (%s, 'big-order', 1)",
            (message.message_id,),
        )


def _order_exists(world: World, order_id: uuid.UUID) -> bool:
    return bool(
        world.scalar(world.service_dsn, "SELECT count(*) FROM orders WHERE id = %s", (order_id,))
    )


def _free(world: World) -> None:
    with psycopg.connect(world.service_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE filler")


def _restore(world: World, mount: Path) -> None:
    """Put the outbox back on the default tablespace, drop ours, unmount."""
    with (
        contextlib.suppress(psycopg.Error),
        psycopg.connect(world.service_dsn, autocommit=True) as conn,
    ):
        conn.execute("DROP TABLE IF EXISTS filler")
        conn.execute("ALTER TABLE outboxkit.outbox_messages SET TABLESPACE pg_default")
        conn.execute("DROP TABLESPACE IF EXISTS small")
    if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(mount)], check=False)
