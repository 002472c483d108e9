"""Profile the relay or the durable inbox workers with py-spy while they drain a backlog.

    python -m benchmarks.profile relay   [--messages 100000] [--out profiles/]
    python -m benchmarks.profile durable [--messages 50000]  [--out profiles/]

`relay` fills an outbox backlog and runs `outboxkit relay` into NATS JetStream; `durable`
stores messages in the inbox and runs `outboxkit consume --mode durable` on them (the
benchmark app: one INSERT per handler). Either runs under `py-spy record --gil` (samples
of the thread holding the GIL: where the CPU goes) until everything is handled, then writes
the raw stacks and a summary of the hottest functions (self and inclusive) to `--out`.
BENCHMARKS.md's notes on what bounds each figure come from these summaries.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psycopg

from benchmarks import backlog
from benchmarks.apps import create_handled_table
from benchmarks.brokers import NatsTarget
from benchmarks.consumer import store
from benchmarks.env import Environment
from benchmarks.relays import REPO, child_env, cli

_FRAME = re.compile(r"(.*) \((.*):(\d+)\)")


def summarise(raw: Path, top: int = 25) -> str:
    """The hottest functions of py-spy's raw (collapsed) stacks, by self and inclusive time."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = [_short(frame) for frame in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"{total} samples", "", "self:"]
    lines += [f"{n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"{n / total:6.1%}  {f}" for f, n in inclusive.most_common(top * 2)]
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    function, path, _ = match.groups()
    return f"{function} ({path.split('site-packages/')[-1].replace(str(REPO) + '/', '')})"


def _wait_until(check: str, dsn: str, count: int, process: subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(check).fetchone()
            if row is not None and int(row[0]) >= count:
                return time.monotonic() - started
            if process.poll() is not None:
                raise RuntimeError(f"the profiled process exited with {process.returncode}")
            time.sleep(0.2)


def profile(kind: str, messages: int, out: Path) -> None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"{kind}.txt"
    env = Environment(base=Path(tempfile.mkdtemp(prefix="outboxkit-profile-"))).start()
    try:
        dsn = env.database(f"profile_{kind}")
        if kind == "relay":
            backlog.fill(dsn, messages)
            target = NatsTarget(env.nats_url)
            argv = cli("relay", "--dsn", dsn, "--broker", target.relay_url("profile"))
            check = f"SELECT {messages} - count(*) FROM outboxkit.outbox_messages"
        else:
            create_handled_table(dsn)
            store(dsn, "bench-inbox-stored", messages)
            argv = cli(
                "consume", "--app", "benchmarks.apps:stored", "--dsn", dsn, "--broker", dsn,
                "--mode", "durable", "--prune-interval", "0",
            )  # fmt: skip
            check = "SELECT count(*) FROM bench_handled"
        command = [py_spy, "record", "--gil", "--format", "raw", "-r", "200", "-o", str(raw)]
        process = subprocess.Popen([*command, "--", *argv], env=child_env(), cwd=REPO)
        try:
            seconds = _wait_until(check, dsn, messages, process)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(60)
        summary = f"{kind}: {messages:,} messages in {seconds:.1f} s under py-spy\n"
        summary += summarise(raw)
        (out / f"{kind}-summary.txt").write_text(summary)
        print(summary)
        if kind == "relay":
            asyncio.run(target.close())
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["relay", "durable"])
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("profiles"))
    args = parser.parse_args()
    default = 100_000 if args.kind == "relay" else 50_000
    profile(args.kind, args.messages or default, args.out)


if __name__ == "__main__":
    main()
