-- The inbox's SQL. `{table}` placeholders are bound to the schema with sql.Identifier;
-- `%%` is a literal percent sign.

-- name: record
-- Idempotent mode: the dedup row, written in the handler's transaction. No row back means
-- the message was handled before (or is being handled right now by a concurrent delivery,
-- whose commit this statement waits for).
INSERT INTO {inbox_messages} (consumer, message_id, topic, key, processed_at)
VALUES (%(consumer)s, %(message_id)s, %(topic)s, %(key)s, now())
ON CONFLICT (consumer, message_id) DO NOTHING
RETURNING seq

-- name: record_many
-- Idempotent mode, a whole batch at once: the dedup rows of the messages not seen before
-- come back (a message twice in one batch is recorded once).
INSERT INTO {inbox_messages} (consumer, message_id, topic, key, processed_at)
SELECT %(consumer)s, m.message_id, m.topic, m.key, now()
FROM unnest(%(message_ids)s::uuid[], %(topics)s::text[], %(keys)s::text[])
     AS m(message_id, topic, key)
ON CONFLICT (consumer, message_id) DO NOTHING
RETURNING message_id

-- name: lock_messages
-- A batch transaction takes its messages' transaction-scoped advisory locks first, all of
-- them, in one global order (the key's value), before it writes any dedup row. Two batches
-- holding the same messages (duplicate deliveries to concurrent fetchers or processes) then
-- queue for each other instead of deadlocking: their dedup INSERTs would otherwise wait on
-- each other's uncommitted rows in whatever order the broker delivered them. The subquery's
-- ORDER BY is kept (a sorted subquery is never flattened), so the locks are taken in order.
SELECT count(*) FROM (
    SELECT pg_advisory_xact_lock(ordered.k)
    FROM (
        SELECT DISTINCT hashtextextended(
                   %(lock_space)s::text || ':' || %(consumer)s::text || ':' || id::text, 0) AS k
        FROM unnest(%(message_ids)s::uuid[]) AS id
        ORDER BY k
    ) AS ordered
) AS locked

-- name: claim
-- Durable worker: the oldest unprocessed message of each key (keyless ones freely), that no
-- other worker holds. A key's next message becomes claimable once its head is processed.
SELECT m.seq, m.message_id, m.topic, m.key, m.payload, m.content_type, m.headers,
       m.received_at, m.attempts
FROM {inbox_messages} AS m
WHERE m.consumer = %(consumer)s
  AND m.processed_at IS NULL
  AND m.available_at <= now()
  AND (m.key IS NULL OR NOT EXISTS (
        SELECT 1 FROM {inbox_messages} AS e
        WHERE e.consumer = m.consumer AND e.key = m.key
          AND e.processed_at IS NULL AND e.seq < m.seq))
ORDER BY m.seq
LIMIT %(limit)s
FOR UPDATE OF m SKIP LOCKED

-- name: mark_processed
UPDATE {inbox_messages}
SET processed_at = now(), last_error = NULL,
    payload = CASE WHEN %(keep_payload)s THEN payload END
WHERE consumer = %(consumer)s AND seq = ANY (%(seqs)s::bigint[]) AND processed_at IS NULL

-- name: mark_failed
UPDATE {inbox_messages} AS m
SET attempts = m.attempts + 1, last_error = f.error,
    available_at = now() + f.delay * interval '1 second'
FROM unnest(%(seqs)s::bigint[], %(errors)s::text[], %(delays)s::float8[]) AS f(seq, error, delay)
WHERE m.consumer = %(consumer)s AND m.seq = f.seq AND m.processed_at IS NULL

-- name: bury
-- Dead letters that keep their dedup keys, so that a redelivery is still recognised: stored
-- rows out of attempts (durable mode: the row is closed, then copied), and deliveries the
-- broker has run out of (idempotent mode: their dedup rows are written; the runner then
-- acks the broker). A caller passes one kind, the other's arrays empty.
WITH closed AS (
    UPDATE {inbox_messages} AS m
    SET processed_at = now(), attempts = m.attempts + 1, last_error = f.error
    FROM unnest(%(seqs)s::bigint[], %(seq_errors)s::text[]) AS f(seq, error)
    WHERE m.consumer = %(consumer)s AND m.seq = f.seq AND m.processed_at IS NULL
    RETURNING m.consumer, m.message_id, m.topic, m.key, m.payload, m.content_type, m.headers,
              m.received_at, m.attempts, m.last_error
), delivered AS (
    SELECT %(consumer)s::text AS consumer, m.message_id, m.topic, m.key, m.payload,
           m.content_type, m.headers, now() AS received_at, m.attempts, m.last_error
    FROM unnest(%(message_ids)s::uuid[], %(topics)s::text[], %(keys)s::text[],
                %(payloads)s::bytea[], %(content_types)s::text[], %(headers)s::jsonb[],
                %(attempts)s::integer[], %(errors)s::text[])
         AS m(message_id, topic, key, payload, content_type, headers, attempts, last_error)
), dedup AS (
    INSERT INTO {inbox_messages}
        (consumer, message_id, topic, key, processed_at, attempts, last_error)
    SELECT consumer, message_id, topic, key, now(), attempts, last_error FROM delivered
    ON CONFLICT (consumer, message_id) DO NOTHING
)
INSERT INTO {inbox_dead_letters} AS d
    (consumer, message_id, topic, key, payload, content_type, headers, received_at,
     attempts, last_error)
SELECT * FROM closed
UNION ALL
SELECT * FROM delivered
ON CONFLICT (consumer, message_id) DO UPDATE
-- A dead letter made from a broken envelope that carried this id (attempts 0, no handler ran)
-- gives way to the real message's: else a forged delivery could hide a genuine failure.
SET topic = excluded.topic, key = excluded.key, payload = excluded.payload,
    content_type = excluded.content_type, headers = excluded.headers,
    received_at = excluded.received_at, attempts = excluded.attempts,
    last_error = excluded.last_error, dead_at = now()
WHERE d.attempts = 0
  AND d.last_error LIKE 'malformed envelope: %%'

-- name: bury_malformed
-- Deliveries whose envelope is broken, with the id they carried: kept as dead letters with
-- what could be kept of them (cleaned), `attempts` 0 (no handler ever ran). No dedup row:
-- the id came in a broken envelope, and a well-formed message with that id must still be
-- handled when it arrives.
INSERT INTO {inbox_dead_letters}
    (consumer, message_id, topic, key, payload, content_type, headers, received_at,
     attempts, last_error)
SELECT %(consumer)s, m.message_id, m.topic, m.key, m.payload, m.content_type, m.headers,
       now(), 0, m.error
FROM unnest(%(message_ids)s::uuid[], %(topics)s::text[], %(keys)s::text[],
            %(payloads)s::bytea[], %(content_types)s::text[], %(headers)s::jsonb[],
            %(errors)s::text[])
     AS m(message_id, topic, key, payload, content_type, headers, error)
ON CONFLICT (consumer, message_id) DO NOTHING

-- name: find_dead_letters
SELECT consumer, message_id, topic, key, attempts, last_error, dead_at
FROM {inbox_dead_letters}
WHERE (%(consumer)s::text IS NULL OR consumer = %(consumer)s::text)
  AND (%(message_ids)s::uuid[] IS NULL OR message_id = ANY (%(message_ids)s::uuid[]))
  AND (%(topic)s::text IS NULL OR topic LIKE %(topic)s::text)
  AND (%(key)s::text IS NULL OR key = %(key)s::text)
ORDER BY dead_at, message_id
LIMIT %(limit)s
FOR UPDATE

-- name: retry_dead_letters
-- Back to the inbox as unprocessed durable rows: the consumer's durable worker runs them.
WITH moved AS (
    DELETE FROM {inbox_dead_letters} AS d
    USING unnest(%(consumers)s::text[], %(message_ids)s::uuid[]) AS t(consumer, message_id)
    WHERE d.consumer = t.consumer AND d.message_id = t.message_id
    RETURNING d.*
)
INSERT INTO {inbox_messages}
    (consumer, message_id, topic, key, payload, content_type, headers)
SELECT consumer, message_id, topic, key, payload, content_type, headers FROM moved
ON CONFLICT (consumer, message_id) DO UPDATE
SET processed_at = NULL, attempts = 0, last_error = NULL, available_at = now(),
    payload = excluded.payload, content_type = excluded.content_type,
    headers = excluded.headers

-- name: purge_dead_letters
DELETE FROM {inbox_dead_letters} AS d
USING unnest(%(consumers)s::text[], %(message_ids)s::uuid[]) AS t(consumer, message_id)
WHERE d.consumer = t.consumer AND d.message_id = t.message_id

-- name: prune
-- Retention: forget processed messages older than the window. A redelivery of a message
-- older than the window would be handled again: the window is the dedup window.
DELETE FROM {inbox_messages}
WHERE (%(consumer)s::text IS NULL OR consumer = %(consumer)s::text)
  AND processed_at < now() - %(older_than)s * interval '1 second'

-- name: drop_payloads
UPDATE {inbox_messages}
SET payload = NULL, headers = NULL
WHERE (%(consumer)s::text IS NULL OR consumer = %(consumer)s::text)
  AND processed_at < now() - %(older_than)s * interval '1 second'
  AND payload IS NOT NULL

-- name: savepoint
-- The careful pass's savepoint around one message. Managed by hand, not with a nested
-- `conn.transaction()`: when a handler swallows its own SQL error, psycopg's RELEASE fails
-- and leaves the whole transaction aborted; here a failed RELEASE is rolled back to.
SAVEPOINT outboxkit_message

-- name: release_savepoint
RELEASE SAVEPOINT outboxkit_message

-- name: rollback_to_savepoint
ROLLBACK TO SAVEPOINT outboxkit_message
