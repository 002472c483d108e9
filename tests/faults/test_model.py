"""Scenario 20: a property-based model of outbox -> relay -> broker -> inbox.

In-process, against the real test database: Hypothesis drives random interleavings of
- producer transactions (random keys, some keyless) that commit or roll back;
- relay cycles (the real `relay.cycle.Cycle`) with a scripted broker that acks, fails
  retriably, rejects, or is unreachable, and with simulated crashes at every cycle step (an
  exception raised inside the claim transaction, or right after its commit, and the
  session thrown away, as a SIGKILL would);
- an operator retrying every dead letter;
- deliveries of anything the broker ever accepted (duplicates included) into a real `Inbox`
  on a real connection, some of them crashing before the commit (rolled back).

Invariants, checked after every step:
- no committed message is lost: each one is pending in the outbox, dead-lettered, or was
  acked by the broker;
- nothing of a rolled-back transaction was ever sent to the broker, or left in any table;
- per key, the broker's first acks follow the write order;
- at most one inbox effect per message.
At the end (teardown) the pipeline is drained (dead letters retried, the broker acking
everything, every accepted message delivered once more): every committed message has been
acked, in key order, and has exactly one effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from typing import Any, ClassVar

import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from outboxkit import outbox
from outboxkit.brokers.publishing import Outcome
from outboxkit.inbox import Inbox
from outboxkit.outbox.faults import CrashPoints
from outboxkit.outbox.message import Message
from outboxkit.relay.admin import retry_dead_letters
from outboxkit.relay.cycle import Cycle
from outboxkit.relay.metrics import RelayMetrics
from outboxkit.relay.queries import bound
from outboxkit.relay.settings import RelaySettings
from tests.faults.conftest import Report
from tests.support.publishers import RecordingPublisher

KEYS = ("a", "b", None)
CRASH_STEPS = ("after_claim", "after_publish", "before_commit", "after_commit")
OUTCOMES = ("ack", "retry", "reject", "unreachable")
PARTITIONS = list(range(16))
MODEL_EFFECTS = """
CREATE TABLE IF NOT EXISTS model_effects (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id uuid NOT NULL
)
"""

ib = Inbox(consumer="model")


@ib.handler("*")
def record_effect(tx: psycopg.Connection[Any], message: Message) -> None:
    tx.execute("INSERT INTO model_effects (message_id) VALUES (%s)", (message.message_id,))


class Crash(BaseException):
    """A simulated SIGKILL at a cycle step (a BaseException, like the real thing: nothing
    catches it on its way out of the claim transaction)."""


class ArmedCrash(CrashPoints):
    """Raises `Crash` the next time the armed step is reached."""

    def __init__(self) -> None:
        super().__init__(None)
        self.armed: str | None = None

    def reached(self, step: str) -> None:
        if step == self.armed:
            self.armed = None
            raise Crash(step)


class Totals:
    """Figures across every example, for the report."""

    examples = 0
    committed = 0
    rolled_back = 0
    crashes = 0
    cycles = 0
    deliveries = 0
    duplicates_acked = 0


class PipelineModel(RuleBasedStateMachine):
    dsn: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.conn = psycopg.connect(self.dsn)
        with self.conn.transaction():
            for table in (
                "outboxkit.outbox_messages",
                "outboxkit.outbox_dead_letters",
                "outboxkit.outbox_key_blocks",
                "outboxkit.inbox_messages",
                "outboxkit.inbox_dead_letters",
                "model_effects",
            ):
                self.conn.execute(f"DELETE FROM {table}")
        self.aconn = self._relay_connection()
        self.outcomes: itertools.cycle[str] = itertools.cycle(["ack"])
        self.publisher = RecordingPublisher(script=self._script)
        self.crash = ArmedCrash()
        self.settings = RelaySettings(
            dsn=self.dsn,
            broker_url="model://scripted",
            batch_size=4,
            max_attempts=3,
            backoff_base=0.001,
            backoff_max=0.002,
            relay_id="model",
        )
        self.cycle = Cycle(
            self.settings, bound("outboxkit"), self.publisher, RelayMetrics(), self.crash
        )
        self.order: dict[str, int] = {}  # committed message id -> its write position
        self.keys: dict[str, str | None] = {}
        self.rolled_back: set[str] = set()
        self.ever_dead: set[str] = set()
        self.position = itertools.count()
        Totals.examples += 1

    # -- rules ---------------------------------------------------------------------------

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=5), commit=st.booleans())
    def write(self, keys: list[str | None], commit: bool) -> None:
        written = []
        with contextlib.suppress(psycopg.Rollback), self.conn.transaction():
            for key in keys:
                message = outbox.write(self.conn, "model.event", {"key": key}, key=key)
                written.append((str(message.message_id), key))
            if not commit:
                raise psycopg.Rollback()
        for message_id, key in written:
            if commit:
                self.order[message_id] = next(self.position)
                self.keys[message_id] = key
            else:
                self.rolled_back.add(message_id)
        Totals.committed += len(written) if commit else 0
        Totals.rolled_back += 0 if commit else len(written)

    @rule(
        outcomes=st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=6),
        crash=st.none() | st.sampled_from(CRASH_STEPS),
    )
    def relay_cycle(self, outcomes: list[str], crash: str | None) -> None:
        self.outcomes = itertools.cycle(outcomes)
        self.crash.armed = crash
        self._run_cycle()

    @rule()
    def operator_retries_dead_letters(self) -> None:
        retry_dead_letters(self.dsn, all=True)

    @precondition(lambda self: bool(self.publisher.acked))
    @rule(
        deliveries=st.lists(
            st.tuples(st.integers(min_value=0), st.booleans()), min_size=1, max_size=5
        )
    )
    def deliver(self, deliveries: list[tuple[int, bool]]) -> None:
        """The broker delivers accepted messages (maybe again); for each, the consumer may
        crash before its inbox transaction commits."""
        for pick, crash in deliveries:
            message = self.publisher.acked[pick % len(self.publisher.acked)]
            Totals.deliveries += 1
            with contextlib.suppress(psycopg.Rollback), self.conn.transaction():
                ib.handle(self.conn, message)
                if crash:
                    raise psycopg.Rollback()

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def nothing_committed_is_lost(self) -> None:
        pending = self._ids("SELECT message_id FROM outboxkit.outbox_messages")
        dead = self._ids("SELECT message_id FROM outboxkit.outbox_dead_letters")
        self.ever_dead |= dead
        acked = {str(m.message_id) for m in self.publisher.acked}
        missing = set(self.order) - pending - dead - acked
        assert not missing, f"committed messages gone without an ack: {missing}"
        assert not (pending | dead) & self.rolled_back, "a rolled-back message was stored"

    @invariant()
    def rolled_back_never_sent(self) -> None:
        sent = {str(m.message_id) for m in self.publisher.attempts}
        assert not sent & self.rolled_back, "a rolled-back message reached the broker"

    @invariant()
    def first_acks_in_key_order(self) -> None:
        last: dict[str, int] = {}
        seen: set[str] = set()
        for message in self.publisher.acked:
            message_id = str(message.message_id)
            if message_id in seen or message.key is None:
                continue
            seen.add(message_id)
            position = self.order[message_id]
            assert position > last.get(message.key, -1), f"key {message.key} out of order"
            last[message.key] = position

    @invariant()
    def at_most_one_effect(self) -> None:
        with self.conn.transaction():
            doubled = self.conn.execute(
                "SELECT message_id FROM model_effects GROUP BY 1 HAVING count(*) > 1"
            ).fetchall()
        assert not doubled, f"handled twice: {doubled}"

    # -- the end: drain everything, then every message has been acked and handled once --

    def teardown(self) -> None:
        try:
            self._drain()
            acked = {str(m.message_id) for m in self.publisher.acked}
            assert set(self.order) <= acked, "committed messages never acked"
            for message in list(self.publisher.acked):
                with self.conn.transaction():
                    ib.handle(self.conn, message)
            effects = Counter(
                str(m) for (m,) in self.conn.execute("SELECT message_id FROM model_effects")
            )
            self.conn.commit()
            assert set(effects) == set(self.order), "effects differ from committed messages"
            assert set(effects.values()) <= {1}
            self.first_acks_in_key_order()
            Totals.duplicates_acked += len(self.publisher.acked) - len(acked)
        finally:
            self.loop.run_until_complete(self.aconn.close())
            self.loop.close()
            self.conn.close()

    def _drain(self) -> None:
        self.outcomes = itertools.cycle(["ack"])
        deadline = time.monotonic() + 30  # a hang guard
        while self._ids("SELECT message_id FROM outboxkit.outbox_messages") or self._ids(
            "SELECT message_id FROM outboxkit.outbox_dead_letters"
        ):
            assert time.monotonic() < deadline, "the outbox does not drain"
            self.operator_retries_dead_letters()
            self._run_cycle()
            time.sleep(0.003)  # past the (tiny) backoff of retried messages

    # -- helpers -------------------------------------------------------------------------

    def _script(self, message: Message) -> Outcome | None:
        outcome = next(self.outcomes)
        if outcome == "retry":
            return Outcome.retry("scripted transient failure")
        if outcome == "reject":
            return Outcome.reject("scripted permanent rejection")
        if outcome == "unreachable":
            return Outcome.unreachable("scripted outage")
        return None  # acked

    def _run_cycle(self) -> None:
        Totals.cycles += 1
        try:
            self.loop.run_until_complete(self.cycle.run(self.aconn, PARTITIONS))
        except Crash:
            Totals.crashes += 1
            # The process died: its session, transaction and row locks are gone.
            self.loop.run_until_complete(self.aconn.close())
            self.aconn = self._relay_connection()

    def _relay_connection(self) -> psycopg.AsyncConnection[Any]:
        return self.loop.run_until_complete(psycopg.AsyncConnection.connect(self.dsn))

    def _ids(self, query: str) -> set[str]:
        with self.conn.transaction():
            return {str(row[0]) for row in self.conn.execute(query).fetchall()}


def test_20_property_based_pipeline_model(dsn: str, report: Report) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(MODEL_EFFECTS)
    PipelineModel.dsn = dsn
    name = "property-based model (Hypothesis): writes, relay cycles, crashes, deliveries"
    started = time.monotonic()
    try:
        run_state_machine_as_test(
            PipelineModel,
            settings=settings(
                max_examples=40,
                stateful_step_count=30,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    except BaseException as exc:
        report(20, name, None, faults="-", outcome=f"fail: {type(exc).__name__}")
        raise
    report(
        20,
        name,
        None,
        messages=Totals.committed,
        faults=f"{Totals.examples} random histories: {Totals.cycles} relay cycles (scripted "
        f"acks/retries/rejections/outages), {Totals.crashes} simulated crashes, "
        f"{Totals.rolled_back} rolled-back writes, {Totals.duplicates_acked} duplicate broker "
        f"acks, {Totals.deliveries} deliveries ({time.monotonic() - started:.0f} s)",
    )
