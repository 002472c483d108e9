import psycopg

from outboxkit import outbox


def test_write_commits_with_the_business_transaction(
    conn: psycopg.Connection, admin: psycopg.Connection
) -> None:
    conn.execute("CREATE TABLE orders (id int)")
    conn.commit()
    with conn.transaction():
        conn.execute("INSERT INTO orders VALUES (1)")
        written = outbox.write(conn, "order.created", {"id": 1}, key="order-1")
    row = admin.execute(
        "SELECT topic, key, payload FROM outboxkit.outbox_messages WHERE message_id = %s",
        (written.message_id,),
    ).fetchone()
    assert row == ("order.created", "order-1", b'{"id":1}')
