"""Each schema's roles are enough to write, relay, consume and administer, and no more.

Every test connects as a real LOGIN role that is a member of one role (see
tests/support/logins.py), so the server checks its privileges and row-level policies.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.errors import CheckViolation, InsufficientPrivilege

from outboxkit import migrations, outbox
from outboxkit.brokers.publishing import Outcome
from outboxkit.cli import main as cli
from outboxkit.devservers import PostgresServer
from outboxkit.inbox import ConsumerSettings, Inbox, Mode, prune
from outboxkit.inbox import admin as inbox_admin
from outboxkit.inbox.slots import Slot
from outboxkit.outbox.building import MAX_DELAY
from outboxkit.outbox.message import Message
from outboxkit.relay import Relay, RelaySettings
from outboxkit.relay import admin as relay_admin
from outboxkit.relay.semantics import TopicSemantics
from tests.conftest import Database, new_database
from tests.support.logins import Login, act_as, login, role
from tests.support.publishers import RecordingPublisher
from tests.support.waiting import eventually

Admin = psycopg.Connection[Any]
MESSAGES = "outboxkit.outbox_messages"


@pytest.fixture
def writer(admin: Admin, dsn: str) -> Login:
    return login(admin, dsn, role(dsn, "writer"))


@pytest.fixture
def relay_login(admin: Admin, dsn: str) -> Login:
    return login(admin, dsn, role(dsn, "relay"))


def insert(conn: psycopg.Connection[Any], columns: str, values: str) -> None:
    """A raw insert of one outbox row: what a writer could try beyond `outbox.write`."""
    conn.execute(
        f"INSERT INTO {MESSAGES} (message_id, topic, key, payload, content_type, {columns}) "
        f"VALUES (gen_random_uuid(), 't', 'k', '', 'x', {values})"
    )


def right_partition(conn: psycopg.Connection[Any], key: str) -> int:
    row = conn.execute(
        "SELECT (hashtext(%s) & 2147483647) %% partitions FROM outboxkit.outbox_settings", (key,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def denied(dsn: str, statement: str, *, error: type[Exception] = InsufficientPrivilege) -> None:
    with psycopg.connect(dsn) as conn, pytest.raises(error):
        conn.execute(statement)


# -- writer ------------------------------------------------------------------------------------


async def test_writer_writes_through_the_api(writer: Login) -> None:
    with psycopg.connect(writer.dsn) as conn:
        written = outbox.write(conn, "order.created", {"id": 1}, key="k")
        delayed = outbox.write_many(
            conn,
            [outbox.message("order.later", n, key="k", delay=MAX_DELAY) for n in range(3)],
        )
        conn.commit()
    async with await psycopg.AsyncConnection.connect(writer.dsn) as aconn:
        await outbox.awrite(aconn, "order.created", {"id": 2}, delay=timedelta(minutes=5))
        await aconn.commit()
    assert written.created_at is not None
    assert delayed[0].available_at is not None and delayed[0].created_at is not None
    assert delayed[0].available_at - delayed[0].created_at == MAX_DELAY
    denied(writer.dsn, f"SELECT payload FROM {MESSAGES}")


def test_writer_cannot_update_or_delete(writer: Login) -> None:
    denied(writer.dsn, f"UPDATE {MESSAGES} SET topic = 'x'")
    denied(writer.dsn, f"UPDATE {MESSAGES} SET available_at = 'infinity'")
    denied(writer.dsn, f"DELETE FROM {MESSAGES}")
    denied(writer.dsn, "DELETE FROM outboxkit.outbox_dead_letters")
    denied(writer.dsn, "UPDATE outboxkit.outbox_settings SET partitions = 1")


@pytest.mark.parametrize(
    ("columns", "values"),
    [
        ("partition, created_at", "0, '2000-01-01'"),
        ("partition, created_at", "0, 'infinity'"),
        ("partition, attempts", "0, -5"),
        ("partition, last_error", "0, 'forged'"),
    ],
)
def test_writer_cannot_set_database_columns(writer: Login, columns: str, values: str) -> None:
    with psycopg.connect(writer.dsn) as conn, pytest.raises(InsufficientPrivilege):
        insert(conn, columns, values)


def test_writer_cannot_choose_the_partition(writer: Login, conn: psycopg.Connection[Any]) -> None:
    right = right_partition(conn, "k")
    with psycopg.connect(writer.dsn) as wconn:
        for wrong in ((right + 1) % 16, 999, -1):
            with pytest.raises(CheckViolation, match="partition of its key"):
                insert(wconn, "partition", str(wrong))
            wconn.rollback()
        # no other statement gets around it: COPY and MERGE insert through the same check
        with pytest.raises(CheckViolation):
            copy = f"COPY {MESSAGES} (message_id, topic, key, partition, payload, content_type)"
            with wconn.cursor().copy(copy + " FROM STDIN") as stream:
                stream.write_row((uuid.uuid4(), "t", "k", (right + 1) % 16, b"", "x"))
        wconn.rollback()
        with pytest.raises(CheckViolation):
            wconn.execute(
                f"MERGE INTO {MESSAGES} AS m USING (SELECT gen_random_uuid() AS id) AS s "
                "ON m.message_id = s.id WHEN NOT MATCHED THEN INSERT "
                "(message_id, topic, key, partition, payload, content_type) "
                f"VALUES (s.id, 't', 'k', {(right + 1) % 16}, '', 'x')"
            )
        wconn.rollback()
        insert(wconn, "partition", str(right))  # the right one is accepted
        wconn.commit()


def test_writer_cannot_shadow_the_settings_the_check_reads(
    writer: Login, conn: psycopg.Connection[Any]
) -> None:
    """With one partition in a settings table of its own, partition 0 would pass."""
    assert right_partition(conn, "k") != 0
    with psycopg.connect(writer.dsn) as wconn:
        wconn.execute("CREATE TEMP TABLE outbox_settings (partitions int)")
        wconn.execute("INSERT INTO outbox_settings VALUES (1)")
        wconn.execute("SET search_path = pg_temp, outboxkit, public")
        with pytest.raises(CheckViolation):
            insert(wconn, "partition", "0")


@pytest.mark.parametrize(
    "available_at", ["'infinity'", "now() + interval '365 days 1 second'", "'9999-01-01'"]
)
def test_writer_cannot_park_a_message_forever(
    writer: Login, conn: psycopg.Connection[Any], available_at: str
) -> None:
    right = right_partition(conn, "k")
    with psycopg.connect(writer.dsn) as wconn, pytest.raises(CheckViolation, match="365 days"):
        insert(wconn, "partition, available_at", f"{right}, {available_at}")


# -- relay -------------------------------------------------------------------------------------


async def test_relay_role_relays_retries_and_dead_letters(dsn: str, relay_login: Login) -> None:
    """Every fifth message is poison (keyless but the last, which parks its key); the one
    after each fails once first; telemetry goes at most once."""
    tried: set[int] = set()

    def script(message: Message) -> Outcome | None:
        if message.topic != "t":
            return None
        n = int(message.payload)
        if n % 5 == 0:
            return Outcome.reject("poison")
        if n % 5 == 1 and n not in tried:
            tried.add(n)
            return Outcome.retry("flaky broker")
        return None

    with psycopg.connect(dsn) as conn:
        outbox.write_many(
            conn,
            [
                outbox.message(
                    "t", n, key="poison" if n == 20 else None if n % 5 == 0 else f"k{n % 3}"
                )
                for n in range(1, 21)
            ]
            + [outbox.message("telemetry.cpu", 100 + n) for n in range(3)],
        )
    publisher = RecordingPublisher(script=script)
    relay = Relay(
        RelaySettings(
            dsn=relay_login.dsn,
            broker_url="test://",
            poll_interval=0.05,
            backoff_base=0.01,
            backoff_max=0.05,
            heartbeat_interval=0.05,
            semantics=TopicSemantics.parse("telemetry.*=at_most_once"),
        ),
        publisher=publisher,
    )
    await relay.start()
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: _value(len(publisher.acked) == 19))
        await eventually(lambda: _value(heartbeat_renewed(dsn)))  # the upsert's UPDATE branch
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)
    assert len(tried) == 4  # the backoff path (UPDATE attempts, last_error, available_at) ran
    assert sorted(d.topic for d in relay_admin.find_dead_letters(dsn)) == ["t"] * 4
    status = relay_admin.status(relay_login.dsn)  # `outboxkit status` runs as the relay too
    assert (sum(status.dead_letters.values()), status.blocked_keys) == (4, {"dead_letter": 1})


def heartbeat_renewed(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT bool_or(heartbeat_at > started_at) FROM outboxkit.outbox_relays"
        ).fetchone()
        return bool(row and row[0])


@pytest.mark.parametrize(
    "assignment",
    [
        "payload = 'evil'",
        "topic = 'evil'",
        "key = 'evil'",
        "message_id = gen_random_uuid()",
        "headers = '{}'",
        "content_type = 'x'",
        "partition = 0",
        "created_at = now()",
    ],
)
def test_relay_cannot_change_message_content(
    relay_login: Login, conn: psycopg.Connection[Any], assignment: str
) -> None:
    outbox.write(conn, "t", {"n": 1}, key="k")
    conn.commit()
    denied(relay_login.dsn, f"UPDATE {MESSAGES} SET {assignment}")


def test_relay_has_nothing_else(relay_login: Login, admin: Admin) -> None:
    admin.execute("CREATE TABLE secrets (x int)")
    denied(relay_login.dsn, "SELECT * FROM secrets")
    denied(
        relay_login.dsn,
        f"INSERT INTO {MESSAGES} (message_id, topic, partition, payload, content_type)"
        " VALUES (gen_random_uuid(), 't', 0, '', 'x')",
    )
    denied(relay_login.dsn, "SELECT * FROM outboxkit.inbox_messages")
    denied(relay_login.dsn, "UPDATE outboxkit.outbox_dead_letters SET payload = ''")
    denied(relay_login.dsn, "UPDATE outboxkit.outbox_settings SET partitions = 1")


# -- consumer ----------------------------------------------------------------------------------


@pytest.fixture
def billing(admin: Admin, dsn: str) -> Login:
    """A consumer login acting as consumer "billing", through a group role it belongs to."""
    group = f"billing_service_{uuid.uuid4().hex[:8]}"
    admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(group)))
    act_as(admin, group, "billing")
    return login(admin, dsn, role(dsn, "consumer"), group)


@pytest.fixture
def shipping_rows(admin: Admin) -> Iterator[None]:
    """Another consumer's inbox row and dead letter."""
    admin.execute(
        "INSERT INTO outboxkit.inbox_messages (consumer, message_id, topic, payload, processed_at)"
        " VALUES ('shipping', gen_random_uuid(), 't', 'secret', now() - interval '2 days')"
    )
    admin.execute(
        "INSERT INTO outboxkit.inbox_dead_letters"
        " (consumer, message_id, topic, payload, received_at, attempts, last_error)"
        " VALUES ('shipping', gen_random_uuid(), 't', 'secret', now(), 1, 'e')"
    )
    yield
    count = "SELECT count(*) FROM outboxkit.{} WHERE consumer = 'shipping'"
    for table in ("inbox_messages", "inbox_dead_letters"):
        assert admin.execute(count.format(table)).fetchone() == (1,), "changed by billing"


