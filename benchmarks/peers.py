"""Peers: the same backlog drain through other Python libraries on the same PostgreSQL.

The peers are installed into a separate virtualenv that the harness creates (and reuses,
keyed by the pinned requirements) so that they never touch outboxkit's environment. Each
one enqueues N jobs (not timed) and drains them with its own worker and a no-op handler;
ours drains N outbox messages with the relay into NATS JetStream, acks included, so ours
does strictly more work per message. Chosen because they run on plain PostgreSQL: pgmq needs
the pgmq extension (not in the embedded server) and django-reliable-outbox needs Django.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import backlog
from benchmarks.brokers import NatsTarget
from benchmarks.env import Context
from benchmarks.model import Result, Row, Target
from benchmarks.relays import drain

NAME = "peers"
TITLE = "Peers: draining the same backlog"
REQUIREMENTS = ("pgqueuer==1.6.0", "procrastinate==3.10.0", "psycopg[binary]>=3.2")
DRIVERS = Path(__file__).resolve().parent / "peer_drivers"
PEERS = ("pgqueuer", "procrastinate")
PEER_BUDGET = 180.0  # seconds of draining per peer; a slower peer is measured on part of N


def venv_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256("\n".join(REQUIREMENTS).encode()).hexdigest()[:12]
    return cache / "outboxkit-bench" / f"peers-{digest}"


def peer_python(log: Path) -> Path:
    """The peers' virtualenv's interpreter, created and filled on first use."""
    home = venv_dir()
    python = home / "bin" / "python"
    marker = home / "requirements.txt"
    if python.exists() and marker.exists() and marker.read_text() == "\n".join(REQUIREMENTS):
        return python
    home.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(home)], check=True, stdout=out, stderr=out
        )
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
            check=True,
            stdout=out,
            stderr=out,
            timeout=900,
        )
    marker.write_text("\n".join(REQUIREMENTS))
    return python


def run_driver(python: Path, peer: str, dsn: str, count: int, budget: float) -> dict[str, object]:
    """Run one peer's driver; its JSON line."""
    out = subprocess.run(
        [str(python), str(DRIVERS / f"{peer}_drain.py"), dsn, str(count), str(budget)],
        capture_output=True,
        text=True,
        timeout=budget + 600,  # enqueueing, schema, start-up
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{peer} driver failed ({out.returncode}): {out.stderr[-800:]}")
    found: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


async def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    count = ctx.sizes.peer_messages
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    ctx.log(f"peers: virtualenv {venv_dir()} ({', '.join(REQUIREMENTS)})")
    pip_log = ctx.work_dir / "peers-pip.log"
    try:
        python = await asyncio.to_thread(peer_python, pip_log)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        tail = pip_log.read_text(errors="replace")[-500:] if pip_log.exists() else ""
        raise RuntimeError(f"could not install the peers into {venv_dir()}: {tail}") from exc
    dsn = ctx.database("bench_peers")
    target = NatsTarget(ctx.env.nats_url)
    try:
        ctx.log(f"peers: ours, relay drains {count:,} messages into NATS JetStream")
        backlog.fill(dsn, count)
        ours = (await drain(dsn, target, "peers", count, ctx.work_dir)).rate
    finally:
        await target.close()
        ctx.env.drop("bench_peers")
    rates: dict[str, float] = {}
    for peer in PEERS:
        ctx.log(f"peers: {peer} drains {count:,} jobs")
        database = f"bench_peer_{peer}"
        peer_dsn = ctx.database(database)
        try:
            found = await asyncio.to_thread(run_driver, python, peer, peer_dsn, count, PEER_BUDGET)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            result.notes.append(f"{peer} did not complete: {exc}")
            continue
        finally:
            ctx.env.drop(database)
        messages, seconds = int(str(found["messages"])), float(str(found["seconds"]))
        rates[peer] = messages / seconds if seconds > 0 else 0.0
        label = f"{found['library']} {found['version']}"
        result.rows.append(Row(f"relay vs {label}", ours, "msg/s", rates[peer], label, chart=True))
        drained = (
            ""
            if messages >= count
            else f" (stopped after {PEER_BUDGET:.0f} s: {messages:,} of {count:,} drained)"
        )
        result.notes.append(f"{label}: {found['settings']}; no-op handler{drained}.")
    if rates:
        best = max(rates, key=lambda name: rates[name])
        result.targets.append(Target(f"relay ÷ best peer ({best}) ≥ 3", ours / rates[best], 3.0))
    result.notes.append(
        f"{count:,} messages/jobs of ~170 bytes each; ours: one relay subprocess, batch 500, "
        "publishing to JetStream and awaiting PubAcks; the peers' clocks stop at their last "
        "handled job (not at the worker's exit)."
    )
    return result
