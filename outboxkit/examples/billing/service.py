"""The billing service: creates one invoice per `order.created`, effectively exactly once.

    outboxkit consume --app outboxkit.examples.billing.service:ib --dsn postgresql://…/billing \\
        --broker nats://127.0.0.1:4222

The handler runs in the transaction that records the message in the inbox: a redelivered
order never makes a second invoice. The invoices table has no unique constraint on purpose:
the inbox alone keeps it free of duplicates.
"""

from __future__ import annotations

from typing import Any

import psycopg

from outboxkit import outbox
from outboxkit.inbox import Inbox
from outboxkit.outbox.message import Message

ib = Inbox(consumer="billing")

SCHEMA = """
CREATE TABLE IF NOT EXISTS invoices (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id    bigint NOT NULL,
    amount_cents integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
)
"""


@ib.handler("order.created")
def create_invoice(tx: psycopg.Connection[Any], message: Message) -> None:
    """Invoice the order, and tell the world, in the inbox's transaction."""
    order = message.json()
    invoice_id = tx.execute(
        "INSERT INTO invoices (order_id, amount_cents) VALUES (%s, %s) RETURNING id",
        (order["order_id"], order["total_cents"]),
    ).fetchone()
    outbox.write(
        tx,
        "invoice.created",
        {"invoice_id": invoice_id[0] if invoice_id else None, "order_id": order["order_id"]},
        key=f"order-{order['order_id']}",
    )


def create_schema(dsn: str) -> None:
    """Create the invoices table (a real service would use its own migrations)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(SCHEMA)