def anything(consumer: str) -> Inbox:
    """An inbox whose handler accepts every topic and does nothing."""
    ib = Inbox(consumer=consumer)
    ib.handler("*")(lambda tx, message: None)
    return ib


def consumer_settings(dsn: str, **overrides: Any) -> ConsumerSettings:
    base: dict[str, Any] = {
        "dsn": dsn,
        "broker_url": dsn,
        "mode": Mode.DURABLE,
        "max_attempts": 1,
        "prune_interval": 0,
    }
    return ConsumerSettings(**(base | overrides))


@pytest.mark.usefixtures("shipping_rows")
def test_consumer_cannot_touch_another_consumers_rows(billing: Login) -> None:
    with psycopg.connect(billing.dsn, autocommit=True) as conn:
        for table in ("inbox_messages", "inbox_dead_letters"):
            assert conn.execute(f"SELECT count(*) FROM outboxkit.{table}").fetchone() == (0,)
        deleted = conn.execute("DELETE FROM outboxkit.inbox_messages WHERE consumer = 'shipping'")
        assert deleted.rowcount == 0
        updated = conn.execute("UPDATE outboxkit.inbox_messages SET processed_at = now()")
        assert updated.rowcount == 0
        mapping = conn.execute("SELECT consumer FROM outboxkit.inbox_consumer_roles")
        assert mapping.fetchall() == [("billing",)]
    for statement in (
        "DELETE FROM outboxkit.inbox_dead_letters",  # dead letters are the admin's to remove
        "INSERT INTO outboxkit.inbox_messages (consumer, message_id, topic)"
        " VALUES ('shipping', gen_random_uuid(), 't')",
        "INSERT INTO outboxkit.inbox_dead_letters"
        " (consumer, message_id, topic, received_at, attempts, last_error)"
        " VALUES ('shipping', gen_random_uuid(), 't', now(), 1, 'e')",
        "INSERT INTO outboxkit.inbox_consumer_roles VALUES ('me', 'shipping')",
    ):
        denied(billing.dsn, statement)
    # and it cannot act as "shipping" through the library either
    with psycopg.connect(billing.dsn) as conn, pytest.raises(InsufficientPrivilege):
        anything("shipping").handle(conn, outbox.message("t", {}))


