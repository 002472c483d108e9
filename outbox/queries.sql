-- The write path's SQL. `{table}` placeholders are bound to the schema with sql.Identifier.

-- name: insert_messages
-- One round trip for any number of messages. The partition is a stable hash of the key (or
-- of the id for keyless messages) so that every message of a key lands in one partition.
WITH new AS (
    SELECT *
    FROM unnest(
        %(message_ids)s::uuid[], %(topics)s::text[], %(keys)s::text[], %(payloads)s::bytea[],
        %(content_types)s::text[], %(headers)s::jsonb[], %(delays)s::float8[]
    ) AS m(message_id, topic, key, payload, content_type, headers, delay)
),
inserted AS (
    INSERT INTO {outbox_messages}
        (message_id, topic, key, partition, payload, content_type, headers, available_at)
    SELECT new.message_id, new.topic, new.key,
           (hashtext(coalesce(new.key, new.message_id::text)) & 2147483647) %% s.partitions,
           new.payload, new.content_type, new.headers,
           now() + new.delay * interval '1 second'
    FROM new CROSS JOIN {outbox_settings} AS s
    RETURNING message_id, created_at, available_at, partition
),
notified AS (
    -- One NOTIFY per statement naming the partitions written; PostgreSQL folds identical
    -- notifications of one transaction into one.
    SELECT CASE WHEN %(channel)s::text IS NOT NULL THEN
           pg_notify(%(channel)s::text, string_agg(DISTINCT partition::text, ',')) END AS done
    FROM inserted
)
SELECT inserted.message_id, inserted.created_at, inserted.available_at
FROM inserted CROSS JOIN notified

-- name: insert_message
-- One message: a plain INSERT … SELECT costs the server about a third of the unnest form
-- above, which matters when it is the only extra statement in a business transaction.
WITH inserted AS (
    INSERT INTO {outbox_messages}
        (message_id, topic, key, partition, payload, content_type, headers, available_at)
    SELECT %(message_id)s, %(topic)s, %(key)s,
           (hashtext(coalesce(%(key)s::text, %(message_id)s::uuid::text)) & 2147483647)
               %% s.partitions,
           %(payload)s, %(content_type)s, %(headers)s,
           now() + %(delay)s::float8 * interval '1 second'
    FROM {outbox_settings} AS s
    RETURNING message_id, created_at, available_at, partition
)
SELECT message_id, created_at, available_at,
       CASE WHEN %(channel)s::text IS NOT NULL THEN
            pg_notify(%(channel)s::text, partition::text) END AS notified
FROM inserted
