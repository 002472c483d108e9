-- outboxkit 0002: per-key order for the durable inbox worker.
-- The worker takes only the head (oldest unprocessed row) of each key; this index answers
-- "is there an earlier unprocessed row of this key?" with one probe.
CREATE INDEX inbox_messages_key_head_idx ON inbox_messages (consumer, key, seq)
    WHERE processed_at IS NULL AND key IS NOT NULL;