@pytest.mark.usefixtures("shipping_rows")
async def test_consumer_consumes_chains_dead_letters_and_prunes_its_own(billing: Login) -> None:
    ib = Inbox(consumer="billing")

    @ib.handler("order.created")
    def chain(tx: psycopg.Connection[Any], message: Message) -> None:
        if message.json()["id"] == 0:
            raise ValueError("poison")
        outbox.write(tx, "invoice.created", message.json())

    message = outbox.message("order.created", {"id": 1})
    with psycopg.connect(billing.dsn) as conn:
        with conn.transaction():
            assert ib.handle(conn, message)
        with conn.transaction():
            assert not ib.handle(conn, message)

    slot = Slot(ib, consumer_settings(billing.dsn))
    try:
        stored = [outbox.message("order.created", {"id": n}) for n in (0, 2, 3)]
        await slot.store(stored)
        result = await slot.process_stored()
        assert (len(result.done), len(result.dead)) == (2, 1)  # bury: its own
        await slot.bury(outbox.message("order.created", {"id": 9}), 5, "gave up")
        await slot.handle_many([outbox.message("order.created", {"id": n}) for n in (4, 5)])
    finally:
        await slot.reset()

    with psycopg.connect(billing.dsn) as conn:
        dead = conn.execute("SELECT count(*) FROM outboxkit.inbox_dead_letters").fetchone()
        assert dead == (2,)
        conn.execute("UPDATE outboxkit.inbox_messages SET processed_at = now() - interval '1d'")
        conn.commit()
    # consumer=None: every consumer's rows, but the policy keeps "shipping"'s out of reach
    assert await prune(billing.dsn, older_than=3600) == 7


