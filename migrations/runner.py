"""Apply, inspect and print the numbered migrations."""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Final

import psycopg
from psycopg import sql

from outboxkit.outbox import db
from outboxkit.outbox.errors import ChecksumMismatch, ConfigurationError, MigrationError
from outboxkit.outbox.identifiers import check_schema_name
from outboxkit.outbox.limits import text_problem

DEFAULT_SCHEMA = "outboxkit"
VERSION_TABLE = "outboxkit_migrations"
# The custom setting migration 0005 reads its role prefix from (see `apply`).
ROLE_PREFIX_SETTING = "outboxkit.role_prefix"
# First key of the two-int advisory lock; the second is hashtext(schema).
_LOCK_CLASS = 0x0B0C_0001

_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


@dataclass(frozen=True)
class MigrationState:
    """A migration as the database sees it; `applied_at` is None while pending."""

    version: int
    name: str
    applied_at: datetime | None
    known: bool = True


def available() -> list[Migration]:
    """Every migration shipped with this version of outboxkit, in order.

    Raises `MigrationError` if there is none, so that no run ever applies nothing silently.
    """
    found = _shipped()
    if not found:
        raise MigrationError(
            f"no outboxkit migration files in {_location()}: another package named "
            "`migrations` shadows outboxkit's (a project's own Alembic or Flask-Migrate "
            "`migrations/` folder on sys.path?), or the installation lacks its .sql files; "
            "nothing was applied"
        )
    return found


def latest() -> int:
    """The number of the newest migration this outboxkit ships (`MigrationError` if none)."""
    return available()[-1].version


def _shipped() -> list[Migration]:
    found = []
    for entry in resources.files(__package__).iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def _location() -> str:
    # The folders of whichever package the name `migrations` resolved to.
    return ", ".join(map(str, sys.modules[__package__].__path__))


# Read once at import, never raising there: 0 only when no file is found, and then every
# function of the runner raises `MigrationError`.
LATEST: Final[int] = max((m.version for m in _shipped()), default=0)


def apply(
    dsn: str,
    schema: str = DEFAULT_SCHEMA,
    *,
    target: int | None = None,
    role_prefix: str | None = None,
) -> list[Migration]:
    """Apply what is pending (up to `target`), each migration in its own transaction.

    Safe to run from many processes at once: an advisory lock serialises them and each
    migration is applied exactly once. Returns the migrations this call applied.
    Raises `MigrationError` if `target` is not a shipped migration number.
    `role_prefix` names the schema's roles (`<prefix>_writer`, ...) when migration 0005
    creates them; by default `<database>_<schema>`.
    """
    check_schema_name(schema)
    _check_target(target)
    _check_role_prefix(role_prefix)
    with _connect(dsn) as conn:
        conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (_LOCK_CLASS, schema))
        try:
            with conn.transaction():
                _ensure_version_table(conn, schema)
                pending = _pending(conn, schema, target)
            for migration in pending:
                with conn.transaction():
                    _run(conn, schema, migration, role_prefix)
            return pending
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_LOCK_CLASS, schema))


def apply_in_transaction(
    conn: psycopg.Connection[tuple[object, ...]],
    schema: str = DEFAULT_SCHEMA,
    *,
    target: int | None = None,
    role_prefix: str | None = None,
) -> list[Migration]:
    """Apply what is pending inside the caller's open transaction (for Alembic revisions).

    Takes a transaction-scoped advisory lock; never commits.
    """
    check_schema_name(schema)
    _check_target(target)
    _check_role_prefix(role_prefix)
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, schema))
    _ensure_version_table(conn, schema)
    pending = _pending(conn, schema, target)
    for migration in pending:
        _run(conn, schema, migration, role_prefix)
    return pending


def status(dsn: str, schema: str = DEFAULT_SCHEMA) -> list[MigrationState]:
    """Applied and pending migrations; also those applied by a newer outboxkit."""
    check_schema_name(schema)
    with _connect(dsn) as conn:
        applied = _applied(conn, schema) if _version_table_exists(conn, schema) else {}
    states = [
        MigrationState(
            m.version, m.name, applied.pop(m.version)[2] if m.version in applied else None
        )
        for m in available()
    ]
    states += [
        MigrationState(version, name, applied_at, known=False)
        for version, (name, _checksum, applied_at) in sorted(applied.items())
    ]
    return states


