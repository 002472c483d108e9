"""The inbox on a real database: one effect per message, whatever the deliveries."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from outboxkit import outbox
from outboxkit.inbox import Inbox, NoHandler
from outboxkit.outbox.message import Message


def make_inbox(effects_table: str = "invoices") -> Inbox:
    ib = Inbox(consumer="billing")

    @ib.handler("order.*")
    def create_invoice(tx: psycopg.Connection[Any], message: Message) -> None:
        order_id = message.json()["order_id"]
        tx.execute(f"INSERT INTO {effects_table} (order_id) VALUES (%s)", (order_id,))
        if order_id < 0:
            raise ValueError("negative order")
        outbox.write(tx, "invoice.created", {"order_id": order_id}, key=f"order-{order_id}")

    return ib


@pytest.fixture
def invoices(admin: psycopg.Connection[Any]) -> None:
    admin.execute("CREATE TABLE invoices (order_id int NOT NULL)")


def count(admin: psycopg.Connection[Any], query: str) -> int:
    row = admin.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def order_message(order_id: int) -> Message:
    return outbox.message("order.created", {"order_id": order_id}, key=f"order-{order_id}")


@pytest.mark.usefixtures("invoices")
def test_duplicate_delivery_has_one_effect(
    conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]
) -> None:
    ib = make_inbox()
    message = order_message(1)
    results = []
    for _ in range(3):
        with conn.transaction():
            results.append(ib.handle(conn, message))
    assert results == [True, False, False]
    assert count(admin, "SELECT count(*) FROM invoices") == 1


@pytest.mark.usefixtures("invoices")
def test_handler_failure_leaves_nothing_behind(
    conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]
) -> None:
    ib = make_inbox()
    with pytest.raises(ValueError), conn.transaction():
        ib.handle(conn, order_message(-1))
    assert count(admin, "SELECT count(*) FROM invoices") == 0
    assert count(admin, "SELECT count(*) FROM outboxkit.inbox_messages") == 0
    assert count(admin, "SELECT count(*) FROM outboxkit.outbox_messages") == 0


@pytest.mark.usefixtures("invoices")
def test_chained_outbox_write_commits_with_the_dedup_row(
    conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]
) -> None:
    ib = make_inbox()
    with conn.transaction():
        assert ib.handle(conn, order_message(7))
        # not committed yet: nothing visible to others
        assert count(admin, "SELECT count(*) FROM outboxkit.outbox_messages") == 0
    assert count(admin, "SELECT count(*) FROM outboxkit.inbox_messages") == 1
    assert (
        count(
            admin, "SELECT count(*) FROM outboxkit.outbox_messages WHERE topic = 'invoice.created'"
        )
        == 1
    )


@pytest.mark.usefixtures("invoices")
def test_handle_never_commits_for_the_caller(
    conn: psycopg.Connection[Any], admin: psycopg.Connection[Any]
) -> None:
    ib = make_inbox()
    ib.handle(conn, order_message(3))
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    conn.rollback()
    assert count(admin, "SELECT count(*) FROM invoices") == 0
    assert count(admin, "SELECT count(*) FROM outboxkit.inbox_messages") == 0


@pytest.mark.usefixtures("invoices")
def test_concurrent_duplicate_delivery_has_one_effect(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    ib = make_inbox()
    message = order_message(11)
    barrier = threading.Barrier(4)
    results: list[bool] = []

    def deliver() -> None:
        with psycopg.connect(dsn) as conn:
            barrier.wait()
            with conn.transaction():
                results.append(ib.handle(conn, message))

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, False, True]
    assert count(admin, "SELECT count(*) FROM invoices") == 1


def test_unknown_topic_is_a_typed_error(conn: psycopg.Connection[Any]) -> None:
    ib = make_inbox()
    with pytest.raises(NoHandler), conn.transaction():
        ib.handle(conn, outbox.message("payment.settled", {}))


@pytest.mark.usefixtures("invoices")
async def test_async_handler_on_an_async_connection(
    dsn: str, admin: psycopg.Connection[Any]
) -> None:
    ib = Inbox(consumer="billing-async")

    @ib.handler("order.created")
    async def create_invoice(tx: psycopg.AsyncConnection[Any], message: Message) -> None:
        await tx.execute(
            "INSERT INTO invoices (order_id) VALUES (%s)", (message.json()["order_id"],)
        )
        await outbox.awrite(tx, "invoice.created", {"order_id": 1})

    message = order_message(21)
    async with await psycopg.AsyncConnection.connect(dsn) as aconn:
        for expected in (True, False):
            async with aconn.transaction():
                assert await ib.ahandle(aconn, message) is expected
    assert count(admin, "SELECT count(*) FROM invoices") == 1