def test_consumer_without_a_mapping_sees_nothing(admin: Admin, dsn: str) -> None:
    lost = login(admin, dsn, role(dsn, "consumer"))
    admin.execute(
        "INSERT INTO outboxkit.inbox_messages (consumer, message_id, topic)"
        " VALUES ('billing', gen_random_uuid(), 't')"
    )
    with psycopg.connect(lost.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM outboxkit.inbox_messages").fetchone() == (0,)
        with pytest.raises(InsufficientPrivilege):
            anything("billing").handle(conn, outbox.message("t", {}))


# -- admin -------------------------------------------------------------------------------------


async def test_admin_role_runs_status_and_dead_letters(
    admin: Admin, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    operator = login(admin, dsn, role(dsn, "admin"))
    with psycopg.connect(dsn) as conn:
        outbox.write_many(conn, [outbox.message("t", n, key=f"k{n}") for n in range(4)])
    publisher = RecordingPublisher(script=lambda m: Outcome.reject("poison"))
    relay = Relay(
        RelaySettings(dsn=dsn, broker_url="test://", poll_interval=0.05), publisher=publisher
    )
    await relay.start()
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: _value(len(relay_admin.find_dead_letters(dsn)) == 4))
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)
    for consumer in ("billing", "shipping"):
        admin.execute(
            "INSERT INTO outboxkit.inbox_dead_letters"
            " (consumer, message_id, topic, payload, received_at, attempts, last_error)"
            " VALUES (%s, gen_random_uuid(), 't', '', now(), 1, 'e')",
            (consumer,),
        )

    assert cli(["status", "--dsn", operator.dsn]) == 0
    assert "dead letters: 4" in capsys.readouterr().out
    assert cli(["dead-letters", "retry", "--dsn", operator.dsn, "--key", "k1"]) == 0
    assert cli(["dead-letters", "purge", "--dsn", operator.dsn, "--key", "k2"]) == 0
    assert "1 dead letter(s) purged" in capsys.readouterr().out
    assert len(relay_admin.find_dead_letters(operator.dsn)) == 2
    assert relay_admin.status(operator.dsn).pending == 1  # back in the outbox, in its partition

    assert len(inbox_admin.find_dead_letters(operator.dsn)) == 2  # every consumer's
    assert len(inbox_admin.retry_dead_letters(operator.dsn, consumer="billing")) == 1
    assert len(inbox_admin.purge_dead_letters(operator.dsn, consumer="shipping")) == 1
    assert inbox_admin.find_dead_letters(operator.dsn) == []
    admin.execute(
        "INSERT INTO outboxkit.inbox_messages (consumer, message_id, topic, processed_at)"
        " VALUES ('shipping', gen_random_uuid(), 't', now() - interval '2 days')"
    )
    assert await prune(operator.dsn, older_than=3600) == 1  # `outboxkit inbox prune`

    denied(operator.dsn, "UPDATE outboxkit.outbox_settings SET partitions = 1")
    denied(operator.dsn, f"UPDATE {MESSAGES} SET payload = ''")
    denied(operator.dsn, "INSERT INTO outboxkit.inbox_consumer_roles VALUES ('me', 'billing')")


