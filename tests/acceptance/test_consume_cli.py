"""`outboxkit consume` run as a subprocess against a real nats-server and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from nats.js.api import ConsumerInfo

from outboxkit import outbox
from outboxkit.devservers import NatsServer
from outboxkit.outbox.message import Message
from tests.integration.brokers import unique_stream
from tests.support.consume_app import EFFECTS_DDL, IN_FLIGHT, ib
from tests.support.jetstream import consumer_info, deliveries, publish
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.support.consume_app:ib"
DURABLE = ib.consumer  # already a valid JetStream name


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server


@dataclass(frozen=True)
class Stream:
    server_url: str
    name: str

    @property
    def publisher_url(self) -> str:
        return f"{self.server_url}?stream={self.name}&subject_prefix={self.name.lower()}."

    def consumer_url(self, ack_wait: float) -> str:
        return f"{self.publisher_url}&ack_wait={ack_wait}"

    async def consumer(self) -> ConsumerInfo:
        return await consumer_info(self.server_url, self.name, DURABLE)


@pytest.fixture
def stream(nats: NatsServer) -> Stream:
    return Stream(nats.url, unique_stream())


@pytest.fixture
def effects(admin: psycopg.Connection[Any]) -> None:
    admin.execute(EFFECTS_DDL)


@dataclass
class Consumers:
    """`outboxkit consume` subprocesses; whatever still runs at the end is killed."""

    tmp: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, *args: str, env: dict[str, str] | None = None) -> Consume:
        log = self.tmp / f"consume-{len(self.started)}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOXKIT_")}
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "outboxkit.cli", "--log-level", "INFO", "consume", *args],
                cwd=ROOT,
                env=clean | (env or {}),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.started.append(process)
        return Consume(process, log)

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait()


@dataclass
class Consume:
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def stderr(self) -> str:
        return self.log.read_text()

    async def wait(self, within: float = 60) -> int:
        """The exit code; fails the test if the process still runs after `within` seconds."""
        try:
            return await asyncio.to_thread(self.process.wait, within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {within} s:\n{self.stderr}") from None

    async def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await self.wait(30)


@pytest.fixture
async def consumers(tmp_path: Path) -> AsyncIterator[Consumers]:
    started = Consumers(tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


def consume_args(dsn: str, url: str) -> list[str]:
    return ["--app", APP, "--dsn", dsn, "--broker", url, "--concurrency", "2"]


def work(n: int, **body: Any) -> Message:
    return outbox.message("work.item", {"n": n, **body}, key=f"k{n % 3}")


def count(dsn: str, query: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


async def counts(dsn: str, query: str, expected: int) -> bool:
    return await asyncio.to_thread(count, dsn, query) == expected


EFFECTS = "SELECT count(*) FROM consume_effects"


@pytest.mark.usefixtures("effects")
async def test_messages_are_handled_and_sigterm_finishes_the_one_in_flight(
    consumers: Consumers, stream: Stream, dsn: str
) -> None:
    await publish(stream.publisher_url, [work(n) for n in range(10)])
    consume = consumers.start(*consume_args(dsn, stream.consumer_url(ack_wait=30)))
    await eventually(lambda: counts(dsn, EFFECTS, 10))

    await publish(stream.publisher_url, [work(10, sleep=2)])
    await eventually(lambda: counts(dsn, IN_FLIGHT, 1))
    code = await consume.terminate()

    assert code == 0, consume.stderr
    assert count(dsn, EFFECTS) == 11  # the handler in flight finished and committed
    info = await stream.consumer()
    assert info.num_ack_pending == 0 and info.num_pending == 0  # and was acked
    assert deliveries(info) == 11  # nothing was delivered twice
    assert "11 handled, 0 duplicates, 0 dead-lettered" in consume.stderr


@pytest.mark.usefixtures("effects")
async def test_crash_between_commit_and_ack_redelivers_without_reprocessing(
    consumers: Consumers, stream: Stream, dsn: str
) -> None:
    # Redelivered after ack_wait; 4 s leave the restarted consumer time to ack it once.
    url = stream.consumer_url(ack_wait=4)
    await publish(stream.publisher_url, [work(1)])

    crashed = consumers.start(
        *consume_args(dsn, url), env={"OUTBOXKIT_TEST_CRASH_AT": "after_handle_commit"}
    )
    assert await crashed.wait() == -signal.SIGKILL, crashed.stderr
    assert count(dsn, EFFECTS) == 1  # committed before the crash
    assert (await stream.consumer()).num_ack_pending == 1  # never acked

    restarted = consumers.start(*consume_args(dsn, url))

    async def redelivered_and_acked() -> bool:
        info = await stream.consumer()
        return deliveries(info) == 2 and info.num_ack_pending == 0

    await eventually(redelivered_and_acked)
    assert await restarted.terminate() == 0, restarted.stderr
    assert "0 handled, 1 duplicates, 0 dead-lettered" in restarted.stderr
    assert count(dsn, EFFECTS) == 1  # redelivered, not reprocessed


@pytest.mark.parametrize(
    ("app", "reason"),
    [
        ("tests.support.no_such_module:ib", "cannot import tests.support.no_such_module"),
        ("tests.support.consume_app:nothing", "nothing is not an inbox.Inbox"),
        ("no-colon", "expected package.module:attribute"),
    ],
)
async def test_a_bad_app_is_a_one_line_error(consumers: Consumers, app: str, reason: str) -> None:
    consume = consumers.start(
        "--app", app, "--dsn", "postgresql://nobody@127.0.0.1:1/x", "--broker", "nats://127.0.0.1:1"
    )

    code = await consume.wait()

    lines = consume.stderr.strip().splitlines()
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("outboxkit: error: --app"), lines
    assert reason in lines[0]
