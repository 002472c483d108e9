"""The hot queries use their indexes: no sequential scan over a backlog of pending rows.

A seq scan is invisible on a small table and ruinous on a big one (the durable worker's
`mark_processed` once scanned the whole inbox on every batch), so each query is EXPLAINed
on a table of realistic size, with the parameters the code passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from outboxkit import outbox
from outboxkit.inbox import Inbox
from outboxkit.relay.queries import bound as relay_queries
from tests.support.logins import act_as, login, role

BACKLOG = 20_000
OUTBOX = "outbox_messages"
SCANNED = {OUTBOX, "inbox_messages"}


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from plan_nodes(child)


def seq_scans(conn: psycopg.Connection[Any], query: sql.Composable, params: Any) -> list[str]:
    """The big tables a query's plan reads with a sequential scan."""
    row = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + query, params).fetchone()
    assert row is not None
    nodes = plan_nodes(row[0][0]["Plan"])
    return [
        n["Relation Name"]
        for n in nodes
        if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in SCANNED
    ]


def topic(n: int) -> str:
    return "telemetry.cpu" if n % 20 == 0 else "orders.created"


@pytest.fixture
def outbox_backlog(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn) as conn:
        for first in range(0, BACKLOG, 2000):
            with conn.transaction():
                outbox.write_many(
                    conn,
                    [
                        outbox.message(topic(n), {"n": n}, key=f"k{n % 500}")
                        for n in range(first, first + 2000)
                    ],
                )
        conn.execute("ANALYZE outboxkit.outbox_messages")
        conn.commit()
        yield conn


def test_relay_claim_and_settle_use_indexes(outbox_backlog: psycopg.Connection[Any]) -> None:
    conn, queries = outbox_backlog, relay_queries("outboxkit")
    ids = [r[0] for r in conn.execute("SELECT id FROM outboxkit.outbox_messages LIMIT 500")]
    claim = {"partitions": list(range(16)), "limit": 500, "at_most_once": []}
    assert seq_scans(conn, queries["claim"], claim) == []
    assert seq_scans(conn, queries["claim"], claim | {"partitions": [3]}) == []
    # The at-most-once claim selects by topic pattern, which no index can answer: its
    # selection may read the owned partitions (the price of configuring at_most_once, paid
    # once a cycle), but the delete itself must go by primary key, not scan once more.
    at_most_once = claim | {"at_most_once": ["telemetry.%"]}
    assert seq_scans(conn, queries["claim"], at_most_once) == []
    assert seq_scans(conn, queries["claim_at_most_once"], at_most_once) in ([], [OUTBOX])
    settle = {
        "acked_ids": ids[:400],
        "unblock_ids": ids[:10],
        "retry_ids": ids[400:450],
        "retry_errors": ["boom"] * 50,
        "retry_delays": [1.0] * 50,
        "dead_ids": ids[450:],
        "dead_errors": ["bad"] * 50,
    }
    assert seq_scans(conn, queries["settle"], settle) == []
    conn.rollback()


@pytest.fixture
def stored_inbox(dsn: str) -> Iterator[tuple[psycopg.Connection[Any], Inbox]]:
    ib = Inbox(consumer="plans")
    with psycopg.connect(dsn) as conn:
        for first in range(0, BACKLOG, 2000):
            messages = [
                outbox.message("orders.created", {"n": n}, key=f"k{n % 500}")
                for n in range(first, first + 2000)
            ]
            with conn.transaction():
                conn.execute(ib.queries["store"], ib.message_params(messages))
        # Half of them processed already, as in a running consumer.
        conn.execute(
            "UPDATE outboxkit.inbox_messages SET processed_at = now(), payload = NULL "
            "WHERE seq <= (SELECT min(seq) + %s FROM outboxkit.inbox_messages)",
            (BACKLOG // 2,),
        )
        conn.execute("ANALYZE outboxkit.inbox_messages")
        conn.commit()
        yield conn, ib


@pytest.fixture(params=["owner", "consumer role"])
def worker_conn(
    request: pytest.FixtureRequest,
    stored_inbox: tuple[psycopg.Connection[Any], Inbox],
    dsn: str,
    admin: psycopg.Connection[Any],
) -> Iterator[psycopg.Connection[Any]]:
    """The owner's connection, or a consumer login's: row-level security then adds its
    policy to every query, and the plans must still go by index."""
    owner, ib = stored_inbox
    if request.param == "owner":
        yield owner
        return
    worker = login(admin, dsn, role(dsn, "consumer"))
    act_as(admin, worker.name, ib.consumer)
    with psycopg.connect(worker.dsn) as conn:
        yield conn


def test_durable_worker_queries_use_indexes(
    stored_inbox: tuple[psycopg.Connection[Any], Inbox], worker_conn: psycopg.Connection[Any]
) -> None:
    ib, conn = stored_inbox[1], worker_conn
    seqs = [
        r[0]
        for r in conn.execute(
            "SELECT seq FROM outboxkit.inbox_messages WHERE processed_at IS NULL LIMIT 100"
        )
    ]
    assert len(seqs) == 100  # the consumer login sees its consumer's rows
    assert seq_scans(conn, ib.queries["claim"], {"consumer": "plans", "limit": 100}) == []
    processed = {"consumer": "plans", "seqs": seqs, "keep_payload": False}
    assert seq_scans(conn, ib.queries["mark_processed"], processed) == []
    failed = {"consumer": "plans", "seqs": seqs, "errors": ["e"] * 100, "delays": [1.0] * 100}
    assert seq_scans(conn, ib.queries["mark_failed"], failed) == []
    buried = ib.bury_params(stored=[(seq, "e") for seq in seqs])
    assert seq_scans(conn, ib.queries["bury"], buried) == []
    delivered = ib.bury_params(delivered=[(outbox.message("orders.created", {}), 5, "e")])
    assert seq_scans(conn, ib.queries["bury"], delivered) == []
    conn.rollback()