# -- isolation: per schema, per database, and the old cluster-wide roles ------------------------


def test_roles_of_one_schema_have_no_access_to_another(admin: Admin, dsn: str) -> None:
    migrations.apply(dsn, "tenant_b")
    ours = migrations.role_names(dsn, migrations.DEFAULT_SCHEMA)
    theirs = migrations.role_names(dsn, "tenant_b")
    assert set(ours.values()).isdisjoint(theirs.values())
    for kind, name in ours.items():
        member = login(admin, dsn, name)
        for table in ("outbox_messages", "inbox_messages", "outbox_settings"):
            denied(member.dsn, f"SELECT * FROM tenant_b.{table}")
        if kind in ("writer", "consumer"):
            with psycopg.connect(member.dsn) as conn, pytest.raises(InsufficientPrivilege):
                outbox.Outbox(schema="tenant_b").write(conn, "t", {})


def test_two_databases_with_the_same_schema_share_no_roles(db: Database, admin: Admin) -> None:
    for other in new_database(db.server, None):
        migrations.apply(other.dsn)
        ours = migrations.role_names(db.dsn, "outboxkit")
        theirs = migrations.role_names(other.dsn, "outboxkit")
        assert set(ours.values()).isdisjoint(theirs.values())
        assert theirs["writer"] == f"{other.name}_outboxkit_writer"
        stranger = login(admin, db.dsn, ours["writer"])
        elsewhere = stranger.dsn.replace(db.name, other.name)
        with psycopg.connect(elsewhere) as conn, pytest.raises(InsufficientPrivilege):
            outbox.write(conn, "t", {})


