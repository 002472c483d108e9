"""The write API on a real server, through every kind of transaction a caller may hold."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.pq import TransactionStatus
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from outboxkit import outbox
from outboxkit.outbox.message import BYTES_CONTENT_TYPE, JSON_CONTENT_TYPE, Message
from tests.conftest import Database

Admin = psycopg.Connection[tuple[Any, ...]]


class Abort(Exception):
    """Raised inside a transaction block to make the caller's code roll it back."""


def sqlalchemy_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


# -- the surfaces: one adapter per kind of caller transaction ------------------------------


class Surface(ABC):
    """A caller's way of holding a transaction, driven the same way by every test."""

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Any]:
        """Begin; commit on normal exit, roll back when the block raises."""

    @abstractmethod
    def savepoint(self, tx: Any) -> AbstractAsyncContextManager[None]:
        """A nested transaction; rolled back alone when the block raises."""

    @abstractmethod
    async def execute(self, tx: Any, statement: str) -> None:
        """Run a business statement in `tx`."""

    @abstractmethod
    async def write(self, tx: Any, topic: str, payload: Any, **options: Any) -> Message:
        """`outbox.write` or `outbox.awrite`, whichever fits."""

    @abstractmethod
    async def write_many(self, tx: Any, messages: Sequence[Message]) -> list[Message]:
        """`outbox.write_many` or `outbox.awrite_many`."""


class SyncSurface(Surface):
    async def write(self, tx: Any, topic: str, payload: Any, **options: Any) -> Message:
        return outbox.write(tx, topic, payload, **options)

    async def write_many(self, tx: Any, messages: Sequence[Message]) -> list[Message]:
        return outbox.write_many(tx, messages)


class AsyncSurface(Surface):
    async def write(self, tx: Any, topic: str, payload: Any, **options: Any) -> Message:
        return await outbox.awrite(tx, topic, payload, **options)

    async def write_many(self, tx: Any, messages: Sequence[Message]) -> list[Message]:
        return await outbox.awrite_many(tx, messages)


class PsycopgSync(SyncSurface):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        with self.conn.transaction():
            yield self.conn

    @asynccontextmanager
    async def savepoint(self, tx: Any) -> AsyncIterator[None]:
        with tx.transaction():
            yield

    async def execute(self, tx: Any, statement: str) -> None:
        tx.execute(statement.encode())


class PsycopgAsync(AsyncSurface):
    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self.conn.transaction():
            yield self.conn

    @asynccontextmanager
    async def savepoint(self, tx: Any) -> AsyncIterator[None]:
        async with tx.transaction():
            yield

    async def execute(self, tx: Any, statement: str) -> None:
        await tx.execute(statement.encode())


class SASession(SyncSurface):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        with Session(self.engine) as session, session.begin():
            yield session

    @asynccontextmanager
    async def savepoint(self, tx: Any) -> AsyncIterator[None]:
        with tx.begin_nested():
            yield

    async def execute(self, tx: Any, statement: str) -> None:
        tx.execute(text(statement))


class SAConnection(SASession):
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        with self.engine.connect() as connection, connection.begin():
            yield connection


class SAAsyncSession(AsyncSurface):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with AsyncSession(self.engine) as session, session.begin():
            yield session

    @asynccontextmanager
    async def savepoint(self, tx: Any) -> AsyncIterator[None]:
        async with tx.begin_nested():
            yield

    async def execute(self, tx: Any, statement: str) -> None:
        await tx.execute(text(statement))


class SAAsyncConnection(SAAsyncSession):
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self.engine.connect() as connection, connection.begin():
            yield connection


@asynccontextmanager
async def open_surface(name: str, dsn: str) -> AsyncIterator[Surface]:
    """The named surface on `dsn`; its connections and engines are closed afterwards."""
    if name == "psycopg":
        with psycopg.connect(dsn) as conn:
            yield PsycopgSync(conn)
    elif name == "psycopg-async":
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            yield PsycopgAsync(aconn)
    elif name in ("sa-session", "sa-connection"):
        engine = create_engine(sqlalchemy_url(dsn))
        try:
            yield SASession(engine) if name == "sa-session" else SAConnection(engine)
        finally:
            engine.dispose()
    else:
        async_engine = create_async_engine(sqlalchemy_url(dsn))
        try:
            yield (
                SAAsyncSession(async_engine)
                if name == "sa-async-session"
                else SAAsyncConnection(async_engine)
            )
        finally:
            await async_engine.dispose()


SURFACES = [
    "psycopg",
    "psycopg-async",
    "sa-session",
    "sa-connection",
    "sa-async-session",
    "sa-async-connection",
]


@pytest.fixture(params=SURFACES)
async def surface(request: pytest.FixtureRequest, dsn: str) -> AsyncIterator[Surface]:
    async with open_surface(request.param, dsn) as opened:
        yield opened


