"""The README's first command, small: its verdict is checked from the databases it leaves."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg

from outboxkit.devservers import PostgresServer


def scalar(dsn: str, query: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return int(row[0])


def test_demo_leaves_one_invoice_per_order() -> None:
    # Not pytest's tmp_path: as root, PostgreSQL runs as `nobody`, who must reach the data.
    data = Path(tempfile.mkdtemp(prefix="outboxkit-demo-test-"))
    data.chmod(0o755)
    try:
        run_and_check(data)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def run_and_check(data: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "outboxkit.cli",
            "demo",
            "--orders",
            "300",
            "--redeliver",
            "20",
            "--data-dir",
            str(data),
            "--keep-data",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["ok"] is True

    with PostgresServer(base_dir=data / "postgres") as server:
        orders, billing = server.dsn("orders"), server.dsn("billing")
        assert scalar(orders, "SELECT count(*) FROM orders") == 300
        assert scalar(orders, "SELECT count(*) FROM outboxkit.outbox_messages") == 0
        assert scalar(billing, "SELECT count(*) FROM invoices") == 300
        assert scalar(billing, "SELECT count(DISTINCT order_id) FROM invoices") == 300
        assert (
            scalar(
                billing, "SELECT count(*) FROM outboxkit.inbox_messages WHERE consumer = 'billing'"
            )
            == 300
        )
        # every invoice chained its own event, exactly once
        assert (
            scalar(
                billing,
                "SELECT count(DISTINCT payload) FROM outboxkit.outbox_messages"
                " WHERE topic = 'invoice.created'",
            )
            == 300
        )
    assert printed["duplicates_absorbed"] >= 20
