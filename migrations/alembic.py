"""Apply outboxkit's migrations from one of your own Alembic revisions.

    from alembic import op
    from outboxkit.migrations.alembic import upgrade_outboxkit

    def upgrade() -> None:
        upgrade_outboxkit(op, schema="outboxkit", target=1)

The SQL runs inside Alembic's transaction on its psycopg 3 connection and is recorded in the
same version table as `outboxkit migrate`, so the CLI and Alembic never apply a migration twice.
"""

from __future__ import annotations

from typing import Any, Protocol

import psycopg

from outboxkit.migrations.runner import DEFAULT_SCHEMA, Migration, apply_in_transaction
from outboxkit.outbox.errors import UnsupportedConnection


class AlembicOperations(Protocol):
    """What we need from `alembic.op`: the connection of the running migration."""

    def get_bind(self) -> Any: ...


def upgrade_outboxkit(
    op: AlembicOperations,
    schema: str = DEFAULT_SCHEMA,
    target: int | None = None,
    role_prefix: str | None = None,
) -> list[Migration]:
    """Apply pending outboxkit migrations (up to `target`) in Alembic's current transaction.

    Pin `target` to the outboxkit version your revision was written for. Returns the
    migrations applied; raises `UnsupportedConnection` unless Alembic runs online on a
    synchronous `postgresql+psycopg://` engine. `role_prefix` as in `migrations.apply`.
    """
    bind = op.get_bind()
    driver = getattr(getattr(bind, "connection", None), "driver_connection", None)
    if not isinstance(driver, psycopg.Connection):
        raise UnsupportedConnection(
            f"upgrade_outboxkit needs Alembic running online on a synchronous psycopg 3 "
            f"engine (postgresql+psycopg://), got a {type(driver).__module__}."
            f"{type(driver).__qualname__} driver connection; in offline (--sql) mode include "
            f"the output of `outboxkit migrate --sql` instead"
        )
    return apply_in_transaction(driver, schema, target=target, role_prefix=role_prefix)
