"""Rewrite `schema.sql`: the schema the migrations produce, as pg_dump prints it, normalised.

    .venv/bin/python -m tests.integration.regenerate_schema

Run it after adding a migration, and review the diff: `test_migrations.py` checks that
applying every migration in order gives exactly this file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from psycopg import sql

from outboxkit import migrations
from outboxkit.devservers import PostgresServer
from outboxkit.devservers.postgres import _bin_dir

SCHEMA_FILE = Path(__file__).with_name("schema.sql")
_NOISE = ("--", "SET ", "SELECT pg_catalog.set_config(", "\\restrict ", "\\unrestrict ")


def dump_schema(dsn: str, schema: str = migrations.DEFAULT_SCHEMA) -> str:
    """`pg_dump --schema-only` of `schema` without comments, SET lines and blank lines.

    The row-level policies name the schema's roles, whose names depend on the database's
    name (see migration 0005): they read as `<writer role>`, `<consumer role>`, ...
    """
    result = subprocess.run(
        [
            str(_bin_dir() / "pg_dump"),
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--schema",
            schema,
            "--dbname",
            dsn,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pg_dump failed: {result.stderr.strip()}")
    lines = (line.rstrip() for line in result.stdout.splitlines())
    dump = "".join(f"{line}\n" for line in lines if line and not line.startswith(_NOISE))
    for kind, name in migrations.role_names(dsn, schema).items():
        for spelling in (sql.Identifier(name).as_string(), name):
            dump = dump.replace(f" {spelling} ", f" <{kind} role> ")
    return dump


def main() -> None:
    """Migrate a throw-away database and write its dump to `schema.sql`."""
    with PostgresServer(durable=False) as server:
        migrations.apply(server.dsn())
        SCHEMA_FILE.write_text(dump_schema(server.dsn()))
    print(f"wrote {SCHEMA_FILE}")


if __name__ == "__main__":
    main()
