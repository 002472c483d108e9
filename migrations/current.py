"""The start-up check of relays and consumers: is the schema as new as this outboxkit?

A relay or consumer started on a schema that misses a migration would fail later, on the
first query that needs it, or work wrongly. They refuse to start instead, with one clear
message naming the applied and the latest migration and the command to run.
"""

from __future__ import annotations

import shlex
from collections.abc import Collection
from typing import Any

import psycopg
from psycopg import errors, sql

from outboxkit.migrations.runner import VERSION_TABLE, available
from outboxkit.outbox.errors import SchemaNotMigrated
from outboxkit.outbox.identifiers import check_schema_name


def pending_problem(applied: Collection[int], schema: str) -> str | None:
    """Why a schema with migrations `applied` is too old for this outboxkit, or None.

    Migrations applied by a newer outboxkit are fine: they keep older code working.
    """
    shipped = available()
    missing = [m for m in shipped if m.version not in applied]
    if not missing:
        return None
    command = f"`outboxkit migrate --schema {shlex.quote(schema)}` (with --dsn or OUTBOXKIT_DSN)"
    if not applied:
        return f"no outboxkit tables in schema {schema!r}: run {command} first"
    return (
        f"schema {schema!r} is at migration {max(applied)}, this outboxkit needs "
        f"{shipped[-1].version} ({', '.join(m.filename for m in missing)} pending): "
        f"run {command} first"
    )


async def require_current(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Raise `SchemaNotMigrated` unless every migration this outboxkit ships is applied.

    Works under the least-privilege roles (every role may read the version table).
    """
    check_schema_name(schema)
    query = sql.SQL("SELECT version FROM {}").format(sql.Identifier(schema, VERSION_TABLE))
    try:
        async with conn.transaction():
            cursor = await conn.execute(query)
            applied = {int(str(version)) for (version,) in await cursor.fetchall()}
    except (errors.UndefinedTable, errors.InvalidSchemaName):
        applied = set()
    except errors.InsufficientPrivilege:
        raise SchemaNotMigrated(
            f"cannot read which migrations schema {schema!r} has (permission denied): run "
            f"`outboxkit migrate --schema {shlex.quote(schema)}` with this outboxkit, which "
            "lets every role read its version table"
        ) from None
    problem = pending_problem(applied, schema)
    if problem:
        raise SchemaNotMigrated(problem)