@pytest.fixture
def orders(admin: Admin) -> None:
    """A business table for the caller's own rows."""
    admin.execute("CREATE TABLE orders (id int PRIMARY KEY)")


def outbox_rows(admin: Admin) -> list[tuple[Any, ...]]:
    return admin.execute(
        "SELECT message_id, topic, key, payload, content_type, headers, partition,"
        " created_at, available_at, attempts, last_error"
        " FROM outboxkit.outbox_messages ORDER BY id"
    ).fetchall()


def count(admin: Admin, table: str) -> int:
    row = admin.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
    return int(row.fetchone()[0])  # type: ignore[index]


# -- commit, rollback, savepoints -----------------------------------------------------------


@pytest.mark.usefixtures("orders")
async def test_commit_writes_the_message_with_the_business_row(
    surface: Surface, admin: Admin
) -> None:
    async with surface.transaction() as tx:
        await surface.execute(tx, "INSERT INTO orders VALUES (1)")
        keyed = await surface.write(
            tx,
            "order.created",
            {"id": 1, "name": "Zoë"},
            key="order-1",
            headers={"x-tenant": "acme"},
            delay=timedelta(seconds=30),
        )
        blob = await surface.write(tx, "blob.stored", b"\x00\xff")

    partitions = admin.execute("SELECT partitions FROM outboxkit.outbox_settings").fetchone()
    rows = outbox_rows(admin)
    assert count(admin, "orders") == 1
    assert [row[:6] for row in rows] == [
        (
            keyed.message_id,
            "order.created",
            "order-1",
            '{"id":1,"name":"Zoë"}'.encode(),
            JSON_CONTENT_TYPE,
            {"x-tenant": "acme"},
        ),
        (blob.message_id, "blob.stored", None, b"\x00\xff", BYTES_CONTENT_TYPE, {}),
    ]
    assert partitions is not None
    for message, (*_, partition, created_at, available_at, attempts, last_error) in zip(
        (keyed, blob), rows, strict=True
    ):
        assert 0 <= partition < partitions[0]
        assert (message.created_at, message.available_at) == (created_at, available_at)
        assert (attempts, last_error) == (0, None)
    assert rows[0][8] == rows[0][7] + timedelta(seconds=30)
    assert rows[1][8] == rows[1][7]


def test_single_and_batched_writes_agree_on_partitions(dsn: str, admin: Admin) -> None:
    """`write` and `write_many` use different statements; a key's partition is the same."""
    keys = [f"customer-{i}" for i in range(50)]
    with psycopg.connect(dsn) as conn, conn.transaction():
        single = [outbox.write(conn, "t", {}, key=key) for key in keys]
        many = outbox.write_many(conn, [outbox.message("t", {}, key=key) for key in keys])
        keyless = [outbox.write(conn, "t", {}) for _ in range(20)]
    partition = dict(
        admin.execute("SELECT message_id, partition FROM outboxkit.outbox_messages").fetchall()
    )
    assert [partition[m.message_id] for m in single] == [partition[m.message_id] for m in many]
    assert len({partition[m.message_id] for m in single}) > 4
    assert len({partition[m.message_id] for m in keyless}) > 2


@pytest.mark.usefixtures("orders")
async def test_rollback_leaves_nothing(surface: Surface, admin: Admin) -> None:
    with suppress(Abort):
        async with surface.transaction() as tx:
            await surface.execute(tx, "INSERT INTO orders VALUES (1)")
            await surface.write(tx, "order.created", {"id": 1}, key="order-1")
            raise Abort

    assert count(admin, "orders") == 0
    assert outbox_rows(admin) == []


async def test_rolled_back_savepoint_discards_only_its_messages(
    surface: Surface, admin: Admin
) -> None:
    async with surface.transaction() as tx:
        await surface.write(tx, "kept.before", {})
        with suppress(Abort):
            async with surface.savepoint(tx):
                await surface.write(tx, "discarded", {})
                raise Abort
        async with surface.savepoint(tx):
            await surface.write(tx, "kept.in.savepoint", {})
        await surface.write(tx, "kept.after", {})

    assert [row[1] for row in outbox_rows(admin)] == [
        "kept.before",
        "kept.in.savepoint",
        "kept.after",
    ]


@pytest.fixture
def statement_counter(admin: Admin) -> Callable[[], int]:
    """Counts INSERT statements (not rows) on the outbox table, with a statement trigger."""
    admin.execute(
        """
        CREATE TABLE insert_statements (at timestamptz);
        CREATE FUNCTION count_insert_statement() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO insert_statements VALUES (now()); RETURN NULL; END $$;
        CREATE TRIGGER count_insert_statements AFTER INSERT ON outboxkit.outbox_messages
            FOR EACH STATEMENT EXECUTE FUNCTION count_insert_statement();
        """
    )
    return lambda: count(admin, "insert_statements")


