"""Scenarios 4, 10 and 19: the relay's database connection or the database itself fails.

4: the relay's connection is cut exactly at the COMMIT of a claim transaction (messages
   already published): before the COMMIT reaches the server, right after, or after the
   server committed but before the relay hears it.
10: PostgreSQL shuts down immediately (a crash) under load and starts again.
19: the relay's LISTEN connection is terminated again and again: NOTIFY is lost.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Iterator
from typing import Any

import psycopg

from outboxkit import outbox
from outboxkit.faults.checker import check, read_stream
from outboxkit.faults.world import Production, World
from tests.faults.conftest import Report
from tests.support.waiting import eventually

# -- 4 -----------------------------------------------------------------------------------

CLAIMED_TOPIC = b"faults.event"  # in the rows a claim query returns
MESSAGE_ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
KINDS = ("cut", "cut_after", "cut_on_reply")


class CommitCutter:
    """A proxy tap that cuts the relay's connection at the COMMIT of a claim transaction.

    A connection is armed when the server sends it claimed rows (they carry the topic; their
    message ids are noted); its next COMMIT is the one that deletes the published rows.
    Every `every`-th such COMMIT is cut, the kinds taking turns: `cut` (the COMMIT never
    reaches the server: rolled back), `cut_after` (it reaches the server, then RST at once:
    committed or not, a race) and `cut_on_reply` (the server committed; its answer is
    swallowed, then RST).
    """

    def __init__(self, faults: int, every: int = 2) -> None:
        self.faults = faults
        self.every = every
        self.replies: dict[int, bytearray] = {}  # armed connection: what the server sent
        self.batches: list[set[bytes]] = []  # the message ids of every claim, in order
        self.done: list[tuple[str, int]] = []  # (kind, index of the cut batch)
        self._kinds: Iterator[str] = iter(KINDS * faults)

    def __call__(self, connection: int, data: bytes, upstream: bool) -> str | None:
        if not upstream:
            if connection in self.replies or CLAIMED_TOPIC in data:
                self.replies.setdefault(connection, bytearray()).extend(data)
            return None
        if connection not in self.replies or b"COMMIT" not in data:
            return None
        self.batches.append(set(MESSAGE_ID.findall(self.replies.pop(connection))))
        if len(self.done) >= self.faults or len(self.batches) % self.every:
            return None
        kind = next(self._kinds)
        self.done.append((kind, len(self.batches) - 1))
        return kind

    def claimed_again(self, index: int) -> tuple[int, int]:
        """(how many of batch `index` were claimed again later, of how many)."""
        batch = self.batches[index]
        later = set().union(*self.batches[index + 1 :])
        return len(batch & later), len(batch)


async def test_04_relay_db_connection_cut_at_the_delete_commit(
    world: World, report: Report
) -> None:
    """The relay reaches the broker directly and PostgreSQL through the proxy, whose tap
    cuts the connection at the COMMIT of a claim transaction whose batch was published."""
    world.batch_size = 10  # many small claim transactions: many COMMITs to aim at
    faults = 15
    cutter = CommitCutter(faults)
    proxy = world.db_proxy
    assert proxy is not None
    proxy.tap = cutter
    world.produce(600, tx_size=10)
    relay = world.start_relay(via_db_proxy=True)
    world.start_consumer()
    producing = asyncio.create_task(
        asyncio.to_thread(world.produce_through_outages, 400, tx_size=5, pause=0.02)
    )
    started = time.monotonic()
    while len(cutter.done) < faults:
        assert relay.alive, relay.output()[-3000:]
        assert time.monotonic() - started < 90, f"only {len(cutter.done)} cuts in 90 s"
        await asyncio.sleep(0.1)
    cuts_over = time.monotonic()
    await producing
    recovery = await world.wait_drained()
    # Only a COMMIT that did not take effect makes the relay publish its batch again; one the
    # server performed but the relay never heard of (`cut_on_reply`) must not. (JetStream
    # drops a copy republished within its 0.1 s duplicate window, so the stream may show
    # fewer copies than were published.)
    rolled_back_or_racy = sum(1 for kind, _ in cutter.done if kind != "cut_on_reply")
    bound = rolled_back_or_racy * world.batch_size
    verdict = await check(world, max_duplicates=bound)
    again = {kind: [cutter.claimed_again(i) for k, i in cutter.done if k == kind] for kind in KINDS}
    racy_committed = sum(1 for n, _ in again["cut_after"] if n == 0)
    committed_unheard = sum(1 for reply in proxy.swallowed if b"COMMIT" in reply)
    report(
        4,
        "relay-database connection cut at the delete COMMIT",
        verdict,
        faults=(
            f"{faults} cuts at a claim COMMIT (batch {world.batch_size}): {proxy.cuts['cut']} "
            f"before it, {proxy.cuts['cut_after']} just after it ({racy_committed} committed), "
            f"{proxy.cuts['cut_on_reply']} after it committed"
        ),
        recovery=recovery,
    )
    reconnects = relay.output().count("database connection lost")
    print(
        f"cuts {dict(proxy.cuts)}, claimed again (of) {again}, swallowed COMMIT replies "
        f"{committed_unheard}, duplicates {verdict.duplicates_delivered} (bound {bound}), "
        f"relay reconnects {reconnects}, {recovery:.1f} s to drain after the last of "
        f"{cuts_over - started:.1f} s of cuts"
    )
    assert verdict.ok, verdict.problems
    assert relay.alive
    assert reconnects >= faults, relay.output()[-3000:]
    assert all(total > 0 for pairs in again.values() for _, total in pairs), again
    # Not committed: the whole batch was claimed (and published) again.
    assert all(n == total for n, total in again["cut"]), again
    # Committed, the relay never heard: not one message of the batch was published again.
    assert committed_unheard == proxy.cuts["cut_on_reply"] == len(again["cut_on_reply"])
    assert all(n == 0 for n, _ in again["cut_on_reply"]), again
    # The race: all or nothing.
    assert all(n in (0, total) for n, total in again["cut_after"]), again


# -- 10 ----------------------------------------------------------------------------------


def open_doomed_transaction(world: World, count: int) -> tuple[psycopg.Connection[Any], list[str]]:
    """A producer transaction, written through the write API but not committed yet."""
    conn = psycopg.connect(world.service_dsn)
    ids = []
    for _ in range(count):
        message = outbox.write(conn, "faults.event", {"seq": 0, "doomed": True}, key="doomed")
        conn.execute(
            "INSERT INTO ledger (message_id, key, seq) VALUES (%s, 'doomed', 0)",
            (message.message_id,),
        )
        ids.append(str(message.message_id))
    return conn, ids


def commit_after_crash(conn: psycopg.Connection[Any]) -> str:
    """Try to commit a transaction that was open when the server went down."""
    try:
        conn.commit()
    except psycopg.OperationalError as exc:
        return f"failed: {type(exc).__name__}"
    finally:
        conn.close()
    return "committed"


def present(world: World, ids: set[str]) -> dict[str, int]:
    """How many of `ids` are in the ledger, the outbox, the inbox effects."""
    if not ids:
        return {"ledger": 0, "outbox": 0, "effects": 0}
    listed = list(ids)
    return {
        "ledger": world.scalar(
            world.service_dsn,
            "SELECT count(*) FROM ledger WHERE message_id::text = ANY(%s)",
            (listed,),
        ),
        "outbox": world.scalar(
            world.service_dsn,
            "SELECT count(*) FROM outboxkit.outbox_messages WHERE message_id::text = ANY(%s)",
            (listed,),
        ),
        "effects": world.scalar(
            world.consumer_dsn,
            "SELECT count(*) FROM effects WHERE message_id::text = ANY(%s)",
            (listed,),
        ),
    }


async def test_10_postgres_immediate_shutdown_and_restart(world: World, report: Report) -> None:
    """PostgreSQL crashes (immediate shutdown: no checkpoint, every session cut) while the
    relay drains a backlog, the consumer handles and the producer writes; 3 s later it
    starts again on the same port. Nobody is restarted: all must reconnect by themselves.
    The producer starts once 200 messages are handled and writes for ~6 s (pause 0.05 s);
    the crash comes 0.5 s after its start, while it writes and while the relay still drains
    its backlog (the rows pending then are reported)."""
    assert world.postgres is not None
    world.produce(10_000, tx_size=50)  # a backlog the relay drains for seconds
    relay = world.start_relay()
    consumer = world.start_consumer()

    async def two_hundred_handled() -> bool:
        return await asyncio.to_thread(world.processed) >= 200

    await eventually(two_hundred_handled, within=120)
    # Started only now, however slowly the relay and consumer got going: its 100
    # transactions sleep 0.05 s each, so it is still writing 0.5 s later, at the crash.
    producing = asyncio.create_task(
        asyncio.to_thread(world.produce_through_outages, 500, tx_size=5, pause=0.05, within=150)
    )
    await asyncio.sleep(0.5)
    assert not producing.done(), producing
    doomed_conn, doomed = await asyncio.to_thread(open_doomed_transaction, world, 5)
    pending_at_crash = await asyncio.to_thread(world.pending)
    await asyncio.to_thread(world.postgres.stop, "immediate")
    crashed = time.monotonic()
    await asyncio.sleep(3)
    await asyncio.to_thread(world.postgres.start)
    restarted = time.monotonic()
    doomed_outcome = await asyncio.to_thread(commit_after_crash, doomed_conn)
    progress_at_restart = await asyncio.to_thread(world.processed)
    while await asyncio.to_thread(world.processed) == progress_at_restart:
        assert time.monotonic() - restarted < 120, "no progress after the restart"
        await asyncio.sleep(0.05)
    resumed = time.monotonic() - restarted
    production: Production = await producing
    await world.wait_drained(within=150)
    drained = time.monotonic() - restarted
    verdict = await check(world, max_duplicates=world.batch_size)
    failed = {str(i) for tx in production.failed for i in tx} | set(doomed)
    in_doubt = [{str(i) for i in tx} for tx in production.in_doubt]
    stream = {message_id for message_id, _ in await read_stream(world)}
    report(
        10,
        "PostgreSQL immediate shutdown and restart under load",
        verdict,
        faults=(
            f"1 immediate shutdown, down {restarted - crashed:.0f} s, {pending_at_crash} "
            "messages pending in the outbox then; "
            f"{len(production.failed) + 1} producer tx failed, {len(in_doubt)} in doubt"
        ),
        recovery=drained,
    )
    print(
        f"{pending_at_crash} pending at the crash; "
        f"producer: {len(production.failed)} tx failed, {len(in_doubt)} in doubt; doomed tx "
        f"{doomed_outcome}; duplicates {verdict.duplicates_delivered}; relay reconnects "
        f"{relay.output().count('database connection lost')}; consumer progress "
        f"{resumed:.1f} s after the restart, all drained after {drained:.1f} s"
    )
    assert verdict.ok, verdict.problems
    assert relay.alive and consumer.alive
    assert doomed_outcome.startswith("failed")
    # Failed transactions left nothing anywhere: not in the database, broker or inbox.
    assert present(world, failed) == {"ledger": 0, "outbox": 0, "effects": 0}
    assert not failed & stream
    # A transaction whose COMMIT was cut is all or nothing (and if it committed, the
    # checker has already seen it delivered exactly once).
    for ids in in_doubt:
        found = present(world, ids)
        assert found["ledger"] in (0, len(ids)), found
        if found["ledger"] == 0:
            assert found["effects"] == 0 and not ids & stream, found


# -- 19 ----------------------------------------------------------------------------------

LISTENER = "outboxkit-listen %"
POLL_INTERVAL = 2.0
HEARTBEAT_INTERVAL = 1.0  # the relay also claims at each heartbeat (RelaySettings default)
# Polling alone delivers within one effective interval plus a claim cycle; the factor leaves
# room for a loaded machine (other suites may run at the same time). A hang guard, not a
# performance threshold.
POLL_BOUND = 5 * min(POLL_INTERVAL, HEARTBEAT_INTERVAL) + 5


def listeners(world: World) -> list[tuple[int, str]]:
    """(pid, query) of the relay's LISTEN connections (named by relay/wakeup.py)."""
    with psycopg.connect(world.service_dsn) as conn:
        rows = conn.execute(
            "SELECT pid, query FROM pg_stat_activity WHERE application_name LIKE %s",
            (LISTENER,),
        ).fetchall()
    return [(int(pid), str(query)) for pid, query in rows]


