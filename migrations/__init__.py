"""Versioned SQL migrations for the outboxkit tables.

    from outboxkit import migrations
    migrations.apply("postgresql://…", schema="outboxkit")   # what is pending, under a lock
    migrations.status("postgresql://…")                        # applied and pending
    print(migrations.render_sql(schema="outboxkit"))           # for Flyway/Alembic users
    migrations.LATEST                                          # the newest shipped number
    migrations.role_names("postgresql://…", "outboxkit")      # {"writer": "db_outboxkit_writer", …}

Each numbered `NNNN_name.sql` file runs once, in its own transaction, with `search_path`
set to the target schema; a version table in that schema records version, checksum and time.
A run that would apply nothing because no migration file is found, or a `target` beyond
`LATEST`, raises `MigrationError`: it never passes silently. Relays and consumers call
`require_current` at start-up and refuse a schema older than `LATEST` (`SchemaNotMigrated`).
"""

from outboxkit.migrations.current import require_current
from outboxkit.migrations.roles import role_names
from outboxkit.migrations.runner import (
    DEFAULT_SCHEMA,
    LATEST,
    Migration,
    MigrationState,
    apply,
    apply_in_transaction,
    available,
    latest,
    render_sql,
    status,
)

__all__ = [
    "DEFAULT_SCHEMA",
    "LATEST",
    "Migration",
    "MigrationState",
    "apply",
    "apply_in_transaction",
    "available",
    "latest",
    "render_sql",
    "require_current",
    "role_names",
    "status",
]
