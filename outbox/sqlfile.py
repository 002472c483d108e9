"""Named queries from a package's `.sql` file.

A file holds blocks headed `-- name: <query_name>`; each block is one statement. Table names
are written as `{outbox_messages}`-style placeholders and bound to a schema with
`psycopg.sql.Identifier`, never by string formatting.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from importlib import resources

from psycopg import sql

from outboxkit.outbox.identifiers import check_schema_name

_HEADER = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split a `.sql` file's text into {name: statement}."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        statement = "\n".join(
            line for line in body.strip().splitlines() if not line.lstrip().startswith("--")
        ).strip()
        queries[name] = statement
    return queries


def load(package: str, filename: str) -> dict[str, str]:
    """Read and parse `filename` shipped inside `package`."""
    return parse(resources.files(package).joinpath(filename).read_text(encoding="utf-8"))


def bind(queries: Mapping[str, str], schema: str, tables: Iterable[str]) -> dict[str, sql.Composed]:
    """Bind every `{table}` placeholder to the quoted `schema.table`.

    Raises `ConfigurationError` for a schema name `check_schema_name` refuses.
    """
    check_schema_name(schema)
    identifiers = {table: sql.Identifier(schema, table) for table in tables}
    return {name: sql.SQL(statement).format(**identifiers) for name, statement in queries.items()}
