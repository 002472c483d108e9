"""Relays as subprocesses (`outboxkit relay`), and the drain measurement around them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from benchmarks.backlog import count, held_partitions
from benchmarks.brokers import BrokerTarget

REPO = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """Our environment without OUTBOXKIT_* settings, with the checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOXKIT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def cli(*args: str) -> list[str]:
    """The `outboxkit` command line, run with this interpreter."""
    return [sys.executable, "-m", "outboxkit.cli", "--log-level", "WARNING", *args]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used so far (Linux), 0 if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def rss_kib(pid: int) -> int | None:
    """Resident memory of `pid` in KiB (Linux), None if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class Children:
    """Subprocesses of one measurement; each one's output goes to its own log file."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                list(argv), env=child_env(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )
        self.processes[name] = process
        return process

    def check(self) -> None:
        """Raise if a child died: a benchmark must not wait for a relay that is gone."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")

    def signal(self, name: str, signum: int) -> None:
        """Send `signum` to child `name` (SIGSTOP/SIGCONT pause and resume it)."""
        self.processes[name].send_signal(signum)

    def stop(self, timeout: float = 40.0) -> None:
        """SIGTERM every child (they drain and exit), SIGKILL what is left after `timeout`."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


@dataclass
class Drain:
    """A drained backlog: `messages` over `seconds` (first delivery to the last commit)."""

    messages: int
    seconds: float
    # (messages delivered so far, relay RSS in KiB) samples, when asked for.
    rss: list[tuple[int, int]] = field(default_factory=list)
    # CPU time the relay processes used over the same span.
    cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


async def drain(
    dsn: str,
    target: BrokerTarget,
    tag: str,
    total: int,
    log_dir: Path,
    *,
    relays: int = 1,
    batch_size: int = 500,
    extra_args: Sequence[str] = (),
    sample_rss: bool = False,
    within: float = 1800.0,
) -> Drain:
    """Drain a pre-filled backlog of `total` messages with `relays` relay subprocesses.

    The relays start held back (the harness holds every partition), register, and are
    released together. The clock starts at the first delivery the harness sees and stops
    when the broker holds every message and the outbox is empty (the last commit).
    """
    children = Children(log_dir)
    url = target.relay_url(tag)
    await target.prepare(tag)
    try:
        async with held_partitions(dsn) as gate:
            for i in range(relays):
                argv = cli(
                    "relay", "--dsn", dsn, "--broker", url, "--batch-size", str(batch_size),
                    "--relay-id", f"bench-{tag}-{i}", *extra_args,
                )  # fmt: skip
                children.start(f"relay-{tag}-{i}", argv)
            await gate.wait_for_relays(relays, children.check)
            await gate.open()
            return await _watch(dsn, target, tag, total, children, sample_rss, within)
    finally:
        await asyncio.to_thread(children.stop)
        await target.cleanup(tag)


async def _watch(
    dsn: str,
    target: BrokerTarget,
    tag: str,
    total: int,
    children: Children,
    sample_rss: bool,
    within: float,
) -> Drain:
    pids = [p.pid for p in children.processes.values()]
    samples: list[tuple[int, int]] = []
    started: tuple[float, int] | None = None
    cpu_at_start = 0.0
    deadline = time.monotonic() + within
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            delivered = await target.delivered(tag)
            broker_counts = delivered is not None
            if delivered is None:
                delivered = total - await count(conn)
            moment = time.perf_counter()
            if started is None and delivered > 0:
                started = (moment, delivered)
                cpu_at_start = sum(cpu_seconds(pid) for pid in pids)
            if sample_rss:
                memory = sum(rss_kib(pid) or 0 for pid in pids)
                samples.append((delivered, memory))
            if delivered >= total and (not broker_counts or await count(conn) == 0):
                break
            children.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"drained {delivered} of {total} in {within:.0f}s")
            await asyncio.sleep(0.05 if broker_counts else 0.2)
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_at_start
    assert started is not None
    first_time, first_count = started
    return Drain(total - first_count, moment - first_time, samples, cpu)
