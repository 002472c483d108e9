"""`upgrade_outboxkit` inside a real Alembic environment, against the test server."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.config import Config

from outboxkit import migrations
from outboxkit.outbox.errors import UnsupportedConnection
from tests.conftest import Database

ENV_PY = """\
from alembic import context
from sqlalchemy import create_engine, pool

url = context.config.get_main_option("sqlalchemy.url")
engine = create_engine(url, poolclass=pool.NullPool)
try:
    with engine.connect() as connection:
        if {search_path!r}:
            connection.exec_driver_sql("SET search_path TO " + {search_path!r})
            connection.commit()
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
finally:
    engine.dispose()
"""

REVISION_PY = """\
import sqlalchemy as sa
from alembic import op

from outboxkit.migrations.alembic import upgrade_outboxkit

revision = "0001_service"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    upgrade_outboxkit(op, target=1)
    op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True))


def downgrade() -> None:
    op.drop_table("orders")
"""


def alembic_env(root: Path, url: str, *, search_path: str = "") -> Config:
    """Write alembic.ini, env.py and one revision under `root`; the Config to run them."""
    scripts = root / "alembic"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(ENV_PY.format(search_path=search_path))
    (scripts / "versions" / "0001_service.py").write_text(REVISION_PY)
    ini = root / "alembic.ini"
    ini.write_text(
        textwrap.dedent(
            f"""\
            [alembic]
            script_location = {scripts}
            sqlalchemy.url = {url}
            """
        )
    )
    return Config(str(ini))


def sqlalchemy_url(db: Database) -> str:
    return db.dsn.replace("postgresql://", "postgresql+psycopg://", 1)


def test_upgrade_applies_outboxkit_in_alembic_transaction(
    empty_db: Database, tmp_path: Path
) -> None:
    cfg = alembic_env(tmp_path, sqlalchemy_url(empty_db))

    command.upgrade(cfg, "head")

    with psycopg.connect(empty_db.dsn) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                ("outboxkit",),
            )
        }
        versions = conn.execute(
            "SELECT version, name, checksum FROM outboxkit.outboxkit_migrations"
        ).fetchall()
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        orders = conn.execute("SELECT to_regclass('public.orders')::text").fetchone()
    first = migrations.available()[0]
    assert {"outbox_messages", "outbox_dead_letters", "inbox_messages"} <= tables
    assert versions == [(1, first.name, first.checksum)]
    assert revision == ("0001_service",)
    assert orders == ("orders",)
    assert [m.version for m in migrations.apply(empty_db.dsn, target=1)] == []


def test_second_alembic_upgrade_is_a_no_op(empty_db: Database, tmp_path: Path) -> None:
    cfg = alembic_env(tmp_path, sqlalchemy_url(empty_db))
    command.upgrade(cfg, "head")
    with psycopg.connect(empty_db.dsn) as conn:
        before = conn.execute(
            "SELECT version, applied_at FROM outboxkit.outboxkit_migrations"
        ).fetchall()

    command.upgrade(cfg, "head")

    with psycopg.connect(empty_db.dsn) as conn:
        after = conn.execute(
            "SELECT version, applied_at FROM outboxkit.outboxkit_migrations"
        ).fetchall()
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert after == before
    assert revision == ("0001_service",)


def test_cli_after_alembic_applies_nothing(empty_db: Database, tmp_path: Path) -> None:
    command.upgrade(alembic_env(tmp_path, sqlalchemy_url(empty_db)), "head")

    pending = [m for m in migrations.available() if m.version > 1]
    assert migrations.apply(empty_db.dsn) == pending
    states = migrations.status(empty_db.dsn)
    assert all(state.applied_at is not None for state in states)


def test_callers_search_path_is_kept(empty_db: Database, tmp_path: Path) -> None:
    """Tables created after `upgrade_outboxkit` in the same revision land where they would
    have without it, and Alembic still finds its own version table."""
    with psycopg.connect(empty_db.dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA app")
    cfg = alembic_env(tmp_path, sqlalchemy_url(empty_db), search_path="app")

    command.upgrade(cfg, "head")

    with psycopg.connect(empty_db.dsn) as conn:
        orders = conn.execute("SELECT to_regclass('app.orders')::text").fetchone()
        revision = conn.execute("SELECT version_num FROM app.alembic_version").fetchone()
        outbox = conn.execute("SELECT to_regclass('outboxkit.outbox_messages')::text").fetchone()
    assert orders == ("app.orders",)
    assert revision == ("0001_service",)
    assert outbox == ("outboxkit.outbox_messages",)


def test_non_psycopg_bind_is_refused(tmp_path: Path) -> None:
    cfg = alembic_env(tmp_path, f"sqlite:///{tmp_path / 'service.db'}")

    with pytest.raises(UnsupportedConnection, match=r"postgresql\+psycopg://.*sqlite3"):
        command.upgrade(cfg, "head")


def test_a_host_migrations_folder_does_not_shadow_ours(empty_db: Database, tmp_path: Path) -> None:
    """`alembic init migrations` (Alembic's and Flask-Migrate's default) puts a folder named
    `migrations` first on sys.path. Before the one import root our runner was the package
    `migrations` too: it found no SQL file and the upgrade reported success with no outboxkit
    table. Ours is `outboxkit.migrations` now, so the host's folder changes nothing."""
    scripts = tmp_path / "migrations"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "__init__.py").write_text("")  # the worst case: a real package of that name
    (scripts / "env.py").write_text(ENV_PY.format(search_path=""))
    (scripts / "versions" / "0001_service.py").write_text(REVISION_PY)
    (tmp_path / "alembic.ini").write_text(
        "[alembic]\nscript_location = migrations\nprepend_sys_path = .\n"
        f"sqlalchemy.url = {sqlalchemy_url(empty_db)}\n"
    )

    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    with psycopg.connect(empty_db.dsn) as conn:
        found = conn.execute(
            "SELECT to_regclass('outboxkit.outbox_messages') IS NOT NULL,"
            " to_regclass('public.orders') IS NOT NULL,"
            " (SELECT max(version) FROM outboxkit.outboxkit_migrations)"
        ).fetchone()
    assert found == (True, True, 1)  # the revision pins target=1
