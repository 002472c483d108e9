"""Rough relay drain rate per broker: N messages through an in-process Relay (first figures)."""

import asyncio
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from outboxkit import migrations, outbox
from outboxkit.devservers import PostgresServer
from outboxkit.relay import Relay, RelaySettings
from tests.conformance.cases import load

N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
NAMES = (
    sys.argv[2].split(",")
    if len(sys.argv) > 2
    else ["nats", "redis", "kafka", "pulsar", "rabbitmq", "http", "sqs"]
)


async def drain(url: str, dsn: str) -> float:
    with psycopg.connect(dsn) as c:
        c.execute("TRUNCATE outboxkit.outbox_messages")
        c.commit()
        for i in range(0, N, 500):
            outbox.write_many(
                c,
                [
                    outbox.message("conf.created", {"n": n}, key=f"k{n % 100}")
                    for n in range(i, min(N, i + 500))
                ],
            )
            c.commit()
    relay = Relay(RelaySettings(dsn=dsn, broker_url=url, poll_interval=0.05, batch_size=500))
    await relay.start()
    task = asyncio.create_task(relay.run())
    t = time.perf_counter()
    try:
        while True:
            with psycopg.connect(dsn) as c:
                left = c.execute("SELECT count(*) FROM outboxkit.outbox_messages").fetchone()[0]
            if left == 0:
                return N / (time.perf_counter() - t)
            if time.perf_counter() - t > 240:
                return (N - left) / (time.perf_counter() - t)
            await asyncio.sleep(0.05)
    finally:
        relay.stop()
        await asyncio.wait_for(task, 60)


async def main() -> None:
    with PostgresServer() as pg:
        dsn = pg.dsn()
        migrations.apply(dsn)
        for name in NAMES:
            case = load(name)
            with case.server() as server:
                rate = await drain(server.fresh_url(), dsn)
                print(f"{name}: {rate:,.0f} msg/s ({N} messages, 100 keys, batch 500)", flush=True)


asyncio.run(main())
