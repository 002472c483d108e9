"""`outboxkit relay` as a subprocess, against real PostgreSQL and a real nats-server.

What the broker received is read back from the JetStream stream itself. The tests create
their streams with JetStream's smallest duplicate window (100 ms), so a message republished
after a crash (by a relay restarted seconds later) is stored again instead of being dropped by
its Nats-Msg-Id: every duplicate the relay causes is visible and counted, rather than trusted
to the relay's own account of it.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from nats.js.api import StorageType

from outboxkit import outbox
from outboxkit.devservers import NatsServer, free_port
from outboxkit.outbox.message import Message
from tests.conftest import Database
from tests.integration.brokers import unique_stream
from tests.support.relay_process import (
    Received,
    RelayProcess,
    RelayProcesses,
    broker_url,
    create_stream,
    delete_stream,
    duplicates,
    first_occurrences_by_key,
    http_get,
    metric,
    read_stream,
    run_cli,
    stream_count,
    update_stream,
)
from tests.support.waiting import eventually

BATCH = 100
KILLED = -signal.SIGKILL
SECRET = "s3cr3t-pw"


# -- the database side -------------------------------------------------------------------------


async def write(dsn: str, messages: Sequence[Message], *, chunk: int = 1000) -> None:
    """Commit `messages`, `chunk` per transaction, in order."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for start in range(0, len(messages), chunk):
            async with conn.transaction():
                await outbox.awrite_many(conn, messages[start : start + chunk])