def test_upgrade_from_the_cluster_wide_roles(empty_db: Database) -> None:
    """0003's roles lose this schema in 0005; the new role is what the login needs."""
    with psycopg.connect(empty_db.dsn, autocommit=True) as owner:
        migrations.apply(empty_db.dsn, target=3)
        legacy = login(owner, empty_db.dsn, "outboxkit_writer")
        with psycopg.connect(legacy.dsn) as conn:
            outbox.write(conn, "t", {})
            conn.commit()

        migrations.apply(empty_db.dsn)
        with psycopg.connect(legacy.dsn) as conn, pytest.raises(InsufficientPrivilege):
            outbox.write(conn, "t", {})
        for old in ("outboxkit_relay", "outboxkit_consumer"):
            denied(login(owner, empty_db.dsn, old).dsn, f"SELECT message_id FROM {MESSAGES}")

        # the documented upgrade: grant the schema's new role to the login
        owner.execute(
            sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(role(empty_db.dsn, "writer")), sql.Identifier(legacy.name)
            )
        )
        with psycopg.connect(legacy.dsn) as conn:
            outbox.write(conn, "t", {})
            conn.commit()


def test_without_createrole_a_dba_creates_the_roles_and_the_owner_grants(
    pg_server: PostgresServer,
) -> None:
    dbname = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as server:
        owner = login(server, pg_server.dsn())  # owns the database; no CREATEROLE
        server.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(dbname), sql.Identifier(owner.name)
            )
        )
        owner_dsn = owner.dsn.replace("/postgres", f"/{dbname}")
        try:
            migrations.apply(owner_dsn)
            names = migrations.role_names(owner_dsn, "outboxkit")
            created = server.execute(
                "SELECT count(*) FROM pg_roles WHERE rolname = ANY (%s)", (list(names.values()),)
            ).fetchone()
            assert created == (0,)  # recorded, not created: the migration went through
            for name in names.values():
                server.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
            with psycopg.connect(owner_dsn, autocommit=True) as conn:
                conn.execute("SELECT outboxkit.outboxkit_grant_roles()")
            writer = login(server, owner_dsn, names["writer"])
            with psycopg.connect(writer.dsn) as conn:
                outbox.write(conn, "t", {})
                conn.commit()
        finally:
            server.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(dbname)))


@pytest.mark.parametrize(
    ("dbname", "prefix", "expected"),
    [
        ("orders", "shop", "shop_writer"),
        ("orders", None, "orders_outboxkit_writer"),
        ("d" * 60, None, "d" * 45 + "_"),  # shortened, then a hash: still unique per database
    ],
)
def test_role_names_fit_and_follow_the_prefix(
    pg_server: PostgresServer, dbname: str, prefix: str | None, expected: str
) -> None:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as server:
        server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        try:
            chosen = ["--role-prefix", prefix] if prefix else []
            assert cli(["migrate", "--dsn", pg_server.dsn(dbname), *chosen]) == 0
            names = migrations.role_names(pg_server.dsn(dbname), "outboxkit")
        finally:
            server.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(dbname)))
    assert names["writer"].startswith(expected)
    assert all(len(name.encode()) <= 63 for name in names.values())
    assert len(set(names.values())) == 4


def test_rendered_sql_takes_the_role_prefix(empty_db: Database) -> None:
    prefix = f"sql_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(empty_db.dsn, autocommit=True) as conn:
        conn.execute(migrations.render_sql(role_prefix=prefix).encode())
    assert migrations.role_names(empty_db.dsn, "outboxkit")["relay"] == f"{prefix}_relay"


@pytest.mark.parametrize("prefix", ["", "x" * 55, "pg_mine", "a\x00b"])
def test_invalid_role_prefix_is_refused(empty_db: Database, prefix: str) -> None:
    with pytest.raises(outbox.ConfigurationError, match="role prefix"):
        migrations.apply(empty_db.dsn, role_prefix=prefix)
    assert migrations.status(empty_db.dsn)[0].applied_at is None


async def _value(flag: bool) -> bool:
    return flag
