-- The relay's SQL. `{table}` placeholders are bound to the schema with sql.Identifier;
-- `%%` is a literal percent sign.

-- name: settings
SELECT partitions FROM {outbox_settings}

-- name: claim
-- The next messages of the partitions this relay owns, in write order. A keyed message waits
-- while its key is blocked by an earlier message that is backing off or dead-lettered (unless
-- it is that head). Topics delivered at most once are claimed separately.
SELECT m.id, m.message_id, m.topic, m.key, m.payload, m.content_type, m.headers,
       m.created_at, m.attempts, m.partition
FROM {outbox_messages} AS m
WHERE m.partition = ANY (%(partitions)s::smallint[])
  AND m.available_at <= now()
  AND NOT (m.topic LIKE ANY (%(at_most_once)s::text[]))
  AND (m.key IS NULL OR NOT EXISTS (
        SELECT 1 FROM {outbox_key_blocks} AS b
        WHERE b.partition = m.partition AND b.key = m.key AND b.head_id <> m.id))
ORDER BY m.id
LIMIT %(limit)s
FOR UPDATE OF m SKIP LOCKED

-- name: claim_at_most_once
-- At-most-once topics: deleted (and committed) before they are published; never retried.
-- `id = ANY (ARRAY(…))` rather than `id IN (…)`: the planner then deletes by the primary key
-- instead of hash-joining the claimed ids against a sequential scan of the whole backlog.
DELETE FROM {outbox_messages} AS m
WHERE m.id = ANY (ARRAY(
    SELECT id FROM {outbox_messages}
    WHERE partition = ANY (%(partitions)s::smallint[])
      AND available_at <= now()
      AND topic LIKE ANY (%(at_most_once)s::text[])
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED))
RETURNING m.id, m.message_id, m.topic, m.key, m.payload, m.content_type, m.headers,
          m.created_at, m.attempts, m.partition

-- name: settle
-- Everything a publish round decided, in one statement: delete what the broker acked and
-- unblock keys whose head it was; back off retriable failures and block their keys; move
-- the rest to dead letters, parking their keys.
WITH acked AS (
    DELETE FROM {outbox_messages} WHERE id = ANY (%(acked_ids)s::bigint[])
),
unblocked AS (
    DELETE FROM {outbox_key_blocks} WHERE head_id = ANY (%(unblock_ids)s::bigint[])
),
retried AS (
    UPDATE {outbox_messages} AS m
    SET attempts = m.attempts + 1,
        last_error = r.error,
        available_at = now() + r.delay * interval '1 second'
    FROM unnest(%(retry_ids)s::bigint[], %(retry_errors)s::text[], %(retry_delays)s::float8[])
         AS r(id, error, delay)
    WHERE m.id = r.id
    RETURNING m.id, m.key, m.partition
),
dead AS (
    DELETE FROM {outbox_messages} AS m
    USING unnest(%(dead_ids)s::bigint[], %(dead_errors)s::text[]) AS d(id, error)
    WHERE m.id = d.id
    RETURNING m.*, d.error
),
buried AS (
    INSERT INTO {outbox_dead_letters}
        (id, message_id, topic, key, partition, payload, content_type, headers, created_at,
         attempts, last_error)
    SELECT id, message_id, topic, key, partition, payload, content_type, headers, created_at,
           attempts + 1, error
    FROM dead
),
blocked AS (
    INSERT INTO {outbox_key_blocks} (partition, key, head_id, reason)
    SELECT partition, key, id, 'backoff' FROM retried WHERE key IS NOT NULL
    UNION ALL
    SELECT partition, key, id, 'dead_letter' FROM dead WHERE key IS NOT NULL
    ON CONFLICT (partition, key)
    DO UPDATE SET head_id = excluded.head_id, reason = excluded.reason, blocked_at = now()
)
SELECT (SELECT count(*) FROM retried) AS retried, (SELECT count(*) FROM dead) AS dead

-- name: heartbeat
INSERT INTO {outbox_relays} AS r (relay_id, hostname, pid, partitions)
VALUES (%(relay_id)s, %(hostname)s, %(pid)s, %(partitions)s::smallint[])
ON CONFLICT (relay_id)
DO UPDATE SET heartbeat_at = now(), partitions = excluded.partitions

