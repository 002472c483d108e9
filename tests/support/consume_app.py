"""The `--app` of the `outboxkit consume` acceptance tests: `tests.support.consume_app:ib`.

One sync handler for `work.*`: it sleeps in the database if the payload asks (so a test can
catch it in flight through `pg_stat_activity`), then writes one row into `consume_effects`.
"""

from __future__ import annotations

from typing import Any

import psycopg

from outboxkit.inbox import Inbox
from outboxkit.outbox.message import Message

EFFECTS_DDL = "CREATE TABLE consume_effects (message_id uuid NOT NULL, n int NOT NULL)"
IN_FLIGHT = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND state = 'active' AND query LIKE 'SELECT pg_sleep%'"
)

ib = Inbox(consumer="consume-acceptance")


@ib.handler("work.*")
def record(tx: psycopg.Connection[Any], message: Message) -> None:
    body = message.json()
    if body.get("sleep"):
        tx.execute("SELECT pg_sleep(%s)", (body["sleep"],))
    tx.execute(
        "INSERT INTO consume_effects (message_id, n) VALUES (%s, %s)",
        (message.message_id, body["n"]),
    )
