-- The Postgres-to-Postgres publisher's SQL, run against the *target* database.
-- `{inbox_messages}` is bound to the target's schema with sql.Identifier.

-- name: store
-- One round trip for the whole batch; a message this consumer already has is skipped, so a
-- republished message is acked without a second row. The inbox's durable mode stores what a
-- broker delivered with this same statement (inbox/queries.py): one way into the table.
INSERT INTO {inbox_messages} (consumer, message_id, topic, key, payload, content_type, headers)
SELECT %(consumer)s::text, m.message_id, m.topic, m.key, m.payload, m.content_type, m.headers
FROM unnest(
    %(message_ids)s::uuid[], %(topics)s::text[], %(keys)s::text[], %(payloads)s::bytea[],
    %(content_types)s::text[], %(headers)s::jsonb[]
) AS m(message_id, topic, key, payload, content_type, headers)
ON CONFLICT (consumer, message_id) DO NOTHING
