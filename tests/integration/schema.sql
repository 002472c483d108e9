CREATE SCHEMA outboxkit;
CREATE TABLE outboxkit.inbox_dead_letters (
    consumer text NOT NULL,
    message_id uuid NOT NULL,
    topic text NOT NULL,
    key text,
    payload bytea,
    content_type text,
    headers jsonb,
    received_at timestamp with time zone NOT NULL,
    attempts integer NOT NULL,
    last_error text NOT NULL,
    dead_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT inbox_dead_letters_consumer_bytes CHECK ((octet_length(consumer) <= 255)),
    CONSTRAINT inbox_dead_letters_key_bytes CHECK ((octet_length(key) <= 1024)),
    CONSTRAINT inbox_dead_letters_topic_bytes CHECK ((octet_length(topic) <= 255))
);
CREATE TABLE outboxkit.inbox_messages (
    consumer text NOT NULL,
    message_id uuid NOT NULL,
    seq bigint NOT NULL,
    topic text NOT NULL,
    key text,
    payload bytea,
    content_type text,
    headers jsonb,
    received_at timestamp with time zone DEFAULT now() NOT NULL,
    processed_at timestamp with time zone,
    available_at timestamp with time zone DEFAULT now() NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    last_error text,
    CONSTRAINT inbox_messages_consumer_bytes CHECK ((octet_length(consumer) <= 255)),
    CONSTRAINT inbox_messages_key_bytes CHECK ((octet_length(key) <= 1024)),
    CONSTRAINT inbox_messages_topic_bytes CHECK ((octet_length(topic) <= 255))
);
ALTER TABLE outboxkit.inbox_messages ALTER COLUMN seq ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME outboxkit.inbox_messages_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE TABLE outboxkit.outbox_dead_letters (
    id bigint NOT NULL,
    message_id uuid NOT NULL,
    topic text NOT NULL,
    key text,
    partition smallint NOT NULL,
    payload bytea NOT NULL,
    content_type text NOT NULL,
    headers jsonb NOT NULL,
    created_at timestamp with time zone NOT NULL,
    attempts integer NOT NULL,
    last_error text NOT NULL,
    dead_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT outbox_dead_letters_key_bytes CHECK ((octet_length(key) <= 1024)),
    CONSTRAINT outbox_dead_letters_topic_bytes CHECK ((octet_length(topic) <= 255))
);
CREATE TABLE outboxkit.outbox_key_blocks (
    partition smallint NOT NULL,
    key text NOT NULL,
    head_id bigint NOT NULL,
    reason text NOT NULL,
    blocked_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT outbox_key_blocks_key_bytes CHECK ((octet_length(key) <= 1024)),
    CONSTRAINT outbox_key_blocks_reason_check CHECK ((reason = ANY (ARRAY['backoff'::text, 'dead_letter'::text])))
);
CREATE TABLE outboxkit.outbox_messages (
    id bigint NOT NULL,
    message_id uuid NOT NULL,
    topic text NOT NULL,
    key text,
    partition smallint NOT NULL,
    payload bytea NOT NULL,
    content_type text NOT NULL,
    headers jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    available_at timestamp with time zone DEFAULT now() NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    last_error text,
    CONSTRAINT outbox_messages_key_bytes CHECK ((octet_length(key) <= 1024)),
    CONSTRAINT outbox_messages_topic_bytes CHECK ((octet_length(topic) <= 255))
)
WITH (autovacuum_vacuum_scale_factor='0.01', autovacuum_vacuum_insert_scale_factor='0.01', autovacuum_analyze_scale_factor='0.02');
ALTER TABLE outboxkit.outbox_messages ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME outboxkit.outbox_messages_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE TABLE outboxkit.outbox_relays (
    relay_id text NOT NULL,
    hostname text NOT NULL,
    pid integer NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    heartbeat_at timestamp with time zone DEFAULT now() NOT NULL,
    partitions smallint[] DEFAULT '{}'::smallint[] NOT NULL,
    CONSTRAINT outbox_relays_relay_id_bytes CHECK ((octet_length(relay_id) <= 255))
);
CREATE TABLE outboxkit.outbox_settings (
    singleton boolean DEFAULT true NOT NULL,
    partitions smallint DEFAULT 16 NOT NULL,
    CONSTRAINT outbox_settings_partitions_check CHECK (((partitions >= 1) AND (partitions <= 1024))),
    CONSTRAINT outbox_settings_singleton_check CHECK (singleton)
);
CREATE TABLE outboxkit.outboxkit_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);
ALTER TABLE ONLY outboxkit.inbox_dead_letters
    ADD CONSTRAINT inbox_dead_letters_pkey PRIMARY KEY (consumer, message_id);
ALTER TABLE ONLY outboxkit.inbox_messages
    ADD CONSTRAINT inbox_messages_pkey PRIMARY KEY (consumer, message_id);
ALTER TABLE ONLY outboxkit.outbox_dead_letters
    ADD CONSTRAINT outbox_dead_letters_message_id_key UNIQUE (message_id);
ALTER TABLE ONLY outboxkit.outbox_dead_letters
    ADD CONSTRAINT outbox_dead_letters_pkey PRIMARY KEY (id);
ALTER TABLE ONLY outboxkit.outbox_key_blocks
    ADD CONSTRAINT outbox_key_blocks_pkey PRIMARY KEY (partition, key);
ALTER TABLE ONLY outboxkit.outbox_messages
    ADD CONSTRAINT outbox_messages_message_id_key UNIQUE (message_id);
ALTER TABLE ONLY outboxkit.outbox_messages
    ADD CONSTRAINT outbox_messages_pkey PRIMARY KEY (id);
ALTER TABLE ONLY outboxkit.outbox_relays
    ADD CONSTRAINT outbox_relays_pkey PRIMARY KEY (relay_id);
ALTER TABLE ONLY outboxkit.outbox_settings
    ADD CONSTRAINT outbox_settings_pkey PRIMARY KEY (singleton);
ALTER TABLE ONLY outboxkit.outboxkit_migrations
    ADD CONSTRAINT outboxkit_migrations_pkey PRIMARY KEY (version);
CREATE INDEX inbox_messages_key_head_idx ON outboxkit.inbox_messages USING btree (consumer, key, seq) WHERE ((processed_at IS NULL) AND (key IS NOT NULL));
CREATE INDEX inbox_messages_pending_idx ON outboxkit.inbox_messages USING btree (consumer, seq) WHERE (processed_at IS NULL);
CREATE INDEX inbox_messages_processed_idx ON outboxkit.inbox_messages USING btree (consumer, processed_at) WHERE (processed_at IS NOT NULL);
CREATE INDEX outbox_dead_letters_key_idx ON outboxkit.outbox_dead_letters USING btree (key);
CREATE INDEX outbox_dead_letters_topic_idx ON outboxkit.outbox_dead_letters USING btree (topic);
CREATE INDEX outbox_messages_claim_idx ON outboxkit.outbox_messages USING btree (partition, id);
