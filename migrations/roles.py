"""The least-privilege roles migration 0005 made for a schema, by kind."""

from __future__ import annotations

from psycopg import sql

from outboxkit.outbox import db

ROLES_TABLE = "outboxkit_roles"
KINDS = ("writer", "relay", "consumer", "admin")


def role_names(dsn: str, schema: str) -> dict[str, str]:
    """{kind: role name} for `schema`'s writer, relay, consumer and admin roles.

    Empty when the schema predates migration 0005. The names are fixed when 0005 runs (see
    `migrations.apply`'s `role_prefix`); grant them to your logins.
    """
    with db.connect(dsn, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL",
            (schema, ROLES_TABLE),
        ).fetchone()
        if not (exists and exists[0]):
            return {}
        rows = conn.execute(
            sql.SQL("SELECT kind, role_name FROM {}").format(sql.Identifier(schema, ROLES_TABLE))
        ).fetchall()
    found = {str(kind): str(name) for kind, name in rows}
    return {kind: found[kind] for kind in KINDS if kind in found}
