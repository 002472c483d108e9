"""A world of real processes for a fault scenario.

One PostgreSQL server with a producer database (`service`: business ledger + outbox) and a
consumer database (`consumer`: inbox + effects), one NATS JetStream server, and any number
of `outboxkit relay` and `outboxkit consume` processes. Producers write through the real
write API in real transactions. Optional fault proxies sit between the relays and the broker
or the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import psycopg
from nats.js.api import StreamConfig

from outboxkit import migrations, outbox
from outboxkit.devservers import NatsServer, PostgresServer
from outboxkit.devservers.freeze import freeze, thaw
from outboxkit.faults.app import EFFECTS_TABLE
from outboxkit.faults.proxy import FaultProxy
from outboxkit.outbox.envelope import MESSAGE_ID

STREAM = "FAULTS"
MSG_ID = "Nats-Msg-Id"
PREFIX = "outboxkit."
LEDGER_TABLE = """
CREATE TABLE IF NOT EXISTS ledger (
    message_id uuid PRIMARY KEY,
    key        text NOT NULL,
    seq        integer NOT NULL
)
"""


@dataclass
class Process:
    """An outboxkit child process, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        """Signal the process's group: a wrapper given as prefix (faketime forks) and the
        outboxkit process under it alike."""
        if self.alive:
            self._signal_group(signum)

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)  # started as a session (and group) leader

    def freeze(self) -> None:
        """SIGSTOP, returning once every thread of the process has stopped."""
        if self.alive:
            freeze(self.popen.pid)

    def thaw(self) -> None:
        """SIGCONT: a frozen process goes on."""
        if self.alive:
            thaw(self.popen.pid)

    def kill(self) -> None:
        """SIGKILL the whole group, even once the leader is gone (an orphan may be left)."""
        self._signal_group(signal.SIGKILL)
        self.popen.wait(30)

    def stop(self, within: float = 30) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(within)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.popen.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Production:
    """What `World.produce_through_outages` did: messages committed, and the message ids of
    the transactions that failed before their COMMIT (rolled back: they must never appear)
    or during it (`in_doubt`: committed or not, all or nothing)."""

    committed: int = 0
    failed: list[list[uuid.UUID]] = field(default_factory=list)
    in_doubt: list[list[uuid.UUID]] = field(default_factory=list)


