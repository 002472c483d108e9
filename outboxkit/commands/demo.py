"""`outboxkit demo`: the end-to-end demo on embedded servers."""

from __future__ import annotations

import argparse
from typing import Any

import psycopg

import migrations
import outbox
from outboxkit.devservers import PostgresServer


def register(subparsers: Any) -> None:
    """Add the `demo` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="run the end-to-end demo on embedded PostgreSQL"
    )
    parser.add_argument("--orders", type=int, default=20, help="orders to write (default 20)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Start PostgreSQL, migrate, write orders with their events in one transaction each."""
    with PostgresServer() as server:
        print(f"PostgreSQL started on 127.0.0.1:{server.port}")
        dsn = server.dsn()
        for migration in migrations.apply(dsn):
            print(f"applied {migration.filename}")
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total_cents int NOT NULL)")
            conn.commit()
            for order_id in range(1, args.orders + 1):
                with conn.transaction():
                    conn.execute("INSERT INTO orders VALUES (%s, %s)", (order_id, order_id * 100))
                    outbox.write(
                        conn, "order.created", {"order_id": order_id}, key=f"order-{order_id}"
                    )
            with conn.transaction():
                conn.execute("INSERT INTO orders VALUES (0, 1)")
                outbox.write(conn, "order.created", {"order_id": 0}, key="order-0")
                raise_rollback(conn)
            pending = conn.execute(
                "SELECT count(*), count(DISTINCT key) FROM outboxkit.outbox_messages"
            ).fetchone()
            orders = conn.execute("SELECT count(*) FROM orders").fetchone()
        assert pending is not None and orders is not None
        print(f"orders committed: {orders[0]}; events pending in the outbox: {pending[0]}")
        print("the rolled-back order left no event behind")
    return 0


def raise_rollback(conn: psycopg.Connection[Any]) -> None:
    """Roll back the innermost transaction block on purpose."""
    raise psycopg.Rollback()