async def test_write_many_is_one_statement(
    surface: Surface, admin: Admin, statement_counter: Callable[[], int]
) -> None:
    messages = [outbox.message("order.created", {"n": n}, key=f"order-{n % 7}") for n in range(100)]

    async with surface.transaction() as tx:
        written = await surface.write_many(tx, messages)

    assert statement_counter() == 1
    assert [m.message_id for m in written] == [m.message_id for m in messages]
    assert all(m.created_at is not None and m.created_at == written[0].created_at for m in written)
    rows = outbox_rows(admin)
    assert [row[0] for row in rows] == [m.message_id for m in messages]
    partition_of: dict[str, int] = {}
    for row in rows:
        assert partition_of.setdefault(row[2], row[6]) == row[6], "one key, one partition"


async def test_write_many_of_nothing_writes_nothing(
    surface: Surface, statement_counter: Callable[[], int]
) -> None:
    async with surface.transaction() as tx:
        assert await surface.write_many(tx, []) == []
    assert statement_counter() == 0


# -- concurrency -----------------------------------------------------------------------------

WRITERS = 8
TRANSACTIONS = 25
PER_TRANSACTION = 4


def assert_all_written_in_key_order(admin: Admin) -> None:
    rows = admin.execute(
        "SELECT message_id, key, payload FROM outboxkit.outbox_messages ORDER BY id"
    ).fetchall()
    assert len(rows) == WRITERS * TRANSACTIONS * PER_TRANSACTION
    assert len({row[0] for row in rows}) == len(rows)
    for writer in range(WRITERS):
        sequence = [int(row[2]) for row in rows if row[1] == f"writer-{writer}"]
        assert sequence == list(range(TRANSACTIONS * PER_TRANSACTION))


def batch(writer: int, transaction: int) -> list[Message]:
    first = transaction * PER_TRANSACTION
    return [
        outbox.message("load.test", n, key=f"writer-{writer}")
        for n in range(first, first + PER_TRANSACTION)
    ]


def test_concurrent_threads_each_with_a_connection(dsn: str, admin: Admin) -> None:
    start = threading.Barrier(WRITERS)

    def writer(number: int) -> None:
        with psycopg.connect(dsn) as conn:
            start.wait()
            for transaction in range(TRANSACTIONS):
                with conn.transaction():
                    outbox.write_many(conn, batch(number, transaction))

    with ThreadPoolExecutor(WRITERS) as pool:
        for done in [pool.submit(writer, number) for number in range(WRITERS)]:
            done.result()

    assert_all_written_in_key_order(admin)


async def test_concurrent_async_tasks_each_with_a_session(dsn: str, admin: Admin) -> None:
    engine = create_async_engine(sqlalchemy_url(dsn), pool_size=WRITERS)
    start = asyncio.Barrier(WRITERS)

    async def writer(number: int) -> None:
        await start.wait()
        for transaction in range(TRANSACTIONS):
            async with AsyncSession(engine) as session, session.begin():
                await outbox.awrite_many(session, batch(number, transaction))

    try:
        await asyncio.gather(*(writer(number) for number in range(WRITERS)))
    finally:
        await engine.dispose()

    assert_all_written_in_key_order(admin)


# -- refusals ----------------------------------------------------------------------------------


async def test_autocommit_connection_is_refused(dsn: str, admin: Admin) -> None:
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        pytest.raises(outbox.TransactionRequired, match="autocommit"),
    ):
        outbox.write(conn, "t", {})
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
        with pytest.raises(outbox.TransactionRequired):
            await outbox.awrite(aconn, "t", {})
    engine = create_engine(sqlalchemy_url(dsn), isolation_level="AUTOCOMMIT")
    try:
        with Session(engine) as session, pytest.raises(outbox.TransactionRequired):
            outbox.write(session, "t", {})
    finally:
        engine.dispose()
    assert outbox_rows(admin) == []


