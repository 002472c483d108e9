"""`outboxkit dead-letters list|retry|purge`, outbox side and `--inbox` side, as a subprocess.

Each case runs one command line against the same seeded rows, then reads every table back:
exactly the rows the filters name changed, in the way the verb says, and nothing else.
The same message id is dead in the outbox and in two consumers' inboxes, so a verb that
acts on the wrong side or the wrong consumer shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]

# message -> (topic, key); where each one is dead: the outbox and/or some consumers.
MESSAGES = {
    "m1": ("orders.created", "k1"),
    "m2": ("orders.paid", "k1"),
    "m3": ("orders.created", "k2"),
    "m4": ("billing.invoiced", None),
    "m5": ("orders.paid", "k2"),
}
OUTBOX_DEAD = ["m1", "m2", "m3", "m4"]
INBOX_DEAD = {"billing": ["m1", "m2", "m4", "m5"], "shipping": ["m1", "m3", "m4"]}
IDS = {name: uuid.uuid5(uuid.NAMESPACE_URL, f"outboxkit-test:{name}") for name in MESSAGES}
LABELS = {str(message_id): name for name, message_id in IDS.items()}

ALL_OUTBOX = frozenset(f"outbox:{m}" for m in OUTBOX_DEAD)
ALL_INBOX = frozenset(f"{c}:{m}" for c, names in INBOX_DEAD.items() for m in names)


def inbox(consumer: str | None = None, *names: str) -> frozenset[str]:
    """Labels of inbox dead letters: of `consumer` (all if None), only `names` if given."""
    return frozenset(
        label
        for label in ALL_INBOX
        if (consumer is None or label.startswith(f"{consumer}:"))
        and (not names or label.split(":")[1] in names)
    )


def outbox(*names: str) -> frozenset[str]:
    return frozenset(f"outbox:{m}" for m in names)


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    selected: frozenset[str]  # the dead letters the command reports and acts on
    refused: str | None = None  # exit code 2 with this in the one error line

    @property
    def changes(self) -> bool:
        return self.refused is None and self.args[0] != "list" and "--dry-run" not in self.args


def case(line: str, selected: frozenset[str] = frozenset(), refused: str | None = None) -> Any:
    args = tuple(IDS[word[1:]].hex if word.startswith("@") else word for word in line.split())
    return pytest.param(Case(args, selected, refused), id=line)


CASES = [
    # The relay's dead letters.
    case("list", ALL_OUTBOX),
    case("list --id @m1", outbox("m1")),
    case("list --topic orders.*", outbox("m1", "m2", "m3")),
    case("list --key k1", outbox("m1", "m2")),
    case("retry --id @m2", outbox("m2")),
    case("retry --topic orders.created", outbox("m1", "m3")),
    case("retry --key k2", outbox("m3")),
    case("retry --all", ALL_OUTBOX),
    case("retry --all --dry-run", ALL_OUTBOX),
    case("purge --id @m1 --id @m4", outbox("m1", "m4")),
    case("purge --topic billing.*", outbox("m4")),
    case("purge --key k1 --topic orders.paid", outbox("m2")),
    case("purge --all", ALL_OUTBOX),
    case("purge --key k1 --dry-run", outbox("m1", "m2")),
    # The consumers' inbox dead letters.
    case("list --inbox", ALL_INBOX),
    case("list --inbox --consumer billing", inbox("billing")),
    case("list --inbox --consumer shipping --key k1", inbox("shipping", "m1")),
    case("list --inbox --id @m1", inbox(None, "m1")),
    case("retry --inbox --consumer billing --id @m1", inbox("billing", "m1")),
    case("retry --inbox --consumer shipping --topic orders.*", inbox("shipping", "m1", "m3")),
    case("retry --inbox --key k2", inbox(None, "m3", "m5")),
    case("retry --inbox --consumer billing --all", inbox("billing")),
    case("retry --inbox --all --dry-run", ALL_INBOX),
    case("purge --inbox --consumer billing --all", inbox("billing")),
    case("purge --inbox --id @m4", inbox(None, "m4")),
    case("purge --inbox --consumer shipping --topic billing.*", inbox("shipping", "m4")),
    case("purge --inbox --consumer billing --key k1 --dry-run", inbox("billing", "m1", "m2")),
    case("purge --inbox --all", ALL_INBOX),
    # Refused: nothing changes anywhere.
    case("purge --consumer billing --all", refused="add --inbox"),
    case("list --consumer billing", refused="add --inbox"),
    case("retry", refused="name what to act on"),
    case("purge --inbox", refused="name what to act on"),
]


@pytest.mark.parametrize("given", CASES)
def test_dead_letter_verbs_change_exactly_the_named_rows(given: Case, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed(conn)
        before = snapshot(conn)

    result = run_cli("dead-letters", *given.args, "--dsn", dsn, "--json")

    with psycopg.connect(dsn, autocommit=True) as conn:
        after = snapshot(conn)
    if given.refused is not None:
        assert result.returncode == 2, result.stderr
        assert result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith("outboxkit: error: ") and given.refused in line
        assert after == before
        return
    assert result.returncode == 0, result.stderr
    assert reported(json.loads(result.stdout)) == given.selected
    assert after == expected(before, given)


def expected(before: dict[str, frozenset[str]], given: Case) -> dict[str, frozenset[str]]:
    if not given.changes:
        return before
    after = dict(before)
    side = "inbox" if "--inbox" in given.args else "outbox"
    after[f"{side}_dead_letters"] = before[f"{side}_dead_letters"] - given.selected
    if given.args[0] == "retry":  # back where they came from, as pending work
        after[f"{side}_messages"] = before[f"{side}_messages"] | given.selected
    return after


def reported(rows: list[dict[str, Any]]) -> frozenset[str]:
    return frozenset(f"{row.get('consumer', 'outbox')}:{LABELS[row['message_id']]}" for row in rows)


# -- the rows ---------------------------------------------------------------------------------


def seed(conn: psycopg.Connection[Any]) -> None:
    # Unrelated pending work on both sides, which no verb may touch.
    conn.execute(
        "INSERT INTO outboxkit.outbox_messages (message_id, topic, key, partition, payload,"
        " content_type) SELECT gen_random_uuid(), 'orders.created', 'k1',"
        " (hashtext('k1') & 2147483647) % partitions, '\\x7b7d', 'application/json'"
        " FROM outboxkit.outbox_settings"
    )
    conn.execute(
        "INSERT INTO outboxkit.inbox_messages (consumer, message_id, topic, key)"
        " VALUES ('billing', gen_random_uuid(), 'orders.created', 'k1')"
    )
    for n, name in enumerate(OUTBOX_DEAD, start=1001):
        topic, key = MESSAGES[name]
        conn.execute(
            "INSERT INTO outboxkit.outbox_dead_letters (id, message_id, topic, key, partition,"
            " payload, content_type, headers, created_at, attempts, last_error)"
            " SELECT %s, %s, %s, %s,"
            " (hashtext(coalesce(%s, %s::text)) & 2147483647) %% partitions,"
            " '\\x7b7d', 'application/json', '{}', now(), 10, 'broker said no'"
            " FROM outboxkit.outbox_settings",
            (n, IDS[name], topic, key, key, IDS[name]),
        )
    for consumer, names in INBOX_DEAD.items():
        for name in names:
            topic, key = MESSAGES[name]
            conn.execute(
                "INSERT INTO outboxkit.inbox_dead_letters (consumer, message_id, topic, key,"
                " payload, content_type, headers, received_at, attempts, last_error)"
                " VALUES (%s, %s, %s, %s, '\\x7b7d', 'application/json', '{}', now(), 5,"
                " 'handler failed')",
                (consumer, IDS[name], topic, key),
            )


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, frozenset[str]]:
    """Every row of the four tables, as labels (`outbox:m1`, `billing:m1`, …)."""

    def labels(query: str) -> frozenset[str]:
        return frozenset(
            f"{owner}:{LABELS.get(str(message_id), str(message_id))}"
            for owner, message_id in conn.execute(query)
        )

    return {
        "outbox_dead_letters": labels(
            "SELECT 'outbox', message_id FROM outboxkit.outbox_dead_letters"
        ),
        "outbox_messages": labels("SELECT 'outbox', message_id FROM outboxkit.outbox_messages"),
        "inbox_dead_letters": labels(
            "SELECT consumer, message_id FROM outboxkit.inbox_dead_letters"
        ),
        # A retried inbox row is pending again: unprocessed, no attempts.
        "inbox_messages": labels(
            "SELECT consumer, message_id FROM outboxkit.inbox_messages"
            " WHERE processed_at IS NULL AND attempts = 0"
        ),
    }


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOXKIT_")}
    return subprocess.run(
        [sys.executable, "-m", "outboxkit.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