@dataclass
class World:
    """Servers, databases and processes of one scenario; `async with World() as w:`."""

    batch_size: int = 50
    keys: int = 20
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="outboxkit-faults-")))
    postgres: PostgresServer | None = None
    nats: NatsServer | None = None
    broker_proxy: FaultProxy | None = None
    db_proxy: FaultProxy | None = None
    processes: list[Process] = field(default_factory=list)
    seq: dict[str, int] = field(default_factory=dict)
    faults: int = 0

    async def __aenter__(self) -> World:
        try:
            return await self._boot()
        except BaseException:
            await self.__aexit__()
            raise

    async def _boot(self) -> World:
        self.base.chmod(0o755)
        self.postgres = PostgresServer(base_dir=self.base / "postgres")
        self.nats = NatsServer(store_dir=self.base / "nats")
        await asyncio.to_thread(self.postgres.start)
        await asyncio.to_thread(self.nats.start)
        await asyncio.to_thread(self._prepare_databases)
        await self._create_stream()
        self.broker_proxy = await FaultProxy(self.nats.port).start()
        self.db_proxy = await FaultProxy(self.postgres.port).start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for process in self.processes:
            process.kill()
        for proxy in (self.broker_proxy, self.db_proxy):
            if proxy is not None:
                await proxy.close()
        if self.nats is not None:
            self.nats.cleanup()
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.cleanup)
        shutil.rmtree(self.base, ignore_errors=True)

    # -- addresses -------------------------------------------------------------------------

    @property
    def service_dsn(self) -> str:
        assert self.postgres is not None
        return self.postgres.dsn("service")

    @property
    def consumer_dsn(self) -> str:
        assert self.postgres is not None
        return self.postgres.dsn("consumer")

    def relay_dsn(self, via_proxy: bool = False) -> str:
        if not via_proxy:
            return self.service_dsn
        assert self.db_proxy is not None and self.postgres is not None
        return f"postgresql://{self.postgres.user}@127.0.0.1:{self.db_proxy.port}/service"

    def broker_url(self, via_proxy: bool = False, **options: str) -> str:
        assert self.nats is not None and self.broker_proxy is not None
        port = self.broker_proxy.port if via_proxy else self.nats.port
        # Through the fault proxy PubAcks time out after 2 s (the network scenarios' bounds
        # count in those); direct, after 10 s, so that a stall of a loaded machine does
        # not make the relay republish in a scenario that expects no duplicate.
        timeout = "2" if via_proxy else "10"
        query = {"stream": STREAM, "subject_prefix": PREFIX, "ack_wait": "2", "timeout": timeout}
        query |= options
        return f"nats://127.0.0.1:{port}?" + "&".join(f"{k}={v}" for k, v in query.items())

    # -- processes -------------------------------------------------------------------------

    def start_relay(
        self,
        name: str = "relay",
        *,
        crash_at: str | None = None,
        via_broker_proxy: bool = False,
        via_db_proxy: bool = False,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
        dsn: str | None = None,
        broker: str | None = None,
    ) -> Process:
        """Start `outboxkit relay` (optionally under a wrapper command, e.g. faketime, and
        with its own `dsn` / `broker` URL instead of the world's, e.g. other proxies)."""
        args = (
            "relay",
            "--dsn",
            dsn or self.relay_dsn(via_db_proxy),
            "--broker",
            broker or self.broker_url(via_broker_proxy),
            "--batch-size",
            str(self.batch_size),
            "--poll-interval",
            "0.2",
            "--relay-id",
            f"{name}-{uuid.uuid4().hex[:4]}",
            *extra,
        )
        return self._start(name, args, crash_at, env, prefix)

    def start_consumer(
        self,
        name: str = "consumer",
        *,
        crash_at: str | None = None,
        mode: str = "idempotent",
        extra: tuple[str, ...] = (),
    ) -> Process:
        """Start `outboxkit consume` with the effects-recording app."""
        args = (
            "consume",
            "--app",
            "outboxkit.faults.app:ib",
            "--dsn",
            self.consumer_dsn,
            "--broker",
            self.broker_url(),
            "--mode",
            mode,
            "--max-attempts",
            "3",
            "--prune-interval",
            "0",
            *extra,
        )
        return self._start(name, args, crash_at, None, ())

    def _start(
        self,
        name: str,
        args: tuple[str, ...],
        crash_at: str | None,
        env: dict[str, str] | None,
        prefix: tuple[str, ...],
    ) -> Process:
        log = self.base / f"{name}-{len(self.processes)}.log"
        environment = dict(os.environ) | (env or {})
        environment.pop("OUTBOXKIT_TEST_CRASH_AT", None)
        if crash_at:
            environment["OUTBOXKIT_TEST_CRASH_AT"] = crash_at
        with log.open("wb") as sink:
            popen = subprocess.Popen(
                [*prefix, sys.executable, "-m", "outboxkit.cli", *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,  # a group of its own, killed whole at the end
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    # -- producing -------------------------------------------------------------------------

    def produce(
        self,
        count: int,
        *,
        tx_size: int = 5,
        rollback_every: int = 0,
        savepoint_rollback_every: int = 0,
        topic: str = "faults.event",
        payload: dict[str, Any] | None = None,
    ) -> int:
        """Write `count` committed messages (plus rolled-back ones); returns committed count."""
        committed = 0
        transaction = 0
        with psycopg.connect(self.service_dsn) as conn:
            while committed < count:
                transaction += 1
                size = min(tx_size, count - committed)
                rollback = bool(rollback_every) and transaction % rollback_every == 0
                written = self._write_transaction(
                    conn,
                    size,
                    topic,
                    payload,
                    rollback,
                    savepoint=bool(savepoint_rollback_every)
                    and transaction % savepoint_rollback_every == 0,
                )
                committed += written
        return committed

    def _write_transaction(
        self,
        conn: psycopg.Connection[Any],
        size: int,
        topic: str,
        payload: dict[str, Any] | None,
        rollback: bool,
        savepoint: bool,
    ) -> int:
        seq_before = dict(self.seq)
        with contextlib.suppress(psycopg.Rollback), conn.transaction():
            for _ in range(size):
                self._write_one(conn, topic, payload)
            if savepoint:
                with contextlib.suppress(psycopg.Rollback), conn.transaction():
                    # a nested part of the business transaction that is rolled back
                    self._write_one(conn, topic, payload, ledger=False)
                    raise psycopg.Rollback()
            if rollback:
                raise psycopg.Rollback()
        if rollback:
            self.seq = seq_before
            return 0
        return size

    def _write_one(
        self,
        conn: psycopg.Connection[Any],
        topic: str,
        payload: dict[str, Any] | None,
        ledger: bool = True,
    ) -> None:
        key = f"k{random.randrange(self.keys)}"
        seq = self.seq.get(key, 0) + 1
        body = {"seq": seq, **(payload or {})}
        message = outbox.write(conn, topic, body, key=key)
        if ledger:
            self.seq[key] = seq
            conn.execute(
                "INSERT INTO ledger (message_id, key, seq) VALUES (%s, %s, %s)",
                (message.message_id, key, seq),
            )

    def produce_through_outages(
        self,
        count: int,
        *,
        tx_size: int = 5,
        pause: float = 0.0,
        within: float = 120.0,
    ) -> Production:
        """Write `count` committed messages like a service that survives database outages:
        a transaction that fails on a lost connection is recorded and written afresh (new
        messages) once the database is back. `pause` seconds between transactions spread the
        writing over time. Raises `TimeoutError` if `count` is not reached `within` seconds.
        """
        production = Production()
        deadline = time.monotonic() + within
        conn: psycopg.Connection[Any] | None = None
        try:
            while production.committed < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"committed {production.committed} of {count} in {within} s")
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self.service_dsn, connect_timeout=5)
                        self._resync_seq(conn)
                    size = min(tx_size, count - production.committed)
                    production.committed += self._write_recorded(conn, size, production)
                except psycopg.OperationalError:
                    if conn is not None:
                        with contextlib.suppress(psycopg.Error):
                            conn.close()
                    conn = None
                    time.sleep(0.2)
                    continue
                if pause:
                    time.sleep(pause)
        finally:
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
        return production

    def _write_recorded(
        self, conn: psycopg.Connection[Any], size: int, production: Production
    ) -> int:
        written: list[uuid.UUID] = []
        committing = False
        try:
            with conn.transaction():
                for _ in range(size):
                    key = f"k{random.randrange(self.keys)}"
                    seq = self.seq.get(key, 0) + 1
                    message = outbox.write(conn, "faults.event", {"seq": seq}, key=key)
                    written.append(message.message_id)
                    conn.execute(
                        "INSERT INTO ledger (message_id, key, seq) VALUES (%s, %s, %s)",
                        (message.message_id, key, seq),
                    )
                    self.seq[key] = seq
                committing = True
        except psycopg.OperationalError:
            (production.in_doubt if committing else production.failed).append(written)
            raise
        return size

    def _resync_seq(self, conn: psycopg.Connection[Any]) -> None:
        """Per-key sequence numbers from the ledger (after a commit whose outcome is unknown)."""
        with conn.transaction():
            rows = conn.execute("SELECT key, max(seq) FROM ledger GROUP BY key").fetchall()
        self.seq = {str(key): int(seq) for key, seq in rows}

    # -- observing -------------------------------------------------------------------------

    def scalar(self, dsn: str, query: str, params: tuple[Any, ...] = ()) -> int:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(query, params).fetchone()
            return int(row[0]) if row and row[0] is not None else 0

    def pending(self) -> int:
        return self.scalar(self.service_dsn, "SELECT count(*) FROM outboxkit.outbox_messages")

    def committed(self) -> int:
        return self.scalar(self.service_dsn, "SELECT count(*) FROM ledger")

    def processed(self) -> int:
        return self.scalar(self.consumer_dsn, "SELECT count(DISTINCT message_id) FROM effects")

    async def wait_drained(self, within: float = 120.0, *, expected: int | None = None) -> float:
        """Wait until the outbox is empty and every committed message was handled.

        Returns the seconds it took; raises `TimeoutError` if it did not happen in time.
        """
        started = time.monotonic()
        target = expected if expected is not None else self.committed()
        while time.monotonic() - started < within:
            if await asyncio.to_thread(self.pending) == 0 and (
                await asyncio.to_thread(self.processed) >= target
            ):
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        raise TimeoutError(
            f"not drained in {within} s: pending {self.pending()}, processed "
            f"{self.processed()} of {target}"
        )

    # -- set-up ----------------------------------------------------------------------------

    def _prepare_databases(self) -> None:
        assert self.postgres is not None
        with psycopg.connect(self.postgres.dsn(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE service")
            admin.execute("CREATE DATABASE consumer")
        for dsn in (self.service_dsn, self.consumer_dsn):
            migrations.apply(dsn)
        with psycopg.connect(self.service_dsn) as conn:
            conn.execute(LEDGER_TABLE)
        with psycopg.connect(self.consumer_dsn) as conn:
            conn.execute(EFFECTS_TABLE)

    async def _create_stream(self) -> None:
        """The stream, with a tiny duplicate window so that republished duplicates stay
        visible to the checker (the inbox, not the broker, must absorb them)."""
        assert self.nats is not None
        client = await nats.connect(self.nats.url)
        try:
            await client.jetstream().add_stream(
                StreamConfig(name=STREAM, subjects=[PREFIX + ">"], duplicate_window=0.1)
            )
        finally:
            await client.close()

    # -- scenario helpers: single writes, ownership, the raw broker -----------------------

    def write_message(
        self,
        payload: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        topic: str = "faults.event",
        delay: float | None = None,
    ) -> outbox.Message:
        """Write one message (and its ledger row) in its own committed transaction.

        `key` defaults to a random key of the world's; the payload gets the key's next `seq`.
        """
        key = key if key is not None else f"k{random.randrange(self.keys)}"
        seq = self.seq.get(key, 0) + 1
        with psycopg.connect(self.service_dsn) as conn, conn.transaction():
            message = outbox.write(
                conn, topic, {"seq": seq, **(payload or {})}, key=key, delay=delay
            )
            conn.execute(
                "INSERT INTO ledger (message_id, key, seq) VALUES (%s, %s, %s)",
                (message.message_id, key, seq),
            )
        self.seq[key] = seq
        return message

    def partition_of(self, key: str) -> int:
        """The outbox partition of `key` (the write path's stable hash)."""
        return self.scalar(
            self.service_dsn,
            "SELECT (hashtext(%s) & 2147483647) %% partitions FROM outboxkit.outbox_settings",
            (key,),
        )

    def lock_owners(self) -> dict[str, list[int]]:
        """Relay id -> the partitions whose session advisory lock its connection holds,
        read from pg_locks (the ground truth of who may publish what)."""
        owners: dict[str, list[int]] = {}
        with psycopg.connect(self.service_dsn, autocommit=True) as conn:
            rows = conn.execute(
                """
                SELECT a.application_name, l.objid::int
                FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
                WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                  AND l.database = (SELECT oid FROM pg_database WHERE datname = 'service')
                  AND a.application_name LIKE 'outboxkit-relay %%'
                """
            ).fetchall()
        for application, partition in rows:
            owners.setdefault(application.removeprefix("outboxkit-relay "), []).append(partition)
        return {relay: sorted(parts) for relay, parts in owners.items()}

    def status(self) -> dict[str, Any]:
        """`outboxkit status --json` on the service database, run as a subprocess."""
        result = subprocess.run(
            [sys.executable, "-m", "outboxkit.cli", "status", "--dsn", self.service_dsn, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"outboxkit status failed: {result.stderr.strip()}")
        state: dict[str, Any] = json.loads(result.stdout)
        return state

    async def publish_raw(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> int:
        """Publish straight into the stream (no relay, no envelope check); its sequence."""
        assert self.nats is not None
        client = await nats.connect(self.nats.url)
        try:
            ack = await client.jetstream().publish(subject, data, headers=headers)
            return int(ack.seq)
        finally:
            await client.close()

    async def republish(
        self, message_ids: Collection[str] | None = None, *, copies: int = 1, shuffle: bool = True
    ) -> int:
        """Copy messages already in the stream (all, or those of `message_ids`) back into it
        `copies` times each, with a fresh Nats-Msg-Id so that JetStream keeps every copy: the
        redeliveries a broker, a replay or a second relay could produce. Returns the count."""
        assert self.nats is not None
        client = await nats.connect(self.nats.url)
        try:
            js = client.jetstream()
            info = await js.stream_info(STREAM)
            originals: dict[str, tuple[str, bytes, dict[str, str]]] = {}
            for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    stored = await js.get_msg(STREAM, seq)
                    headers = dict(stored.headers or {})
                    message_id = headers.get(MESSAGE_ID, "")
                    if message_ids is None or message_id in message_ids:
                        originals.setdefault(
                            message_id, (stored.subject or "", stored.data or b"", headers)
                        )
            copies_out = [original for original in originals.values() for _ in range(copies)]
            if shuffle:
                random.shuffle(copies_out)
            for subject, data, headers in copies_out:
                await js.publish(subject, data, headers=headers | {MSG_ID: uuid.uuid4().hex})
            return len(copies_out)
        finally:
            await client.close()

    async def consumer_backlog(self, durable: str = "faults") -> tuple[int, int]:
        """(not yet delivered, delivered but not acked) of the JetStream consumer `durable`."""
        assert self.nats is not None
        client = await nats.connect(self.nats.url)
        try:
            info = await client.jetstream().consumer_info(STREAM, durable)
            return int(info.num_pending or 0), int(info.num_ack_pending or 0)
        finally:
            await client.close()

    async def wait_consumed(self, within: float = 120.0, durable: str = "faults") -> float:
        """Wait until the consumer `durable` has acked everything in the stream; seconds."""
        started = time.monotonic()
        while time.monotonic() - started < within:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                if await self.consumer_backlog(durable) == (0, 0):
                    return time.monotonic() - started
            await asyncio.sleep(0.2)
        raise TimeoutError(f"consumer {durable} not caught up in {within} s")

    async def update_stream(self, **config: Any) -> None:
        """Change the stream's configuration (e.g. `max_msg_size=`), keeping the rest."""
        assert self.nats is not None
        client = await nats.connect(self.nats.url)
        try:
            js = client.jetstream()
            current = (await js.stream_info(STREAM)).config
            await js.update_stream(dataclasses.replace(current, **config))
        finally:
            await client.close()