async def test_autocommit_allowed_when_asked_commits_at_once(dsn: str, admin: Admin) -> None:
    box = outbox.Outbox(allow_autocommit=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        written = box.write(conn, "t", {"sync": True})
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert [row[0] for row in outbox_rows(admin)] == [written.message_id]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
        await box.awrite(aconn, "t", {"sync": False})
    assert len(outbox_rows(admin)) == 2


async def test_unsupported_connections_are_refused(dsn: str) -> None:
    with pytest.raises(outbox.UnsupportedConnection, match=r"builtins\.object"):
        outbox.write(object(), "t", {})
    with pytest.raises(outbox.UnsupportedConnection):
        await outbox.awrite(object(), "t", {})
    with (
        sqlite3.connect(":memory:") as lite,
        pytest.raises(outbox.UnsupportedConnection, match="sqlite3"),
    ):
        outbox.write(lite, "t", {})
    lite.close()
    engine = create_engine("sqlite://")
    try:
        with Session(engine) as session, pytest.raises(outbox.UnsupportedConnection):
            outbox.write(session, "t", {})
    finally:
        engine.dispose()
    # The right driver on the wrong side of sync/async.
    async with await psycopg.AsyncConnection.connect(dsn) as aconn:
        with pytest.raises(outbox.UnsupportedConnection):
            outbox.write(aconn, "t", {})
    with psycopg.connect(dsn) as conn, pytest.raises(outbox.UnsupportedConnection):
        await outbox.awrite(conn, "t", {})


@pytest.mark.parametrize("name", SURFACES)
async def test_missing_tables_raise_schema_not_migrated(name: str, empty_db: Database) -> None:
    async with open_surface(name, empty_db.dsn) as opened:
        with pytest.raises(outbox.SchemaNotMigrated, match="outboxkit migrate"):
            async with opened.transaction() as tx:
                await opened.write(tx, "t", {})


def test_unknown_schema_raises_schema_not_migrated(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(outbox.SchemaNotMigrated, match="'billing'"):
        outbox.Outbox(schema="billing").write(conn, "t", {})


def test_invalid_message_is_refused_before_touching_the_connection(
    conn: psycopg.Connection[Any],
) -> None:
    with pytest.raises(outbox.InvalidTopic):
        outbox.write(conn, "", {})
    assert conn.info.transaction_status == TransactionStatus.IDLE


# -- the caller owns the transaction ------------------------------------------------------


def test_psycopg_transaction_is_left_open(dsn: str, admin: Admin) -> None:
    with psycopg.connect(dsn) as conn:
        outbox.write(conn, "t", {})
        outbox.write_many(conn, [outbox.message("t", {})])
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        assert outbox_rows(admin) == []
        conn.rollback()
    assert outbox_rows(admin) == []


async def test_psycopg_async_transaction_is_left_open(dsn: str, admin: Admin) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as aconn:
        await outbox.awrite(aconn, "t", {})
        assert aconn.info.transaction_status == TransactionStatus.INTRANS
        assert outbox_rows(admin) == []
        await aconn.rollback()
    assert outbox_rows(admin) == []


@pytest.fixture
def engine(dsn: str) -> Iterator[Engine]:
    sync_engine = create_engine(sqlalchemy_url(dsn))
    yield sync_engine
    sync_engine.dispose()


def test_sqlalchemy_transaction_is_left_open(engine: Engine, admin: Admin) -> None:
    with Session(engine) as session:
        outbox.write(session, "t", {})
        assert session.in_transaction()
        assert outbox_rows(admin) == []
        session.rollback()
    with engine.connect() as connection:
        outbox.write(connection, "t", {})  # begins, as SQLAlchemy's autobegin would
        assert connection.in_transaction()
        assert outbox_rows(admin) == []
        connection.rollback()
    assert outbox_rows(admin) == []


async def test_sqlalchemy_async_transaction_is_left_open(dsn: str, admin: Admin) -> None:
    async_engine = create_async_engine(sqlalchemy_url(dsn))
    try:
        async with AsyncSession(async_engine) as session:
            await outbox.awrite(session, "t", {})
            assert session.in_transaction()
            assert outbox_rows(admin) == []
            await session.rollback()
        async with async_engine.connect() as connection:
            await outbox.awrite(connection, "t", {})
            assert connection.in_transaction()
            await connection.rollback()
    finally:
        await async_engine.dispose()
    assert outbox_rows(admin) == []


# -- wake-ups ----------------------------------------------------------------------------------


def test_notify_once_per_committed_transaction(dsn: str, admin: Admin) -> None:
    """Relays wake on commit; the payload names the partitions written."""
    channel = outbox.OutboxSettings().notify_channel
    admin.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            outbox.Outbox(notify=False).write(conn, "quiet", {})
        conn.execute("SELECT pg_notify(%s, 'marker')", (channel,))
        conn.commit()
        with conn.transaction():
            loud = [outbox.write(conn, "loud", {}, key="order-1") for _ in range(3)]
        with suppress(Abort), conn.transaction():
            outbox.write(conn, "rolled.back", {}, key="order-2")
            raise Abort
        conn.execute("SELECT pg_notify(%s, 'end')", (channel,))
        conn.commit()
    row = admin.execute(
        "SELECT DISTINCT partition FROM outboxkit.outbox_messages WHERE message_id = ANY(%s)",
        ([m.message_id for m in loud],),
    ).fetchall()

    payloads = []
    # Notifications arrive in commit order; the timeout only guards against a hang.
    for notification in admin.notifies(timeout=60):
        payloads.append(notification.payload)
        if notification.payload == "end":
            break
    assert payloads == ["marker", str(row[0][0]), "end"]
    assert len(row) == 1
