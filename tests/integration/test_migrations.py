"""The migration runner against a real server: idempotent, locked, checksummed, quoted."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from outboxkit import migrations, outbox
from outboxkit.migrations.runner import VERSION_TABLE, Migration
from tests.conftest import Database
from tests.integration.regenerate_schema import SCHEMA_FILE, dump_schema

ODD_SCHEMAS = ['we"ird; DROP TABLE x --', "Schéma avec espaces ✓"]
REGENERATE_HINT = "schema changed: run `.venv/bin/python -m tests.integration.regenerate_schema`"


@pytest.fixture
def empty_admin(empty_db: Database) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the empty database."""
    with psycopg.connect(empty_db.dsn, autocommit=True) as connection:
        yield connection


def recorded(
    conn: psycopg.Connection[tuple[object, ...]], schema: str = migrations.DEFAULT_SCHEMA
) -> list[tuple[object, ...]]:
    """(version, name, checksum, applied_at) rows of the version table."""
    query = sql.SQL("SELECT version, name, checksum, applied_at FROM {} ORDER BY version")
    return conn.execute(query.format(sql.Identifier(schema, VERSION_TABLE))).fetchall()


def expected_versions() -> list[tuple[int, str, str]]:
    return [(m.version, m.name, m.checksum) for m in migrations.available()]


def with_extra_migration(
    monkeypatch: pytest.MonkeyPatch, *, change_first: bool = False
) -> list[Migration]:
    """Pretend a newer outboxkit ships migration 9999 (and, optionally, an edited 0001).

    Returns the migrations really shipped."""
    shipped = migrations.available()
    if change_first:
        shipped[0] = replace(shipped[0], sql=shipped[0].sql + "\n-- edited after release\n")
    extra = Migration(9999, "extra", "CREATE TABLE extra_table (id int);")
    monkeypatch.setattr(migrations.runner, "available", lambda: [*shipped, extra])
    return migrations.available()


