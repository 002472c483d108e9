"""Real logins for the least-privilege roles: each test connects with its own role's name.

The test server trusts loopback connections (`initdb --auth=trust`), so a login is just a
role with LOGIN; the server then checks every privilege and policy against that role, as it
would for a password or certificate login.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from outboxkit import migrations


@dataclass(frozen=True)
class Login:
    """A LOGIN role and a DSN that connects as it."""

    name: str
    dsn: str


def role(dsn: str, kind: str, schema: str = migrations.DEFAULT_SCHEMA) -> str:
    """The name of `schema`'s writer, relay, consumer or admin role."""
    return migrations.role_names(dsn, schema)[kind]


def login(admin: psycopg.Connection[Any], dsn: str, *member_of: str) -> Login:
    """A fresh LOGIN role, member of `member_of`; `dsn` with its user name swapped in."""
    name = f"login_{uuid.uuid4().hex[:12]}"
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    for granted in member_of:
        grant = sql.SQL("GRANT {} TO {}").format(sql.Identifier(granted), sql.Identifier(name))
        admin.execute(grant)
    user = psycopg.conninfo.conninfo_to_dict(dsn)["user"]
    return Login(name, dsn.replace(f"//{user}@", f"//{name}@", 1))


def act_as(
    admin: psycopg.Connection[Any],
    role_name: str,
    consumer: str,
    schema: str = migrations.DEFAULT_SCHEMA,
) -> None:
    """Let `role_name` (and its members) act as inbox consumer `consumer`."""
    admin.execute(
        sql.SQL("INSERT INTO {} (role_name, consumer) VALUES (%s, %s)").format(
            sql.Identifier(schema, "inbox_consumer_roles")
        ),
        (role_name, consumer),
    )
