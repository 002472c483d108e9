"""Migration 0004: every text column an index holds is CHECKed in bytes, whatever writes it."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from outboxkit import migrations, outbox
from outboxkit.outbox.errors import InvalidMessage, InvalidTopic, MigrationError
from outboxkit.outbox.ids import uuid7
from outboxkit.outbox.message import Message
from tests.conftest import Database
from tests.integration.regenerate_schema import SCHEMA_FILE, dump_schema

# A minimal row of each table, by column; the tested column is overridden.
ROWS: dict[str, dict[str, Any]] = {
    "outbox_messages": {
        "message_id": uuid.uuid4(),
        "topic": "t",
        "key": "k",
        "partition": 0,
        "payload": b"{}",
        "content_type": "application/json",
    },
    "outbox_dead_letters": {
        "id": 1,
        "message_id": uuid.uuid4(),
        "topic": "t",
        "key": "k",
        "partition": 0,
        "payload": b"{}",
        "content_type": "application/json",
        "headers": "{}",
        "created_at": "2026-01-01",
        "attempts": 1,
        "last_error": "e",
    },
    "outbox_key_blocks": {"partition": 0, "key": "k", "head_id": 1, "reason": "backoff"},
    "outbox_relays": {"relay_id": "r", "hostname": "h", "pid": 1},
    "inbox_messages": {"consumer": "c", "message_id": uuid.uuid4(), "topic": "t", "key": "k"},
    "inbox_dead_letters": {
        "consumer": "c",
        "message_id": uuid.uuid4(),
        "topic": "t",
        "key": "k",
        "received_at": "2026-01-01",
        "attempts": 1,
        "last_error": "e",
    },
}
LIMITS = [
    ("outbox_messages", "topic", 255),
    ("outbox_messages", "key", 1024),
    ("outbox_dead_letters", "topic", 255),
    ("outbox_dead_letters", "key", 1024),
    ("outbox_key_blocks", "key", 1024),
    ("outbox_relays", "relay_id", 255),
    ("inbox_messages", "consumer", 255),
    ("inbox_messages", "topic", 255),
    ("inbox_messages", "key", 1024),
    ("inbox_dead_letters", "consumer", 255),
    ("inbox_dead_letters", "topic", 255),
    ("inbox_dead_letters", "key", 1024),
]


def insert(conn: psycopg.Connection[Any], table: str, row: dict[str, Any]) -> None:
    if table == "outbox_messages":
        # Migration 0005 checks that a row carries its key's partition, whoever inserts it.
        found = conn.execute(
            "SELECT (hashtext(coalesce(%s, %s::text)) & 2147483647) %% partitions"
            " FROM outboxkit.outbox_settings",
            (row["key"], str(row["message_id"])),
        ).fetchone()
        assert found is not None
        row = row | {"partition": found[0]}
    columns = psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, row))
    values = psycopg.sql.SQL(", ").join(psycopg.sql.Placeholder() * len(row))
    query = psycopg.sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        psycopg.sql.Identifier("outboxkit", table), columns, values
    )
    conn.execute(query, list(row.values()))


@pytest.mark.parametrize(("table", "column", "max_bytes"), LIMITS)
def test_a_row_behind_the_apis_back_cannot_break_a_byte_limit(
    admin: psycopg.Connection[Any], table: str, column: str, max_bytes: int
) -> None:
    """Characters are not bytes: one character fewer than the limit, of 2-byte characters,
    is refused; the limit in bytes of 1-byte characters is stored."""
    with pytest.raises(psycopg.errors.CheckViolation, match=f"{table}_{column}_bytes"):
        insert(admin, table, ROWS[table] | {column: "é" * (max_bytes // 2 + 1)})
    insert(admin, table, ROWS[table] | {column: "a" * max_bytes})


def test_the_migration_names_rows_written_before_it_over_a_limit(empty_db: Database) -> None:
    migrations.apply(empty_db.dsn, target=3)
    with psycopg.connect(empty_db.dsn, autocommit=True) as conn:
        insert(conn, "inbox_messages", ROWS["inbox_messages"] | {"key": "é" * 600})
        with pytest.raises(MigrationError) as failed:
            migrations.apply(empty_db.dsn)
        text = str(failed.value)
        assert "rows of outboxkit.inbox_messages have a key of more than 1024 bytes" in text
        assert "octet_length(key) > 1024" in text  # the hint: a query that finds them
        assert [m.version for m in migrations.status(empty_db.dsn) if m.applied_at] == [1, 2, 3]
        conn.execute("DELETE FROM outboxkit.inbox_messages")
    assert next(m.version for m in migrations.apply(empty_db.dsn)) == 4


def test_constraints_added_online_beforehand_are_validated_and_kept(empty_db: Database) -> None:
    migrations.apply(empty_db.dsn, target=3)
    with psycopg.connect(empty_db.dsn, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE outboxkit.inbox_messages ADD CONSTRAINT inbox_messages_key_bytes"
            " CHECK (octet_length(key) <= 1024) NOT VALID"
        )
        migrations.apply(empty_db.dsn)
        row = conn.execute(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'inbox_messages_key_bytes'"
        ).fetchone()
    assert row == (True,)
    assert dump_schema(empty_db.dsn) == SCHEMA_FILE.read_text()


def test_a_message_built_by_hand_gets_a_typed_error_from_the_check(
    conn: psycopg.Connection[Any],
) -> None:
    """`Message(...)` skips `outbox.message`'s checks; the table's still hold."""
    by_hand = Message(message_id=uuid7(), topic="t", payload=b"{}", key="\U0001f600" * 1024)
    with pytest.raises(InvalidMessage, match="1024 bytes"):
        outbox.write_many(conn, [by_hand])
    conn.rollback()
    long_topic = replace(by_hand, key=None, topic="é" * 128)
    with pytest.raises(InvalidTopic, match="255 bytes"):
        outbox.write_many(conn, [long_topic, outbox.message("t", {})])
