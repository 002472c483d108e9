-- outboxkit 0001: outbox, dead letters, key blocks, relays, inbox.
-- Runs with search_path set to the target schema: every name below is unqualified.

CREATE TABLE outbox_settings (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    partitions smallint NOT NULL DEFAULT 16 CHECK (partitions BETWEEN 1 AND 1024)
);
INSERT INTO outbox_settings DEFAULT VALUES;

-- Pending messages. A published message is deleted in the relay's claim transaction.
CREATE TABLE outbox_messages (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id   uuid        NOT NULL UNIQUE,
    topic        text        NOT NULL,
    key          text,
    partition    smallint    NOT NULL,
    payload      bytea       NOT NULL,
    content_type text        NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    available_at timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text
);
-- The claim query scans one partition in id order.
CREATE INDEX outbox_messages_claim_idx ON outbox_messages (partition, id);
-- A high-churn queue table: vacuum it early and often.
ALTER TABLE outbox_messages SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02
);

-- Messages that exhausted their attempts or were rejected as permanently bad.
-- `id` is the original outbox id, so a retried message takes back its place in its key's order.
CREATE TABLE outbox_dead_letters (
    id           bigint      PRIMARY KEY,
    message_id   uuid        NOT NULL UNIQUE,
    topic        text        NOT NULL,
    key          text,
    partition    smallint    NOT NULL,
    payload      bytea       NOT NULL,
    content_type text        NOT NULL,
    headers      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL,
    attempts     integer     NOT NULL,
    last_error   text        NOT NULL,
    dead_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_dead_letters_topic_idx ON outbox_dead_letters (topic);
CREATE INDEX outbox_dead_letters_key_idx ON outbox_dead_letters (key);

-- Keys whose head message is backing off or dead-lettered: later messages of the key wait.
CREATE TABLE outbox_key_blocks (
    partition  smallint    NOT NULL,
    key        text        NOT NULL,
    head_id    bigint      NOT NULL,
    reason     text        NOT NULL CHECK (reason IN ('backoff', 'dead_letter')),
    blocked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, key)
);

-- Live relays (heartbeats) and the partitions each one owns, for rebalancing and `status`.
CREATE TABLE outbox_relays (
    relay_id     text        PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    partitions   smallint[]  NOT NULL DEFAULT '{}'
);

-- Consumer side. One row per (consumer, message): the dedup key. In durable mode the row
-- also carries the message until an inbox worker has processed it.
CREATE TABLE inbox_messages (
    consumer     text        NOT NULL,
    message_id   uuid        NOT NULL,
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    topic        text        NOT NULL,
    key          text,
    payload      bytea,
    content_type text,
    headers      jsonb,
    received_at  timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    available_at timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text,
    PRIMARY KEY (consumer, message_id)
);
-- The durable worker claims unprocessed rows of a consumer in arrival order.
CREATE INDEX inbox_messages_pending_idx ON inbox_messages (consumer, seq)
    WHERE processed_at IS NULL;
-- Retention prunes processed rows by age.
CREATE INDEX inbox_messages_processed_idx ON inbox_messages (consumer, processed_at)
    WHERE processed_at IS NOT NULL;

CREATE TABLE inbox_dead_letters (
    consumer     text        NOT NULL,
    message_id   uuid        NOT NULL,
    topic        text        NOT NULL,
    key          text,
    payload      bytea,
    content_type text,
    headers      jsonb,
    received_at  timestamptz NOT NULL,
    attempts     integer     NOT NULL,
    last_error   text        NOT NULL,
    dead_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
