"""Named queries from `.sql` files, bound to a schema with quoted identifiers."""

from __future__ import annotations

from outboxkit.outbox import queries, sqlfile

TEXT = """\
-- A file comment before the first block is ignored.

-- name: first
-- What the first query does.
SELECT 1
FROM {things}   -- a trailing comment stays: it is not at the start of a line
WHERE x = %(x)s;

--name:second
  -- indented comment
INSERT INTO {things} VALUES (1)
"""


def test_parse_splits_named_blocks_and_drops_comment_lines() -> None:
    assert sqlfile.parse(TEXT) == {
        "first": (
            "SELECT 1\n"
            "FROM {things}   -- a trailing comment stays: it is not at the start of a line\n"
            "WHERE x = %(x)s;"
        ),
        "second": "INSERT INTO {things} VALUES (1)",
    }


def test_parse_without_blocks_is_empty() -> None:
    assert sqlfile.parse("-- just a comment\nSELECT 1\n") == {}


def test_bind_quotes_schema_and_table() -> None:
    bound = sqlfile.bind({"q": "SELECT * FROM {t}"}, 'we"ird; DROP TABLE x --', ["t"])
    assert bound["q"].as_string() == 'SELECT * FROM "we""ird; DROP TABLE x --"."t"'


def test_shipped_write_queries_are_bound() -> None:
    loaded = sqlfile.load("outboxkit.outbox", "queries.sql")
    assert "insert_messages" in loaded
    insert = queries.bound("my schema")["insert_messages"].as_string()
    assert 'INSERT INTO "my schema"."outbox_messages"' in insert
    assert "{outbox_messages}" not in insert
