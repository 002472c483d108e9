"""Schema names: refused where they come in, quoted by psycopg.sql where they go out."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outboxkit import migrations
from outboxkit.inbox import ConsumerSettings, Inbox
from outboxkit.outbox import Outbox, OutboxSettings
from outboxkit.outbox.errors import ConfigurationError
from outboxkit.outbox.identifiers import MAX_IDENTIFIER_BYTES, check_schema_name
from outboxkit.relay import RelaySettings
from tests.support import hostile

BAD = {
    "newline": "outboxkit\nDROP TABLE orders; --",
    "carriage return": "a\rb",
    "tab": "a\tb",
    "NUL": "a\x00b",
    "C1 control (NEL)": "a\x85b",
    "DEL": "a\x7fb",
    "lone surrogate": "a\udcffb",
    "empty": "",
    "64 ASCII bytes": "x" * 64,
    "64 bytes in 32 characters": "é" * 32,
}
GOOD = ['we"ird; DROP TABLE x --', "Schéma avec espaces ✓", "x" * MAX_IDENTIFIER_BYTES]
SHAPE = migrations.render_sql("outboxkit").splitlines()
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"  # refused before any connection

# Every place a schema name comes in; each must refuse a bad one with ConfigurationError.
ENTRY_POINTS: dict[str, Callable[[str], object]] = {
    "OutboxSettings": lambda s: OutboxSettings(schema=s),
    "Outbox": lambda s: Outbox(schema=s),
    "RelaySettings": lambda s: RelaySettings(dsn=UNREACHABLE, broker_url="test://", schema=s),
    "ConsumerSettings": lambda s: ConsumerSettings(dsn=UNREACHABLE, broker_url="test://", schema=s),
    "Inbox": lambda s: Inbox("billing", schema=s),
    "migrations.render_sql": migrations.render_sql,
    "migrations.apply": lambda s: migrations.apply(UNREACHABLE, s),
    "migrations.status": lambda s: migrations.status(UNREACHABLE, s),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys())
@pytest.mark.parametrize("schema", BAD.values(), ids=BAD.keys())
def test_every_entry_point_refuses_a_bad_schema_name(
    entry: Callable[[str], object], schema: str
) -> None:
    with pytest.raises(ConfigurationError, match="invalid schema name") as raised:
        entry(schema)
    message = str(raised.value)
    assert message.isprintable()  # the name is escaped, never echoed raw


@pytest.mark.parametrize("schema", GOOD)
def test_odd_but_harmless_names_are_accepted(schema: str) -> None:
    assert check_schema_name(schema) == schema
    assert OutboxSettings(schema=schema).schema == schema


def test_rendered_sql_quotes_every_identifier_with_psycopg_sql() -> None:
    script = migrations.render_sql('we"ird')

    assert 'CREATE SCHEMA IF NOT EXISTS "we""ird";' in script
    assert 'SET LOCAL search_path TO "we""ird";' in script
    assert 'INSERT INTO "we""ird"."outboxkit_migrations"' in script
    assert 'GRANT SELECT ON "we""ird"."outboxkit_migrations" TO PUBLIC;' in script
    assert 'we"ird' not in script  # the raw name appears nowhere, not even in a comment


@pytest.mark.hostile
@hostile.fuzz
@given(st.text(max_size=80))
def test_an_accepted_schema_name_never_adds_a_line_to_the_rendered_sql(schema: str) -> None:
    with hostile.attempt("schema name (outbox.identifiers)", refused=(ConfigurationError,)) as out:
        check_schema_name(schema)
    if out.accepted:
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in schema)
        assert len(schema.encode()) <= MAX_IDENTIFIER_BYTES
        lines = migrations.render_sql(schema).splitlines()
        assert len(lines) == len(SHAPE)
        # Only the lines that name the schema differ, and only where the name goes.
        assert [line.startswith("--") for line in lines] == [s.startswith("--") for s in SHAPE]