def terminate_listeners(world: World) -> int:
    with psycopg.connect(world.service_dsn) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE %s AND query LIKE 'LISTEN%%'",
            (LISTENER,),
        ).fetchall()
    return sum(1 for (done,) in rows if done)


def refuse_listener(connection: int, data: bytes, upstream: bool) -> str | None:
    """Proxy tap: cut a connection whose startup packet names the relay's listener."""
    return "cut" if upstream and LISTENER[:-2].encode() in data else None


def probe(world: World) -> float:
    """Write one message; the seconds until the relay has published it (its row is gone).

    Written right after the previous probe left the outbox, i.e. right after a claim
    cycle: without a NOTIFY the relay only finds it at its next poll.
    """
    with (
        psycopg.connect(world.service_dsn) as writer,
        psycopg.connect(world.service_dsn, autocommit=True) as reader,
    ):
        with writer.transaction():
            message = outbox.write(writer, "faults.event", {"seq": 0, "probe": True}, key=None)
            writer.execute(
                "INSERT INTO ledger (message_id, key, seq) VALUES (%s, 'probe', 0)",
                (message.message_id,),
            )
        committed = time.monotonic()
        while reader.execute(
            "SELECT 1 FROM outboxkit.outbox_messages WHERE message_id = %s",
            (message.message_id,),
        ).fetchone():
            if time.monotonic() - committed > POLL_BOUND:
                raise TimeoutError(f"probe {message.message_id} not published in {POLL_BOUND} s")
            time.sleep(0.01)
        return time.monotonic() - committed


