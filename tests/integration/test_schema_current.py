"""`migrations.require_current`: the start-up check relays and consumers share."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from outboxkit import migrations, outbox
from tests.conftest import Database
from tests.support import logins


async def test_names_the_applied_and_the_latest_migration_and_the_command(
    empty_db: Database,
) -> None:
    migrations.apply(empty_db.dsn, target=1)
    async with await psycopg.AsyncConnection.connect(empty_db.dsn) as conn:
        with pytest.raises(outbox.SchemaNotMigrated) as raised:
            await migrations.require_current(conn, migrations.DEFAULT_SCHEMA)
        with pytest.raises(outbox.SchemaNotMigrated, match="no outboxkit tables in schema 'x y'"):
            await migrations.require_current(conn, "x y")
    message = str(raised.value)
    assert f"at migration 1, this outboxkit needs {migrations.LATEST}" in message
    assert "`outboxkit migrate --schema outboxkit`" in message

    migrations.apply(empty_db.dsn)
    async with await psycopg.AsyncConnection.connect(empty_db.dsn) as conn:
        await migrations.require_current(conn, migrations.DEFAULT_SCHEMA)


async def test_a_migration_from_a_newer_outboxkit_is_fine(dsn: str) -> None:
    """Rolling upgrades: the new code migrates first, the old code keeps running."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO outboxkit.outboxkit_migrations (version, name, checksum)"
            " VALUES (9999, 'from_the_future', 'x')"
        )
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await migrations.require_current(conn, migrations.DEFAULT_SCHEMA)


@pytest.mark.parametrize("kind", ["relay", "consumer"])
async def test_works_under_the_least_privilege_roles(
    kind: str, admin: psycopg.Connection[Any], dsn: str
) -> None:
    member = logins.login(admin, dsn, logins.role(dsn, kind))
    async with await psycopg.AsyncConnection.connect(member.dsn) as conn:
        await migrations.require_current(conn, migrations.DEFAULT_SCHEMA)