def test_apply_on_empty_database_records_every_migration(
    empty_db: Database, empty_admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    applied = migrations.apply(empty_db.dsn)

    assert applied == migrations.available()
    assert [row[:3] for row in recorded(empty_admin)] == expected_versions()


def test_apply_is_idempotent(dsn: str, admin: psycopg.Connection[tuple[object, ...]]) -> None:
    before = recorded(admin)

    assert migrations.apply(dsn) == []
    assert migrations.apply(dsn) == []

    assert recorded(admin) == before


def test_target_stops_early_and_the_rest_follows_later(
    monkeypatch: pytest.MonkeyPatch, dsn: str, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    last_shipped = with_extra_migration(monkeypatch)[-1].version

    assert migrations.apply(dsn, target=last_shipped) == []
    assert [m.version for m in migrations.apply(dsn)] == [9999]

    assert [row[0] for row in recorded(admin)][-1] == 9999
    assert admin.execute("SELECT to_regclass('outboxkit.extra_table')::text").fetchone() == (
        "outboxkit.extra_table",
    )


def test_status_lists_applied_pending_and_unknown(
    monkeypatch: pytest.MonkeyPatch,
    empty_db: Database,
    dsn: str,
    admin: psycopg.Connection[tuple[object, ...]],
) -> None:
    shipped = [(m.version, m.name) for m in migrations.available()]
    assert [(s.version, s.name, s.applied_at) for s in migrations.status(empty_db.dsn)] == [
        (version, name, None) for version, name in shipped
    ]

    admin.execute(
        sql.SQL(
            "INSERT INTO {} (version, name, checksum) VALUES (8888, 'from_the_future', 'x')"
        ).format(sql.Identifier("outboxkit", VERSION_TABLE))
    )
    with_extra_migration(monkeypatch)
    states = migrations.status(dsn)

    assert [(s.version, s.known) for s in states] == [
        *((version, True) for version, _ in shipped),
        (9999, True),
        (8888, False),
    ]
    assert all(s.applied_at is not None for s in states if s.version not in (9999,))
    assert next(s for s in states if s.version == 9999).applied_at is None


def test_changed_checksum_in_database_stops_everything(
    dsn: str, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    admin.execute(
        sql.SQL("UPDATE {} SET checksum = 'tampered' WHERE version = 1").format(
            sql.Identifier("outboxkit", VERSION_TABLE)
        )
    )
    before = recorded(admin)

    with pytest.raises(outbox.ChecksumMismatch, match=r"0001_initial\.sql"):
        migrations.apply(dsn)

    assert recorded(admin) == before


def test_edited_migration_file_stops_everything(
    monkeypatch: pytest.MonkeyPatch, dsn: str, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    with_extra_migration(monkeypatch, change_first=True)
    before = recorded(admin)

    with pytest.raises(outbox.ChecksumMismatch, match=r"0001_initial\.sql") as raised:
        migrations.apply(dsn)

    assert "nothing was applied" in str(raised.value)
    assert recorded(admin) == before
    assert admin.execute("SELECT to_regclass('outboxkit.extra_table')").fetchone() == (None,)


CHILD = """\
import json, sys, time
from pathlib import Path

from outboxkit import migrations

ready, go, dsn = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ready.touch()
while not go.exists():
    time.sleep(0.001)
print(json.dumps([m.version for m in migrations.apply(dsn)]))
"""


def test_eight_processes_at_once_apply_each_migration_exactly_once(
    empty_db: Database, empty_admin: psycopg.Connection[tuple[object, ...]], tmp_path: Path
) -> None:
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(8)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(flag), str(go), empty_db.dsn],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    try:
        while not all(flag.exists() for flag in ready):
            crashed = [child for child in children if child.poll() not in (None, 0)]
            assert not crashed, crashed[0].communicate()[1]
        go.touch()  # every child is now polling for this file: they start together
        outputs = [child.communicate() for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    errors = [err for child, (_out, err) in zip(children, outputs, strict=True) if child.returncode]
    assert errors == []
    applied = sorted(v for out, _err in outputs for v in json.loads(out))
    assert applied == [m.version for m in migrations.available()]
    assert [row[:3] for row in recorded(empty_admin)] == expected_versions()


@pytest.mark.parametrize("schema", ODD_SCHEMAS)
def test_odd_schema_names_are_quoted_everywhere(
    schema: str, empty_db: Database, empty_admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    empty_admin.execute("CREATE TABLE x (id int)")

    assert migrations.apply(empty_db.dsn, schema) == migrations.available()
    assert migrations.apply(empty_db.dsn, schema) == []
    assert all(s.applied_at is not None for s in migrations.status(empty_db.dsn, schema))

    box = outbox.Outbox(schema=schema)
    with psycopg.connect(empty_db.dsn) as conn, conn.transaction():
        written = box.write(conn, "order.created", {"id": 1}, key="order-1")
    row = empty_admin.execute(
        sql.SQL("SELECT topic, key, payload FROM {} WHERE message_id = %s").format(
            sql.Identifier(schema, "outbox_messages")
        ),
        (written.message_id,),
    ).fetchone()
    assert row == ("order.created", "order-1", b'{"id":1}')
    assert empty_admin.execute("SELECT to_regclass('public.x')::text").fetchone() == ("x",)
    assert empty_admin.execute("SELECT to_regnamespace('outboxkit')").fetchone() == (None,)


def test_migrated_schema_matches_schema_sql(empty_db: Database) -> None:
    migrations.apply(empty_db.dsn)

    assert dump_schema(empty_db.dsn) == SCHEMA_FILE.read_text(), REGENERATE_HINT


@pytest.mark.parametrize("schema", [migrations.DEFAULT_SCHEMA, *ODD_SCHEMAS])
def test_rendered_sql_run_as_one_script_equals_apply(
    schema: str, empty_db: Database, empty_admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    """What a DBA or Flyway runs from `outboxkit migrate --sql` is what `apply` would do."""
    empty_admin.execute(migrations.render_sql(schema).encode())

    assert [row[:3] for row in recorded(empty_admin, schema)] == expected_versions()
    assert migrations.apply(empty_db.dsn, schema) == []
    if schema == migrations.DEFAULT_SCHEMA:
        assert dump_schema(empty_db.dsn) == SCHEMA_FILE.read_text(), REGENERATE_HINT


def test_rendered_sql_respects_target(monkeypatch: pytest.MonkeyPatch) -> None:
    last_shipped = with_extra_migration(monkeypatch)[-1]

    script = migrations.render_sql(target=last_shipped.version)

    assert f"-- {last_shipped.filename}" in script
    assert "extra_table" not in script
    assert "extra_table" in migrations.render_sql()


def test_latest_is_the_newest_shipped_migration() -> None:
    assert migrations.LATEST == migrations.latest() == migrations.available()[-1].version


@pytest.mark.parametrize("target", [migrations.LATEST + 1, 0], ids=["beyond-latest", "zero"])
def test_a_target_that_is_not_shipped_applies_nothing_and_says_so(
    target: int, empty_db: Database, empty_admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    with pytest.raises(outbox.MigrationError, match=f"no migration {target}: .* 1 to "):
        migrations.apply(empty_db.dsn, target=target)
    with pytest.raises(outbox.MigrationError, match=f"no migration {target}"):
        migrations.render_sql(target=target)
    with (
        psycopg.connect(empty_db.dsn) as conn,
        pytest.raises(outbox.MigrationError, match=f"no migration {target}"),
    ):
        migrations.apply_in_transaction(conn, target=target)

    assert empty_admin.execute("SELECT to_regnamespace('outboxkit')").fetchone() == (None,)