async def pending_ids(dsn: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT message_id::text FROM outboxkit.outbox_messages")
        return {row[0] for row in await cursor.fetchall()}


async def count(dsn: str, table: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(f"SELECT count(*) FROM outboxkit.{table}")
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


def drained(dsn: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await count(dsn, "outbox_messages") == 0

    return check


def keyed(topic: str, keys: int, per_key: int, tag: str = "") -> list[Message]:
    """`per_key` messages for each of `keys` keys, interleaved: k0:0, k1:0, …, k0:1, …"""
    return [
        outbox.message(topic, {"key": f"k{k}", "n": n, "tag": tag}, key=f"{tag}k{k}")
        for n in range(per_key)
        for k in range(keys)
    ]


def write_order(messages: Iterable[Message]) -> dict[str | None, list[str]]:
    """Message ids per key, in the order they were written."""
    order: dict[str | None, list[str]] = {}
    for m in messages:
        order.setdefault(m.key, []).append(str(m.message_id))
    return order


def assert_key_order(received: list[Received], written: dict[str | None, list[str]]) -> None:
    """Per key, the first occurrence of each message in the stream follows write order."""
    got = first_occurrences_by_key(received)
    for key, ids in written.items():
        if key is not None:
            assert got.get(key) == ids, f"key {key}: broker order differs from write order"


def ids_of(messages: Iterable[Message]) -> set[str]:
    return {str(m.message_id) for m in messages}


# -- fixtures ------------------------------------------------------------------------------------


@dataclass
class Broker:
    """A stream of its own on a nats-server, and the relay's --broker URL for it."""

    server_url: str
    stream: str

    @property
    def url(self) -> str:
        return broker_url(self.server_url, self.stream)

    async def received(self) -> list[Received]:
        return await read_stream(self.server_url, self.stream)

    async def count(self) -> int:
        return await stream_count(self.server_url, self.stream)


@pytest.fixture
async def broker(nats_server: NatsServer) -> AsyncIterator[Broker]:
    """A fresh in-memory stream with a tiny duplicate window (duplicates are stored)."""
    stream = unique_stream()
    await create_stream(nats_server.url, stream)
    yield Broker(nats_server.url, stream)
    await delete_stream(nats_server.url, stream)


@pytest.fixture
async def small_broker(nats_server: NatsServer) -> AsyncIterator[Broker]:
    """Like `broker`, but the stream refuses messages over 4 KiB."""
    stream = unique_stream()
    await create_stream(nats_server.url, stream, max_msg_size=4096)
    yield Broker(nats_server.url, stream)
    await delete_stream(nats_server.url, stream)


@pytest.fixture
async def private_nats() -> AsyncIterator[NatsServer]:
    """A nats-server of this test's own, which the test may stop and start again."""
    server = NatsServer()
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.cleanup)


# -- 1. three relays, one SIGKILLed and restarted, while writers run ---------------------------


@dataclass
class Ledger:
    """What the writers did: committed ids per key in write order, and rolled-back ids."""

    committed: dict[str | None, list[str]] = field(default_factory=dict)
    rolled_back: set[str] = field(default_factory=set)
    total: int = 0

    @property
    def committed_ids(self) -> set[str]:
        return {i for ids in self.committed.values() for i in ids}


async def keep_writing(
    dsn: str, keys: list[str], target: int, ledger: Ledger, seed: int, pause: float = 0.01
) -> None:
    """Commit `target` messages over `keys` in transactions of varying sizes; roll back some.

    Each key belongs to one writer, so a key's write order is its commit order.
    """
    rng = random.Random(seed)
    written = transactions = 0
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        while written < target:
            transactions += 1
            rollback = transactions % 6 == 0
            size = rng.choice((1, 2, 5, 13, 40, 90))
            if not rollback:
                size = min(size, target - written)
            batch = [
                outbox.message("order.changed", {"rolled_back": rollback}, key=rng.choice(keys))
                for _ in range(size)
            ]
            async with conn.transaction():
                await outbox.awrite_many(conn, batch[: size // 2])
                await outbox.awrite_many(conn, batch[size // 2 :])
                if rollback:
                    raise psycopg.Rollback()
            if rollback:
                ledger.rolled_back |= ids_of(batch)
            else:
                for m in batch:
                    ledger.committed.setdefault(m.key, []).append(str(m.message_id))
                written += size
                ledger.total += size
            await asyncio.sleep(pause)


async def test_three_relays_one_killed_deliver_every_committed_message_in_key_order(
    dsn: str, broker: Broker, relays: RelayProcesses
) -> None:
    total, writers, crashes = 10_000, 4, 1
    keys = [f"order-{k}" for k in range(50)]
    ids = ("relay-1", "relay-2", "relay-3")
    running = {
        rid: await relays.start(dsn, broker.url, relay_id=rid, batch_size=BATCH) for rid in ids
    }
    ledger = Ledger()
    writing = [
        asyncio.create_task(keep_writing(dsn, keys[w::writers], total // writers, ledger, seed=w))
        for w in range(writers)
    ]
    try:
        # Mid-way: the writers are half done, and relay-2 is in the middle of a batch.
        await eventually(lambda: _now(ledger.total >= total // 2), within=120)
        victim = running["relay-2"]
        await kill_mid_batch(dsn, "relay-2", victim)
        assert await victim.wait(30) == KILLED
        running["relay-2"] = await relays.start(
            dsn, broker.url, relay_id="relay-2", batch_size=BATCH
        )
        await asyncio.gather(*writing)
    finally:
        for task in writing:
            task.cancel()
        await asyncio.gather(*writing, return_exceptions=True)

    await eventually(drained(dsn), within=120)
    received = await broker.received()
    got = {r.message_id for r in received}
    assert ledger.total == total
    assert got == ledger.committed_ids  # every committed message, nothing else
    assert not got & ledger.rolled_back
    assert ledger.rolled_back
    assert_key_order(received, ledger.committed)
    assert duplicates(received) <= crashes * BATCH
    assert await count(dsn, "outbox_dead_letters") == 0
    for relay in running.values():
        assert relay.running, relay.stderr()
        # A relay still starting (a loaded machine) has no SIGTERM handler yet.
        await eventually(lambda r=relay: _now("started" in r.stderr()), within=60)
        assert await relay.stop() == 0, relay.stderr()
    assert await count(dsn, "outbox_relays") == 0  # each left on its way out


async def kill_mid_batch(dsn: str, relay_id: str, relay: RelayProcess) -> None:
    """SIGKILL `relay` between its claim and its commit: claimed, publishing, not settled."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 60
        while True:
            cursor = await conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s"
                " AND state = 'idle in transaction' AND query LIKE '%%SKIP LOCKED%%'",
                (f"outboxkit-relay {relay_id}",),
            )
            if await cursor.fetchone():
                relay.kill()
                return
            assert time.monotonic() < deadline, f"{relay_id} never had a batch in flight"
            await asyncio.sleep(0.005)


# -- 2. crash points ----------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["after_claim", "after_publish", "before_commit", "after_commit"])
async def test_crash_at_a_step_then_restart_republishes_and_loses_nothing(
    step: str, dsn: str, broker: Broker, relays: RelayProcesses
) -> None:
    messages = keyed("order.changed", keys=6, per_key=50)
    messages += [outbox.message("audit.logged", {"n": n}) for n in range(20)]
    await write(dsn, messages)
    written = ids_of(messages)

    crashed = await relays.start(dsn, broker.url, batch_size=BATCH, crash_at=step)
    assert await crashed.wait(60) == KILLED, crashed.stderr()
    assert "Traceback" not in crashed.stderr()
    before = await broker.received()
    in_flight = {r.message_id for r in before}
    left = await pending_ids(dsn)
    if step == "after_claim":
        assert before == []  # claimed, never sent
    else:
        assert 0 < len(before) <= BATCH and duplicates(before) == 0
    if step == "after_commit":
        assert left == written - in_flight  # that batch was settled for good
    else:
        assert left == written  # nothing was committed: every row is still there

    restarted = await relays.start(dsn, broker.url, batch_size=BATCH)
    await eventually(drained(dsn))
    received = await broker.received()
    copies = Counter(r.message_id for r in received)
    assert set(copies) == written
    republished = in_flight if step in ("after_publish", "before_commit") else set()
    assert {i for i, n in copies.items() if n == 2} == republished  # at least once…
    assert max(copies.values()) <= 2
    assert duplicates(received) <= 1 * BATCH  # …and at most one batch more per crash
    assert_key_order(received, write_order(messages))
    assert await restarted.stop() == 0


# -- 3. broker outage ---------------------------------------------------------------------------


async def test_broker_outage_grows_the_backlog_then_drains_after_restart(
    dsn: str, private_nats: NatsServer, relays: RelayProcesses
) -> None:
    nats = private_nats
    stream = unique_stream()
    await create_stream(nats.url, stream, storage=StorageType.FILE)  # survives the restart
    broker = Broker(nats.url, stream)
    port, batch = free_port(), 50
    relay = await relays.start(dsn, broker.url, batch_size=batch, http_port=port)
    ledger = Ledger()
    stop_writing = asyncio.Event()

    async def trickle() -> None:
        keys = [f"k{k}" for k in range(10)]
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            while not stop_writing.is_set():
                batch_ = [outbox.message("order.changed", {}, key=k) for k in keys[:5]]
                async with conn.transaction():
                    await outbox.awrite_many(conn, batch_)
                for m in batch_:
                    ledger.committed.setdefault(m.key, []).append(str(m.message_id))
                ledger.total += len(batch_)
                keys = keys[5:] + keys[:5]
                await asyncio.sleep(0.05)

    writer = asyncio.create_task(trickle())
    try:
        await eventually(lambda: _at_least(broker.count(), 50))
        await eventually(lambda: _status_is(port, "/readyz", 200))

        await asyncio.to_thread(nats.stop)
        stopped = time.monotonic()
        backlog_at_stop = await count(dsn, "outbox_messages")
        await eventually(lambda: _broker_down(port), within=30)
        await eventually(lambda: _backlog_gauge_above(port, 0), within=30)
        await eventually(
            lambda: _at_least(count(dsn, "outbox_messages"), backlog_at_stop + 100), within=30
        )
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
        assert relay.running, relay.stderr()
        assert await _broker_down(port)

        await asyncio.to_thread(nats.start)
        await eventually(lambda: _status_is(port, "/readyz", 200), within=60)
        stop_writing.set()
        await writer
    finally:
        stop_writing.set()
        await asyncio.gather(writer, return_exceptions=True)

    await eventually(drained(dsn), within=60)
    received = await broker.received()
    assert {r.message_id for r in received} == ledger.committed_ids
    assert_key_order(received, ledger.committed)
    # Only the batch in flight when the server went away can have been sent twice.
    assert duplicates(received) <= batch
    assert await count(dsn, "outbox_dead_letters") == 0
    assert relay.running, relay.stderr()
    assert await relay.stop() == 0
    log = relay.stderr()
    assert "broker unavailable" in log and "broker reachable again" in log
    assert "Traceback" not in log


async def _status_is(port: int, path: str, status: int) -> bool:
    try:
        got, _ = await http_get(port, path)
    except OSError:
        return False
    return got == status


async def _broker_down(port: int) -> bool:
    status, body = await http_get(port, "/readyz")
    checks = json.loads(body)["checks"]
    return status == 503 and str(checks["broker"]).startswith("down") and checks["database"] == "ok"


async def _backlog_gauge_above(port: int, floor: float) -> bool:
    status, body = await http_get(port, "/metrics")
    value = metric(body, "outboxkit_relay_backlog_messages")
    return status == 200 and value is not None and value > floor


# -- 4. a poison message ------------------------------------------------------------------------


async def test_poison_message_is_dead_lettered_parks_its_key_and_retries_after_the_fix(
    dsn: str, small_broker: Broker, relays: RelayProcesses
) -> None:
    broker = small_broker
    messages = []
    for n in range(4):
        for key in ("a", "b", "c"):
            payload: dict[str, Any] = {"n": n}
            if (key, n) == ("a", 1):
                payload["padding"] = "x" * 8000  # over the stream's max_msg_size
            messages.append(outbox.message("order.changed", payload, key=key))
    await write(dsn, messages)
    order = write_order(messages)
    poison, parked = order["a"][1], set(order["a"][2:])

    relay = await relays.start(dsn, broker.url, batch_size=BATCH)
    await eventually(lambda: _at_least(count(dsn, "outbox_dead_letters"), 1))
    await eventually(lambda: _now_async(pending_ids(dsn), parked))
    listed = await run_cli("dead-letters", "list", "--dsn", dsn, "--key", "a", "--json")
    assert listed.returncode == 0, listed.stderr
    (dead,) = json.loads(listed.stdout)
    assert dead["message_id"] == poison
    assert "JetStream error 400" in dead["last_error"]
    assert dead["attempts"] == 1  # refused for good at once: not retried, not timed out

    # Other keys flow; the poisoned key waits behind its dead letter, and keeps waiting.
    await asyncio.sleep(1.0)  # ten poll intervals
    assert await pending_ids(dsn) == parked
    received = await broker.received()
    assert first_occurrences_by_key(received) == {
        "a": order["a"][:1],
        "b": order["b"],
        "c": order["c"],
    }
    state = await run_cli("status", "--dsn", dsn, "--json")
    assert json.loads(state.stdout)["blocked_keys"] == {"dead_letter": 1}

    await update_stream(broker.server_url, broker.stream, max_msg_size=-1)  # the operator's fix
    retried = await run_cli("dead-letters", "retry", "--dsn", dsn, "--key", "a")
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.splitlines()[-1] == "1 dead letter(s) retried"

    await eventually(drained(dsn))
    received = await broker.received()
    assert_key_order(received, order)
    assert duplicates(received) == 0
    assert await count(dsn, "outbox_dead_letters") == 0
    assert await count(dsn, "outbox_key_blocks") == 0
    assert await relay.stop() == 0


# -- 5. rolled-back transactions and savepoints -------------------------------------------------


async def test_rolled_back_transactions_and_savepoints_are_never_published(
    dsn: str, broker: Broker, relays: RelayProcesses
) -> None:
    relay = await relays.start(dsn, broker.url)
    committed: list[Message] = []
    rolled_back: list[Message] = []
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction():
            committed.append(await outbox.awrite(conn, "order.changed", "c1", key="k"))
            async with conn.transaction():  # a savepoint, rolled back
                rolled_back.append(await outbox.awrite(conn, "order.changed", "s1", key="k"))
                rolled_back.append(await outbox.awrite(conn, "order.changed", "s2"))
                raise psycopg.Rollback()
            committed.append(await outbox.awrite(conn, "order.changed", "c2", key="k"))
        async with conn.transaction():  # the whole transaction, rolled back
            rolled_back.append(await outbox.awrite(conn, "order.changed", "r1", key="k"))
            rolled_back.append(await outbox.awrite(conn, "order.changed", "r2", key="other"))
            raise psycopg.Rollback()
        with pytest.raises(psycopg.errors.DivisionByZero):
            async with conn.transaction():  # failed by an error
                rolled_back.append(await outbox.awrite(conn, "order.changed", "e1", key="k"))
                await conn.execute("SELECT 1 / 0")
        async with conn.transaction():
            committed.append(await outbox.awrite(conn, "order.changed", "c3", key="k"))

    await eventually(lambda: _at_least(broker.count(), len(committed)))
    await eventually(drained(dsn))
    await asyncio.sleep(0.5)  # five poll intervals: nothing else turns up
    received = await broker.received()
    assert [r.message_id for r in received] == [str(m.message_id) for m in committed]
    assert [r.payload for r in received] == [b'"c1"', b'"c2"', b'"c3"']
    assert await relay.stop() == 0


# -- 6. SIGTERM during a full backlog -----------------------------------------------------------


async def test_sigterm_drains_the_batch_in_flight_and_a_restart_finishes(
    dsn: str, broker: Broker, relays: RelayProcesses
) -> None:
    messages = keyed("order.changed", keys=50, per_key=400)  # 20,000
    await write(dsn, messages)
    written = ids_of(messages)

    first = await relays.start(dsn, broker.url, relay_id="relay-sigterm")  # default batch size
    await eventually(lambda: _at_least(broker.count(), 1))
    first.terminate()
    assert await first.wait(30) == 0, first.stderr()
    assert "relay-sigterm stopped" in first.stderr()
    published = await broker.received()
    sent = {r.message_id for r in published}
    left = await pending_ids(dsn)
    assert left, "the backlog was drained before SIGTERM arrived: the test proved nothing"
    assert duplicates(published) == 0
    assert not sent & left  # every batch it published was committed before it exited
    assert sent | left == written  # nothing lost
    assert await count(dsn, "outbox_relays") == 0

    second = await relays.start(dsn, broker.url)
    await eventually(drained(dsn), within=120)
    received = await broker.received()
    assert {r.message_id for r in received} == written
    assert duplicates(received) == 0  # a graceful stop republishes nothing
    assert_key_order(received, write_order(messages))
    assert await second.stop() == 0

    rest = received[len(published) :]
    seconds = max((rest[-1].stored_at - rest[0].stored_at).total_seconds(), 1e-3)
    print(f"\nrelay drained {len(rest)} messages into NATS at {len(rest) / seconds:.0f} msg/s")


# -- 7. at-most-once topics and a crash ---------------------------------------------------------


async def test_at_most_once_topic_is_never_published_twice_across_a_crash(
    dsn: str, broker: Broker, relays: RelayProcesses
) -> None:
    """Telemetry is deleted (and committed) before it is published: a crash may lose the
    batch being published, and that loss is allowed, but nothing is ever published twice.
    Orders on the same relay stay at least once."""
    batch, semantics = 50, "telemetry.*=at_most_once"
    orders = keyed("order.changed", keys=5, per_key=60)
    telemetry = [outbox.message("telemetry.cpu", {"n": n}) for n in range(300)]
    mixed = [m for pair in zip(orders, telemetry, strict=True) for m in pair]
    await write(dsn, mixed, chunk=50)

    crashed = await relays.start(
        dsn, broker.url, batch_size=batch, semantics=semantics, crash_at="after_publish:2"
    )
    assert await crashed.wait(60) == KILLED, crashed.stderr()
    before = {r.message_id for r in await broker.received() if r.topic == "telemetry.cpu"}
    assert before, "no telemetry was published before the crash: the test proved nothing"
    assert not before & await pending_ids(dsn)  # deleted before they were published

    restarted = await relays.start(dsn, broker.url, batch_size=batch, semantics=semantics)
    await eventually(drained(dsn))
    received = await broker.received()
    telemetry_copies = Counter(r.message_id for r in received if r.topic == "telemetry.cpu")
    assert max(telemetry_copies.values()) == 1  # never twice
    assert set(telemetry_copies) <= ids_of(telemetry)
    assert len(telemetry) - len(telemetry_copies) <= batch  # a crash loses one batch at most
    order_copies = Counter(r.message_id for r in received if r.topic == "order.changed")
    assert set(order_copies) == ids_of(orders)  # at least once
    assert sum(order_copies.values()) - len(order_copies) <= batch
    assert_key_order([r for r in received if r.topic == "order.changed"], write_order(orders))
    assert await restarted.stop() == 0


# -- 8. CLI errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn_template", "broker_template", "says"),
    [
        ("{dsn}", f"pigeon://app:{SECRET}@127.0.0.1:9092", "unknown broker URL scheme pigeon://"),
        ("{dsn}", "127.0.0.1:4222", "unknown broker URL scheme"),
        ("{dsn}", f"nats://app:{SECRET}@127.0.0.1:{{port}}", "cannot connect to NATS"),
        ("{dsn}", f"nats://{SECRET}@127.0.0.1:{{port}}", "cannot connect to NATS"),
        ("{dsn}", "nats://127.0.0.1:{port}?bogus=1", "unknown option 'bogus'"),
        (f"postgresql://app:{SECRET}@127.0.0.1:{{port}}/orders", "{nats}", "cannot connect"),
        (
            f"host=127.0.0.1 port={{port}} user=app password={SECRET} dbname=orders",
            "{nats}",
            "cannot connect",
        ),
        (f"postgresql://app:{SECRET}@[127.0.0.1:{{port}}/orders", "{nats}", "invalid DSN"),
    ],
    ids=[
        "unknown-scheme",
        "no-scheme",
        "unreachable-broker",
        "unreachable-broker-token",
        "bad-broker-option",
        "unreachable-database",
        "unreachable-database-keywords",
        "malformed-dsn",
    ],
)
async def test_relay_start_errors_are_one_clear_line_without_secrets(
    dsn_template: str, broker_template: str, says: str, db: Database, nats_server: NatsServer
) -> None:
    port = free_port()
    values = {"dsn": db.dsn, "nats": nats_server.url, "port": port}
    result = await run_cli(
        "relay",
        "--dsn",
        dsn_template.format(**values),
        "--broker",
        broker_template.format(**values),
        within=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert SECRET not in result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("outboxkit: error: ") and says in lines[0], lines[0]


# -- 9. status with two relays ------------------------------------------------------------------


async def test_status_json_shows_two_relays_sharing_every_partition(
    dsn: str, broker: Broker, relays: RelayProcesses
) -> None:
    ids = ("relay-a", "relay-b")
    for rid in ids:
        await relays.start(dsn, broker.url, relay_id=rid)
    await write(dsn, keyed("order.changed", keys=5, per_key=2))

    snapshots: list[dict[str, list[int]]] = []

    async def settled() -> bool:
        result = await run_cli("status", "--dsn", dsn, "--json")
        assert result.returncode == 0, result.stderr
        state = json.loads(result.stdout)
        snapshots.append({r["relay_id"]: sorted(r["partitions"]) for r in state["relays"]})
        stable = len(snapshots) >= 2 and snapshots[-1] == snapshots[-2]
        owners = await _advisory_lock_owners(dsn)
        return stable and set(snapshots[-1]) == set(ids) and owners == snapshots[-1]

    await eventually(settled, within=60, every=1.0)
    owned = snapshots[-1]
    assert not set(owned["relay-a"]) & set(owned["relay-b"])
    assert sorted(owned["relay-a"] + owned["relay-b"]) == list(range(16))
    assert owned["relay-a"] and owned["relay-b"]

    await eventually(drained(dsn))
    final = json.loads((await run_cli("status", "--dsn", dsn, "--json")).stdout)
    assert final["partitions"] == 16
    assert final["pending"] == 0
    assert {r["relay_id"] for r in final["relays"]} == set(ids)


async def _advisory_lock_owners(dsn: str) -> dict[str, list[int]]:
    """Which relay session really holds which partition's advisory lock."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            """
            SELECT a.application_name, l.objid::int
            FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            """
        )
        owners: dict[str, list[int]] = {}
        for app, partition in await cursor.fetchall():
            owners.setdefault(app.removeprefix("outboxkit-relay "), []).append(partition)
    return {relay: sorted(parts) for relay, parts in owners.items()}


# -- small async predicates ---------------------------------------------------------------------


async def _now(value: bool) -> bool:
    return value


async def _at_least(value: Awaitable[int], floor: int) -> bool:
    return await value >= floor


async def _now_async(value: Awaitable[set[str]], expected: set[str]) -> bool:
    return await value == expected
