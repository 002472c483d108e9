"""Run `outboxkit` as a subprocess, and read back what a JetStream stream actually received.

`RelayProcesses` starts `outboxkit relay` subprocesses (each one's stderr captured to its own
file), kills them by pid, and kills whatever is still running at the end of a test. `run_cli`
runs a one-shot command (`status`, `dead-letters …`). `create_stream` and `read_stream` work
on the broker side: a stream the test configures itself, and every message stored in it, in
stream order, through an ephemeral pull consumer that needs no acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from outboxkit.outbox.envelope import KEY, TOPIC

ROOT = Path(__file__).resolve().parents[2]
CLI = (sys.executable, "-m", "outboxkit.cli")
# JetStream's smallest duplicate window (100 ms): a message republished after a crash (by a
# restarted relay, seconds later) is stored again instead of being dropped by its Nats-Msg-Id,
# so the stream shows every duplicate the relay caused.
TINY_DUPLICATE_WINDOW = 0.1


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without OUTBOXKIT_* variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOXKIT_")}
    return env | (extra or {})


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(*args: str, env: dict[str, str] | None = None, within: float = 60) -> CliResult:
    """Run `outboxkit ARGS…` to completion (killed if it overruns `within` seconds)."""
    process = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        cwd=ROOT,
        env=clean_env(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return CliResult(process.returncode, out.decode(), err.decode())


@dataclass
class RelayProcess:
    """One `outboxkit relay` subprocess."""

    args: tuple[str, ...]
    log_path: Path
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    _log: IO[bytes] | None = None

    async def start(self) -> RelayProcess:
        self._log = self.log_path.open("wb")
        self.process = await asyncio.create_subprocess_exec(
            *CLI,
            *self.args,
            cwd=ROOT,
            env=clean_env(self.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self._log,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        assert self.process is not None
        return self.process.returncode

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def signal(self, signum: signal.Signals) -> None:
        """Send `signum` to this process (by its own pid), if it still runs."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    async def wait(self, within: float) -> int:
        """The exit code; fails the test if the process still runs after `within` s."""
        assert self.process is not None
        try:
            code = await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            raise AssertionError(
                f"relay pid {self.pid} still running after {within} s\n{self.stderr()}"
            ) from None
        self._close_log()
        return code

    async def stop(self, within: float = 30) -> int:
        """SIGTERM and wait for the exit code."""
        self.terminate()
        return await self.wait(within)

    async def reap(self) -> None:
        """Make sure the process is gone: SIGKILL if it still runs, then wait for it."""
        if self.process is None:
            return
        self.kill()
        with contextlib.suppress(ProcessLookupError):
            await asyncio.wait_for(self.process.wait(), 30)
        self._close_log()

    def stderr(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class RelayProcesses:
    """Starts relays for one test; `reap_all()` kills any still running (call it in finally)."""

    log_dir: Path
    started: list[RelayProcess] = field(default_factory=list)

    async def start(
        self,
        dsn: str,
        broker: str,
        *,
        relay_id: str | None = None,
        batch_size: int | None = None,
        poll_interval: float = 0.1,
        http_port: int | None = None,
        semantics: str | None = None,
        crash_at: str | None = None,
        extra: Sequence[str] = (),
    ) -> RelayProcess:
        """Start `outboxkit relay` (OUTBOXKIT_TEST_CRASH_AT=crash_at if given)."""
        args = ["relay", "--dsn", dsn, "--broker", broker, "--poll-interval", str(poll_interval)]
        if relay_id is not None:
            args += ["--relay-id", relay_id]
        if batch_size is not None:
            args += ["--batch-size", str(batch_size)]
        if http_port is not None:
            args += ["--http-port", str(http_port)]
        if semantics is not None:
            args += ["--semantics", semantics]
        args += list(extra)
        env = {"OUTBOXKIT_TEST_CRASH_AT": crash_at} if crash_at else {}
        name = f"relay-{len(self.started):02d}-{relay_id or 'anon'}.stderr"
        relay = RelayProcess(tuple(args), self.log_dir / name, env)
        self.started.append(relay)
        return await relay.start()

    async def reap_all(self) -> None:
        await asyncio.gather(*(relay.reap() for relay in self.started))


# -- the broker side ---------------------------------------------------------------------------


def subject_prefix(stream: str) -> str:
    """The subject prefix the tests use for `stream`: its name in lower case, then a dot."""
    return f"{stream.lower()}."


def broker_url(server_url: str, stream: str, **options: str) -> str:
    """A relay `--broker` URL for `stream` (which the test created itself)."""
    query = {"stream": stream, "subject_prefix": subject_prefix(stream), "create_stream": "false"}
    query |= options
    return server_url + "?" + "&".join(f"{k}={v}" for k, v in query.items())


async def create_stream(
    server_url: str,
    stream: str,
    *,
    duplicate_window: float = TINY_DUPLICATE_WINDOW,
    max_msg_size: int | None = None,
    storage: StorageType = StorageType.MEMORY,
) -> None:
    """Create `stream` over `<prefix>.>`; a tiny duplicate window by default (see above)."""
    nc = await nats.connect(server_url)
    try:
        await nc.jetstream().add_stream(
            StreamConfig(
                name=stream,
                subjects=[subject_prefix(stream) + ">"],
                duplicate_window=duplicate_window,
                max_msg_size=max_msg_size,
                storage=storage,
            )
        )
    finally:
        await nc.close()


async def delete_stream(server_url: str, stream: str) -> None:
    """Delete `stream` and everything in it."""
    nc = await nats.connect(server_url)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


async def update_stream(server_url: str, stream: str, **changes: Any) -> None:
    """Change some settings of an existing stream (e.g. `max_msg_size=-1`)."""
    nc = await nats.connect(server_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        await js.update_stream(info.config.evolve(**changes))
    finally:
        await nc.close()


@dataclass(frozen=True)
class Received:
    """One message as the stream stored it."""

    seq: int
    message_id: str
    topic: str
    key: str | None
    payload: bytes
    stored_at: datetime


async def stream_count(server_url: str, stream: str) -> int:
    """How many messages the stream holds."""
    nc = await nats.connect(server_url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.messages)
    finally:
        await nc.close()


async def read_stream(server_url: str, stream: str) -> list[Received]:
    """Every message stored in `stream` when called, in stream order."""
    nc = await nats.connect(server_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        total, last = int(info.state.messages), int(info.state.last_seq)
        if total == 0:
            return []
        sub = await js.pull_subscribe(
            subject_prefix(stream) + ">",
            stream=stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL,
                inactive_threshold=30,
                mem_storage=True,
            ),
        )
        received: list[Received] = []
        deadline = time.monotonic() + 60
        while not received or received[-1].seq < last:
            if time.monotonic() > deadline:
                raise AssertionError(f"read {len(received)} of {total} messages of {stream}")
            with contextlib.suppress(nats.errors.TimeoutError):
                for msg in await sub.fetch(min(1000, total), timeout=2):
                    headers = msg.headers or {}
                    received.append(
                        Received(
                            seq=msg.metadata.sequence.stream,
                            message_id=headers["Nats-Msg-Id"],
                            topic=headers[TOPIC],
                            key=headers.get(KEY),
                            payload=msg.data,
                            stored_at=msg.metadata.timestamp,
                        )
                    )
        await sub.unsubscribe()
        return sorted(received, key=lambda r: r.seq)
    finally:
        await nc.close()


def duplicates(received: Iterable[Received]) -> int:
    """How many stored messages repeat a message id stored before."""
    counts = Counter(r.message_id for r in received)
    return sum(n - 1 for n in counts.values())


def first_occurrences_by_key(received: Iterable[Received]) -> dict[str | None, list[str]]:
    """Message ids per key in stream order, republished duplicates dropped."""
    seen: set[str] = set()
    by_key: dict[str | None, list[str]] = {}
    for r in received:
        if r.message_id not in seen:
            seen.add(r.message_id)
            by_key.setdefault(r.key, []).append(r.message_id)
    return by_key


# -- the ops HTTP server -----------------------------------------------------------------------


async def http_get(port: int, path: str, within: float = 5) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path; (status, body)."""
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body.decode()


def metric(text: str, name: str) -> float | None:
    """The value of an unlabelled sample `name` in Prometheus text, if present."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None
