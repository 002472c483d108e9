"""`outboxkit relay` and `outboxkit consume` refuse a schema older than the code, start on a
current one. Subprocesses against a real PostgreSQL; the broker is the database itself (the
relay writes into its inbox, the consumer's durable workers handle what it wrote)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from outboxkit import migrations, outbox
from tests.conftest import Database
from tests.support.consume_app import EFFECTS_DDL, ib
from tests.support.relay_process import RelayProcess, RelayProcesses, run_cli
from tests.support.waiting import eventually

APP = "tests.support.consume_app:ib"


def relay_args(dsn: str) -> list[str]:
    return ["relay", "--dsn", dsn, "--broker", f"{dsn}?consumer={ib.consumer}"]


def consume_args(dsn: str) -> list[str]:
    return ["consume", "--app", APP, "--dsn", dsn, "--broker", dsn, "--concurrency", "1"]


@pytest.mark.parametrize("command", [relay_args, consume_args], ids=["relay", "consume"])
async def test_refuses_to_start_while_a_migration_is_pending(
    command: Any, empty_db: Database
) -> None:
    older = migrations.LATEST - 1
    assert older >= 1, "needs at least two shipped migrations"
    migrations.apply(empty_db.dsn, target=older)

    result = await run_cli(*command(empty_db.dsn), within=60)

    assert result.returncode == 2, result.stderr
    error = result.stderr.splitlines()[-1]
    assert error.startswith("outboxkit: error: schema 'outboxkit' is at migration ")
    assert f"at migration {older}, this outboxkit needs {migrations.LATEST}" in error
    assert "run `outboxkit migrate --schema outboxkit`" in error
    assert "Traceback" not in result.stderr


async def test_both_start_and_deliver_on_a_current_schema(
    dsn: str, admin: psycopg.Connection[Any], relays: RelayProcesses, tmp_path: Path
) -> None:
    admin.execute(EFFECTS_DDL)
    with psycopg.connect(dsn) as conn:
        outbox.write(conn, "work.item", {"n": 1}, key="k1")
    # `RelayProcess` runs any `outboxkit` command line: here the consumer, reaped likewise.
    consumer = RelayProcess(tuple(consume_args(dsn)), tmp_path / "consume.stderr", {})
    relays.started.append(consumer)
    await consumer.start()
    relay = await relays.start(dsn, f"{dsn}?consumer={ib.consumer}")

    async def handled() -> bool:
        row = admin.execute("SELECT count(*) FROM consume_effects").fetchone()
        assert relay.running, relay.stderr()
        assert consumer.running, consumer.stderr()
        return row == (1,)

    await eventually(handled)
    assert await relay.stop() == 0, relay.stderr()
    assert await consumer.stop() == 0, consumer.stderr()