async def probes(world: World, count: int) -> list[float]:
    return [await asyncio.to_thread(probe, world) for _ in range(count)]


async def wait_for_listener(world: World, not_pid: int | None, within: float = 30) -> int:
    """The pid of the relay's LISTEN connection (another one than `not_pid`)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        for pid, query in await asyncio.to_thread(listeners, world):
            if pid != not_pid and query.startswith("LISTEN"):
                return pid
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no LISTEN connection within {within} s")


async def test_19_notify_lost_listener_terminated(world: World, report: Report) -> None:
    """The relay's LISTEN connection is terminated, and its reconnections are cut by the
    database proxy for a while (left alone, it reconnects within a fraction of a second
    and wakes the relay on reconnecting, which hides the loss). Meanwhile messages keep
    coming and only polling finds them; then the listener is let back in."""
    proxy = world.db_proxy
    assert proxy is not None
    relay = world.start_relay(via_db_proxy=True, extra=("--poll-interval", str(POLL_INTERVAL)))
    world.start_consumer()
    first = await wait_for_listener(world, None)
    await probes(world, 2)  # warm up: connections, prepared statements
    before = await probes(world, 6)
    proxy.tap = refuse_listener
    killed = await asyncio.to_thread(terminate_listeners, world)
    down = time.monotonic()
    during = await probes(world, 6)
    assert not await asyncio.to_thread(listeners, world), "the listener came back too early"
    proxy.tap = None
    healed = time.monotonic()
    await wait_for_listener(world, first)
    reconnected = time.monotonic() - healed
    after = await probes(world, 6)
    await world.wait_drained()
    verdict = await check(world, max_duplicates=0)
    medians = [statistics.median(x) for x in (before, during, after)]
    report(
        19,
        "NOTIFY lost: the relay's LISTEN connection terminated, reconnects refused a while",
        verdict,
        faults=(
            f"{killed} LISTEN connection terminated, {proxy.cuts['cut']} reconnects cut "
            f"over {healed - down:.0f} s"
        ),
        recovery=reconnected,
    )
    print(
        "median latency commit -> published (s): before {:.3f}, listener down {:.3f}, "
        "after {:.3f}; during {}; reconnects cut {}; new listener {:.1f} s after the "
        "heal".format(*medians, [round(x, 2) for x in during], proxy.cuts["cut"], reconnected)
    )
    assert verdict.ok, verdict.problems
    assert relay.alive
    assert killed == 1
    assert proxy.cuts["cut"] >= 1, "the listener never tried to reconnect"
    # Polling still delivered every message while NOTIFY was lost (each within POLL_BOUND,
    # checked in `probe`). Before the fault and after the listener is back, a NOTIFY wakes
    # the relay: probes written right after a claim cycle come back faster than polling
    # alone can deliver them (the NOTIFY path is tens of ms here, polling up to one
    # effective interval; "half the polling median" leaves a wide margin either way).
    assert medians[0] < medians[1] / 2, medians
    assert medians[2] < medians[1] / 2, medians
