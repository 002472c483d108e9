"""Versioned SQL migrations for the outboxkit tables.

    import migrations
    migrations.apply("postgresql://…", schema="outboxkit")   # what is pending, under a lock
    migrations.status("postgresql://…")                        # applied and pending
    print(migrations.render_sql(schema="outboxkit"))           # for Flyway/Alembic users
    migrations.role_names("postgresql://…", "outboxkit")      # {"writer": "db_outboxkit_writer", …}

Each numbered `NNNN_name.sql` file runs once, in its own transaction, with `search_path`
set to the target schema; a version table in that schema records version, checksum and time.
"""

from migrations.roles import role_names
from migrations.runner import (
    DEFAULT_SCHEMA,
    Migration,
    MigrationState,
    apply,
    apply_in_transaction,
    available,
    render_sql,
    status,
)

__all__ = [
    "DEFAULT_SCHEMA",
    "Migration",
    "MigrationState",
    "apply",
    "apply_in_transaction",
    "available",
    "render_sql",
    "role_names",
    "status",
]