def render_sql(
    schema: str = DEFAULT_SCHEMA, *, target: int | None = None, role_prefix: str | None = None
) -> str:
    """The SQL that `apply` would run on an empty database, as one script.

    Every identifier is quoted by `psycopg.sql`; `check_schema_name` keeps newlines out of
    the comment lines.
    """
    check_schema_name(schema)
    _check_target(target)
    _check_role_prefix(role_prefix)
    schema_id = sql.Identifier(schema).as_string()
    lines = [
        f"-- outboxkit migrations for schema {schema_id}",
        f"CREATE SCHEMA IF NOT EXISTS {schema_id};",
        _version_table_sql(schema).as_string() + ";",
        _grant_read_sql(schema).as_string() + ";",
    ]
    for migration in available():
        if target is not None and migration.version > target:
            break
        record = sql.SQL("INSERT INTO {} (version, name, checksum) VALUES ({}, {}, {})").format(
            sql.Identifier(schema, VERSION_TABLE),
            migration.version,
            migration.name,
            migration.checksum,
        )
        lines += [
            "",
            f"-- {migration.filename}",
            "BEGIN;",
            sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)).as_string() + ";",
            *([_role_prefix_sql(role_prefix).as_string() + ";"] if role_prefix else []),
            migration.sql.strip(),
            record.as_string() + ";",
            "COMMIT;",
        ]
    return "\n".join(lines) + "\n"


# -- internals -----------------------------------------------------------------------------


def _connect(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    return db.connect(dsn, autocommit=True)


def _check_target(target: int | None) -> None:
    if target is None:
        return
    newest = latest()
    if not 1 <= target <= newest:
        raise MigrationError(
            f"there is no migration {target}: this outboxkit ships migrations 1 to {newest}; "
            "nothing was applied"
        )


def _check_role_prefix(prefix: str | None) -> None:
    # Role names are at most 63 bytes and the longest suffix is "_consumer".
    if prefix is not None and (
        not prefix or text_problem(prefix, 54) is not None or prefix.startswith("pg_")
    ):
        raise ConfigurationError(
            f"invalid role prefix {prefix!r}: 1 to 54 bytes, no control characters, "
            "not starting with pg_"
        )


def _role_prefix_sql(prefix: str | None) -> sql.Composed:
    return sql.SQL("SELECT set_config({}, {}, true)").format(
        sql.Literal(ROLE_PREFIX_SETTING), sql.Literal(prefix)
    )


def _version_table_sql(schema: str) -> sql.Composed:
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ("
        " version integer PRIMARY KEY,"
        " name text NOT NULL,"
        " checksum text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    ).format(sql.Identifier(schema, VERSION_TABLE))


def _grant_read_sql(schema: str) -> sql.Composed:
    # Relays and consumers check at start-up that their schema is current (migrations.current),
    # under least-privilege roles. The table holds the numbers, names and checksums of
    # outboxkit's public files: nothing to hide from a role that may use the schema.
    return sql.SQL("GRANT SELECT ON {} TO PUBLIC").format(sql.Identifier(schema, VERSION_TABLE))


def _ensure_version_table(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(_version_table_sql(schema))
    row = conn.execute(
        "SELECT has_table_privilege('public', format('%%I.%%I', %s::text, %s::text), 'SELECT')",
        (schema, VERSION_TABLE),
    ).fetchone()
    if not (row and row[0]):  # only once: ten replicas starting at once rewrite no catalog
        conn.execute(_grant_read_sql(schema))


def _version_table_exists(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> bool:
    row = conn.execute(
        "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL",
        (schema, VERSION_TABLE),
    ).fetchone()
    return bool(row and row[0])


def _applied(
    conn: psycopg.Connection[tuple[object, ...]], schema: str
) -> dict[int, tuple[str, str, datetime]]:
    rows = conn.execute(
        sql.SQL("SELECT version, name, checksum, applied_at FROM {} ORDER BY version").format(
            sql.Identifier(schema, VERSION_TABLE)
        )
    ).fetchall()
    return {int(str(v)): (str(n), str(c), a) for v, n, c, a in rows}  # type: ignore[misc]


def _pending(
    conn: psycopg.Connection[tuple[object, ...]], schema: str, target: int | None
) -> list[Migration]:
    applied = _applied(conn, schema)
    pending = []
    for migration in available():
        if migration.version in applied:
            _name, checksum, _ = applied[migration.version]
            if checksum != migration.checksum:
                raise ChecksumMismatch(
                    f"migration {migration.filename} was changed after it was applied to "
                    f"schema {schema!r} (checksum {checksum[:12]}… in the database, "
                    f"{migration.checksum[:12]}… on disk); nothing was applied"
                )
        elif target is None or migration.version <= target:
            pending.append(migration)
    return pending


def _run(
    conn: psycopg.Connection[tuple[object, ...]],
    schema: str,
    migration: Migration,
    role_prefix: str | None,
) -> None:
    # Restore the caller's search_path afterwards (RESET would drop a session-level SET made
    # by the owner of the transaction, e.g. an Alembic env.py).
    row = conn.execute("SELECT current_setting('search_path')").fetchone()
    previous = str(row[0]) if row else ""
    conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
    if role_prefix:
        conn.execute(_role_prefix_sql(role_prefix))
    try:
        conn.execute(migration.sql.encode())
    except psycopg.Error as exc:
        raise MigrationError(f"migration {migration.filename} failed: {exc}") from exc
    conn.execute(
        sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(
            sql.Identifier(schema, VERSION_TABLE)
        ),
        (migration.version, migration.name, migration.checksum),
    )
    conn.execute("SELECT set_config('search_path', %s, true)", (previous,))
