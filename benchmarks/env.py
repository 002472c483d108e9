"""The benchmark environment: embedded servers, fresh databases, sizes, and machine facts."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from outboxkit import migrations
from outboxkit.devservers import NatsServer, PostgresServer

SCHEMA = "outboxkit"
TEMPLATE = "bench_template"
# What we record about the server's configuration: durability first.
PG_SETTINGS = (
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_sync_method",
    "wal_level",
    "commit_delay",
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "work_mem",
    "max_connections",
    "autovacuum",
    "jit",
)


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does: `--quick` for a smoke run, else the real one."""

    producer_transactions: int
    producer_batches: int
    batch: int
    backlog: int
    latency_seconds: float
    inbox_messages: int
    scaling_backlog: int
    memory_backlog: int
    peer_messages: int
    semantics_backlog: int
    partitions: tuple[int, ...]
    relay_counts: tuple[int, ...] = (1, 2, 4)

    @classmethod
    def for_run(cls, quick: bool, large: bool) -> Sizes:
        if quick:
            return cls(
                producer_transactions=200,
                producer_batches=20,
                batch=100,
                backlog=5_000,
                latency_seconds=3.0,
                inbox_messages=3_000,
                scaling_backlog=5_000,
                memory_backlog=20_000,
                peer_messages=1_000,
                semantics_backlog=5_000,
                partitions=(1, 16, 64),
            )
        return cls(
            producer_transactions=2_000,
            producer_batches=200,
            batch=100,
            backlog=1_000_000 if large else 100_000,
            latency_seconds=20.0,
            inbox_messages=50_000,
            scaling_backlog=50_000,
            memory_backlog=1_000_000 if large else 300_000,
            peer_messages=50_000,
            semantics_backlog=50_000,
            partitions=(1, 4, 16, 64),
        )


def machine_facts() -> dict[str, str]:
    """CPU model, cores, memory, OS, Python and load, for the report."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "memory": memory,
        "OS": platform.platform(),
        "Python": sys.version.split()[0],
        "load average at start": load_average(),
    }


def load_average() -> str:
    """The 1/5/15-minute load averages: how busy the machine was with other work."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def nats_version() -> str:
    """`nats-server --version` of the embedded server."""
    candidates = [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]
    binary = next(
        (str(d / "nats-server") for d in candidates if (d / "nats-server").exists()),
        shutil.which("nats-server"),
    )
    if binary is None:
        return "unknown"
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or out.stderr.strip() or "unknown"


@dataclass
class Environment:
    """PostgreSQL and NATS on loopback in `base`, plus the migrated template database."""

    base: Path
    keep: bool = False
    postgres: PostgresServer | None = None
    nats: NatsServer | None = None
    rabbitmq: Any = None  # outboxkit.devservers.rabbitmq.RabbitMQServer, when asked for
    _databases: list[str] = field(default_factory=list)

    def start(self) -> Environment:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)  # the PostgreSQL server may run as an unprivileged user
        # Durable settings: fsync, synchronous_commit and full_page_writes stay on.
        self.postgres = PostgresServer(base_dir=self.base / "postgres", durable=True)
        self.postgres.start()
        self.nats = NatsServer(store_dir=self.base / "nats")
        self.nats.start()
        with psycopg.connect(self.postgres.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
        migrations.apply(self.postgres.dsn(TEMPLATE), SCHEMA)
        return self

    def start_rabbitmq(self) -> str:
        """Start an embedded RabbitMQ node (Debian's rabbitmq-server); its amqp:// URL."""
        from outboxkit.devservers.rabbitmq import RabbitMQServer

        self.rabbitmq = RabbitMQServer(base_dir=self.base / "rabbitmq").start()
        return str(self.rabbitmq.url)

    def close(self) -> None:
        if self.rabbitmq is not None:
            self.rabbitmq.stop() if self.keep else self.rabbitmq.cleanup()
        if self.nats is not None:
            self.nats.stop() if self.keep else self.nats.cleanup()
        if self.postgres is not None:
            self.postgres.stop() if self.keep else self.postgres.cleanup()
        if not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)

    @property
    def nats_url(self) -> str:
        assert self.nats is not None
        return self.nats.url

    @property
    def admin_dsn(self) -> str:
        assert self.postgres is not None
        return self.postgres.dsn()

    def database(self, name: str) -> str:
        """A fresh migrated database `name` (dropped first if it exists); its DSN."""
        assert self.postgres is not None
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(TEMPLATE)
                )
            )
        self._databases.append(name)
        return self.postgres.dsn(name)

    def drop(self, name: str) -> None:
        """Drop a benchmark database to give its disk back."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def postgres_facts(self) -> dict[str, str]:
        """Server version and the settings that decide durability and speed."""
        with psycopg.connect(self.admin_dsn) as conn:
            row = conn.execute("SELECT version()").fetchone()
            facts = {"version": str(row[0]) if row else "unknown"}
            rows = conn.execute(
                "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
                (list(PG_SETTINGS),),
            ).fetchall()
        for name, setting, unit in rows:
            facts[name] = _with_unit(setting, unit)
        return facts


def _with_unit(setting: str, unit: str | None) -> str:
    if unit == "8kB" and setting.isdigit():
        return f"{int(setting) * 8 // 1024} MB"
    if unit == "MB" and setting.isdigit():
        return f"{setting} MB"
    if unit in {"s", "ms", "kB"}:
        return f"{setting} {unit}"
    return setting


@dataclass
class Context:
    """What every benchmark gets: the servers, the sizes, a log, and shared findings."""

    env: Environment
    sizes: Sizes
    quick: bool
    work_dir: Path
    log: Callable[[str], None]
    broker_urls: tuple[str, ...] = ()
    # Figures one benchmark leaves for another (e.g. the relay's max rate for latency).
    shared: dict[str, Any] = field(default_factory=dict)

    def database(self, name: str) -> str:
        return self.env.database(name)


def now() -> float:
    """The clock durations are measured with."""
    return time.perf_counter()
