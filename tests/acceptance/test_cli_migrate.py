"""`outboxkit migrate` run as a subprocess, the way operators and start-up scripts run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from outboxkit import migrations
from outboxkit.devservers import free_port
from tests.conftest import Database

OUTBOXKIT = Path(sys.executable).with_name("outboxkit")


def outboxkit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `outboxkit` script with no OUTBOXKIT_* variables but those given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOXKIT_")}
    return subprocess.run(
        [str(OUTBOXKIT), *args],
        env=clean | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_apply_then_up_to_date(empty_db: Database) -> None:
    first = outboxkit("migrate", "--dsn", empty_db.dsn)
    second = outboxkit("migrate", "--dsn", empty_db.dsn)

    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"applied {m.filename}" for m in migrations.available()]
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["schema 'outboxkit' is up to date"]


def test_schema_option(empty_db: Database) -> None:
    result = outboxkit("migrate", "--dsn", empty_db.dsn, "--schema", "billing events")

    assert result.returncode == 0, result.stderr
    with psycopg.connect(empty_db.dsn) as conn:
        tables = conn.execute("SELECT to_regclass('\"billing events\".outbox_messages')").fetchone()
    assert tables is not None and tables[0] is not None


def test_status_lists_applied_and_pending(empty_db: Database) -> None:
    shipped = migrations.available()
    pending = outboxkit("migrate", "--status", "--dsn", empty_db.dsn)
    outboxkit("migrate", "--dsn", empty_db.dsn, "--target", str(shipped[0].version))
    partly = outboxkit("migrate", "--status", "--dsn", empty_db.dsn)

    assert pending.returncode == 0, pending.stderr
    assert [line.split() for line in pending.stdout.splitlines()] == [
        [f"{m.version:04d}_{m.name}", "pending"] for m in shipped
    ]
    assert partly.returncode == 0, partly.stderr
    lines = [line.split() for line in partly.stdout.splitlines()]
    assert lines[0][0] == f"{shipped[0].version:04d}_{shipped[0].name}"
    assert lines[0][1] != "pending"
    assert [line[1] for line in lines[1:]] == ["pending"] * (len(shipped) - 1)


def test_sql_needs_no_database() -> None:
    result = outboxkit("migrate", "--sql", "--schema", "billing")

    assert result.returncode == 0, result.stderr
    assert result.stdout == migrations.render_sql("billing")
    assert "CREATE TABLE outbox_messages" in result.stdout
    assert 'SET LOCAL search_path TO "billing";' in result.stdout


def test_changed_checksum_fails_naming_the_file(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE outboxkit.outboxkit_migrations SET checksum = 'x' WHERE version = 1")

    result = outboxkit("migrate", "--dsn", dsn)

    assert result.returncode == 2
    assert "ChecksumMismatch" not in result.stderr  # a message for people, not a traceback
    assert "0001_initial.sql" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "bad_dsn",
    [
        "postgresql://app:s3cr3t-pw@127.0.0.1:{port}/orders",
        "host=127.0.0.1 port={port} user=app password=s3cr3t-pw dbname=orders",
        "postgresql://app:s3cr3t-pw@[127.0.0.1:{port}/orders",  # malformed
    ],
    ids=["url", "keywords", "malformed-url"],
)
def test_bad_dsn_is_one_clear_line_without_the_password(bad_dsn: str) -> None:
    result = outboxkit("migrate", "--dsn", bad_dsn.format(port=free_port()))

    assert result.returncode == 2
    assert result.stdout == ""
    assert "s3cr3t-pw" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("outboxkit: error: ")


def test_dsn_from_environment(empty_db: Database) -> None:
    result = outboxkit("migrate", env={"OUTBOXKIT_DSN": empty_db.dsn})

    assert result.returncode == 0, result.stderr
    assert migrations.status(empty_db.dsn)[0].applied_at is not None


def test_schema_from_environment(empty_db: Database) -> None:
    result = outboxkit(
        "migrate", env={"OUTBOXKIT_DSN": empty_db.dsn, "OUTBOXKIT_SCHEMA": "from_env"}
    )

    assert result.returncode == 0, result.stderr
    assert all(s.applied_at is not None for s in migrations.status(empty_db.dsn, "from_env"))


def test_missing_dsn_is_an_error() -> None:
    result = outboxkit("migrate")

    assert result.returncode == 2
    assert result.stdout == ""
    assert "--dsn (or OUTBOXKIT_DSN) is required" in result.stderr


@pytest.mark.parametrize(
    "schema",
    ["outboxkit\nDROP TABLE orders; --", "tab\there", "nul\x01", "lone \udcff"],
    ids=["newline", "tab", "control", "lone-surrogate"],
)
@pytest.mark.parametrize("source", ["flag", "env"])
def test_a_schema_name_with_control_characters_is_refused(schema: str, source: str) -> None:
    """A newline in the name used to put a bare SQL line into the `--sql` script."""
    if source == "flag":
        result = outboxkit("migrate", "--sql", "--schema", schema)
    else:
        result = outboxkit("migrate", "--sql", env={"OUTBOXKIT_SCHEMA": schema})

    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("outboxkit: error: invalid schema name ")


def test_a_target_beyond_the_latest_is_an_error(empty_db: Database) -> None:
    beyond = str(migrations.LATEST + 1)
    applied = outboxkit("migrate", "--dsn", empty_db.dsn, "--target", beyond)
    printed = outboxkit("migrate", "--sql", "--target", beyond)

    for result in (applied, printed):
        assert result.returncode == 2
        assert result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line == (
            f"outboxkit: error: there is no migration {beyond}: this outboxkit ships "
            f"migrations 1 to {migrations.LATEST}; nothing was applied"
        )
    assert migrations.status(empty_db.dsn)[0].applied_at is None