-- name: prune_relays
DELETE FROM {outbox_relays}
WHERE heartbeat_at < now() - %(ttl)s * interval '1 second' AND relay_id <> %(relay_id)s

-- name: live_relays
SELECT relay_id FROM {outbox_relays} ORDER BY relay_id

-- name: leave
DELETE FROM {outbox_relays} WHERE relay_id = %(relay_id)s

-- name: try_lock_partitions
-- Session advisory locks: held until unlocked or until the session ends.
SELECT p FROM unnest(%(partitions)s::int[]) AS p
WHERE pg_try_advisory_lock(hashtext(%(lock_space)s), p)

-- name: unlock_partitions
SELECT p FROM unnest(%(partitions)s::int[]) AS p
WHERE pg_advisory_unlock(hashtext(%(lock_space)s), p)

-- name: backlog
SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
FROM {outbox_messages}

-- name: dead_letter_count
SELECT count(*) FROM {outbox_dead_letters}

-- Administration (outboxkit status / dead-letters / --partitions) ---------------------------

-- name: backlog_by_topic
SELECT topic, count(*), extract(epoch FROM now() - min(created_at))::float8,
       count(*) FILTER (WHERE attempts > 0)
FROM {outbox_messages} GROUP BY topic ORDER BY topic

-- name: dead_letters_by_topic
SELECT topic, count(*) FROM {outbox_dead_letters} GROUP BY topic ORDER BY topic

-- name: relays
SELECT relay_id, hostname, pid, extract(epoch FROM now() - heartbeat_at)::float8, partitions
FROM {outbox_relays} ORDER BY relay_id

-- name: blocked_keys
SELECT reason, count(*) FROM {outbox_key_blocks} GROUP BY reason

-- name: find_dead_letters
SELECT id, message_id, topic, key, attempts, last_error, dead_at, created_at
FROM {outbox_dead_letters}
WHERE (%(message_ids)s::uuid[] IS NULL OR message_id = ANY (%(message_ids)s::uuid[]))
  AND (%(topic)s::text IS NULL OR topic LIKE %(topic)s::text)
  AND (%(key)s::text IS NULL OR key = %(key)s::text)
ORDER BY id
LIMIT %(limit)s
FOR UPDATE

-- name: retry_dead_letters
-- Back into the outbox under their original id: each takes back its place in its key's
-- order, and stays the head that its key's block waits for until the broker acks it.
WITH moved AS (
    DELETE FROM {outbox_dead_letters} WHERE id = ANY (%(ids)s::bigint[])
    RETURNING id, message_id, topic, key, partition, payload, content_type, headers, created_at
),
restored AS (
    INSERT INTO {outbox_messages}
        (id, message_id, topic, key, partition, payload, content_type, headers, created_at)
    OVERRIDING SYSTEM VALUE
    SELECT id, message_id, topic, key, partition, payload, content_type, headers, created_at
    FROM moved
    RETURNING id
)
UPDATE {outbox_key_blocks} SET reason = 'backoff'
WHERE head_id IN (SELECT id FROM restored)

-- name: purge_dead_letters
-- Drop them for good; their keys resume with the next message.
WITH purged AS (
    DELETE FROM {outbox_dead_letters} WHERE id = ANY (%(ids)s::bigint[]) RETURNING id
)
DELETE FROM {outbox_key_blocks} WHERE head_id IN (SELECT id FROM purged)

-- name: lock_settings
LOCK TABLE {outbox_settings} IN ACCESS EXCLUSIVE MODE

-- name: repartition
-- Under the lock above: writers wait, relays finish their batches, then every pending row,
-- block and dead letter moves to the partition of its key under the new count.
WITH s AS (UPDATE {outbox_settings} SET partitions = %(partitions)s RETURNING partitions),
m AS (
    UPDATE {outbox_messages}
    SET partition = (hashtext(coalesce(key, message_id::text)) & 2147483647) %% %(partitions)s
),
d AS (
    UPDATE {outbox_dead_letters}
    SET partition = (hashtext(coalesce(key, message_id::text)) & 2147483647) %% %(partitions)s
)
UPDATE {outbox_key_blocks}
SET partition = (hashtext(key) & 2147483647) %% %(partitions)s
