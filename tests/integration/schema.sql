CREATE SCHEMA outboxkit;
CREATE FUNCTION outboxkit.outbox_check_new_messages() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'outboxkit', 'pg_temp'
    AS $$
BEGIN
    IF EXISTS (
        SELECT FROM new_messages AS n CROSS JOIN outbox_settings AS s
        WHERE n.partition <> (hashtext(coalesce(n.key, n.message_id::text)) & 2147483647)
                             % s.partitions
           OR n.available_at > now() + interval '8760 hours'
    ) THEN
        RAISE EXCEPTION 'an outbox row must have the partition of its key and be available '
                        'within 365 days' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE FUNCTION outboxkit.outboxkit_grant_roles() RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'outboxkit', 'pg_temp'
    AS $$
DECLARE
    schema_name   text := current_schema();
    grantee       record;
    -- the consumers the current login may act as; evaluated once per query (an InitPlan),
    -- so the inbox's queries keep their (consumer, …) index scans
    own_consumers text := 'consumer = ANY (ARRAY(SELECT c.consumer FROM inbox_consumer_roles '
                          'AS c WHERE pg_has_role(current_user, '
                          'to_regrole(quote_ident(c.role_name)), ''USAGE'')))';
BEGIN
    FOR grantee IN SELECT kind, role_name FROM outboxkit_roles ORDER BY kind LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = grantee.role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', grantee.role_name);
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN NULL;   -- created concurrently
                WHEN insufficient_privilege THEN
                    RAISE NOTICE 'cannot create role %: ask a DBA to create it, then run '
                                 'SELECT %.outboxkit_grant_roles()',
                                 quote_ident(grantee.role_name), quote_ident(schema_name);
            END;
        END IF;
    END LOOP;
    DROP POLICY IF EXISTS inbox_messages_consumer ON inbox_messages;
    DROP POLICY IF EXISTS inbox_messages_admin ON inbox_messages;
    DROP POLICY IF EXISTS inbox_dead_letters_consumer ON inbox_dead_letters;
    DROP POLICY IF EXISTS inbox_dead_letters_admin ON inbox_dead_letters;
    DROP POLICY IF EXISTS inbox_consumer_roles_consumer ON inbox_consumer_roles;
    DROP POLICY IF EXISTS inbox_consumer_roles_admin ON inbox_consumer_roles;
    FOR grantee IN
        SELECT o.kind, o.role_name FROM outboxkit_roles AS o
        JOIN pg_roles AS r ON r.rolname = o.role_name
    LOOP
        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I',
                       schema_name, grantee.role_name);
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', schema_name, grantee.role_name);
        IF grantee.kind IN ('writer', 'consumer') THEN
            -- Producers, and handlers that chain events. The write path supplies the partition
            -- (checked by outbox_check_new_messages) and a delay; created_at, attempts and
            -- last_error are the database's.
            EXECUTE format('GRANT SELECT ON outbox_settings TO %I', grantee.role_name);
            EXECUTE format('GRANT INSERT (message_id, topic, key, partition, payload, '
                           'content_type, headers, available_at) ON outbox_messages TO %I',
                           grantee.role_name);
            -- what the insert returns: the database's times for the written messages
            EXECUTE format('GRANT SELECT (message_id, partition, created_at, available_at) '
                           'ON outbox_messages TO %I', grantee.role_name);
        END IF;
        IF grantee.kind = 'relay' THEN
            -- Claim, delete, back off, dead-letter, coordinate. It never changes a message's
            -- content: only the columns a retry sets.
            EXECUTE format('GRANT SELECT ON outbox_settings TO %I', grantee.role_name);
            EXECUTE format('GRANT SELECT, DELETE ON outbox_messages TO %I', grantee.role_name);
            EXECUTE format('GRANT UPDATE (attempts, last_error, available_at) '
                           'ON outbox_messages TO %I', grantee.role_name);
            EXECUTE format('GRANT SELECT ON outbox_dead_letters TO %I', grantee.role_name);
            EXECUTE format('GRANT INSERT (id, message_id, topic, key, partition, payload, '
                           'content_type, headers, created_at, attempts, last_error) '
                           'ON outbox_dead_letters TO %I', grantee.role_name);
            EXECUTE format('GRANT SELECT, DELETE ON outbox_key_blocks TO %I', grantee.role_name);
            EXECUTE format('GRANT INSERT (partition, key, head_id, reason), '
                           'UPDATE (head_id, reason, blocked_at) ON outbox_key_blocks TO %I',
                           grantee.role_name);
            EXECUTE format('GRANT SELECT, DELETE ON outbox_relays TO %I', grantee.role_name);
            EXECUTE format('GRANT INSERT (relay_id, hostname, pid, partitions), '
                           'UPDATE (heartbeat_at, partitions) ON outbox_relays TO %I',
                           grantee.role_name);
        END IF;
        IF grantee.kind = 'consumer' THEN
            -- Dedup, store, process, dead-letter, prune: its own consumers' rows only.
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON inbox_messages TO %I',
                           grantee.role_name);
            -- UPDATE: a genuine dead letter replaces one a broken envelope with its id made.
            EXECUTE format('GRANT SELECT, INSERT, UPDATE (topic, key, payload, content_type, '
                           'headers, received_at, attempts, last_error, dead_at) '
                           'ON inbox_dead_letters TO %I', grantee.role_name);
            EXECUTE format('GRANT SELECT ON inbox_consumer_roles TO %I', grantee.role_name);
            EXECUTE format('CREATE POLICY inbox_messages_consumer ON inbox_messages TO %I '
                           'USING (%s) WITH CHECK (%s)',
                           grantee.role_name, own_consumers, own_consumers);
            EXECUTE format('CREATE POLICY inbox_dead_letters_consumer ON inbox_dead_letters '
                           'TO %I USING (%s) WITH CHECK (%s)',
                           grantee.role_name, own_consumers, own_consumers);
            EXECUTE format('CREATE POLICY inbox_consumer_roles_consumer ON inbox_consumer_roles '
                           'FOR SELECT TO %I USING (pg_has_role(current_user, '
                           'to_regrole(quote_ident(role_name)), ''USAGE''))', grantee.role_name);
        END IF;
        IF grantee.kind = 'admin' THEN
            -- `outboxkit status` and `outboxkit dead-letters` (outbox and inbox, every
            -- consumer), `outboxkit inbox prune`. Not repartitioning, not DDL: the owner's.
            -- (SELECT … FOR UPDATE needs UPDATE on some column: dead_at.)
            EXECUTE format('GRANT SELECT ON outbox_settings, outbox_messages, outbox_key_blocks, '
                           'outbox_relays, outboxkit_roles, outboxkit_migrations, '
                           'inbox_consumer_roles TO %I', grantee.role_name);
            EXECUTE format('GRANT SELECT, DELETE, UPDATE (dead_at) ON outbox_dead_letters TO %I',
                           grantee.role_name);
            EXECUTE format('GRANT INSERT (id, message_id, topic, key, partition, payload, '
                           'content_type, headers, created_at) ON outbox_messages TO %I',
                           grantee.role_name);
            EXECUTE format('GRANT DELETE, UPDATE (reason) ON outbox_key_blocks TO %I',
                           grantee.role_name);
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON inbox_messages TO %I',
                           grantee.role_name);
            EXECUTE format('GRANT SELECT, DELETE, UPDATE (dead_at) ON inbox_dead_letters TO %I',
                           grantee.role_name);
            EXECUTE format('CREATE POLICY inbox_messages_admin ON inbox_messages TO %I '
                           'USING (true) WITH CHECK (true)', grantee.role_name);
            EXECUTE format('CREATE POLICY inbox_dead_letters_admin ON inbox_dead_letters TO %I '
                           'USING (true) WITH CHECK (true)', grantee.role_name);
            EXECUTE format('CREATE POLICY inbox_consumer_roles_admin ON inbox_consumer_roles '
                           'FOR SELECT TO %I USING (true)', grantee.role_name);
        END IF;
    END LOOP;
END
$$;
CREATE TABLE outboxkit.inbox_consumer_roles (
    role_name text NOT NULL,
    consumer text NOT NULL
);
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
CREATE TABLE outboxkit.outboxkit_roles (
    kind text NOT NULL,
    role_name text NOT NULL,
    CONSTRAINT outboxkit_roles_kind_check CHECK ((kind = ANY (ARRAY['writer'::text, 'relay'::text, 'consumer'::text, 'admin'::text])))
);
ALTER TABLE ONLY outboxkit.inbox_consumer_roles
    ADD CONSTRAINT inbox_consumer_roles_pkey PRIMARY KEY (role_name, consumer);
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
ALTER TABLE ONLY outboxkit.outboxkit_roles
    ADD CONSTRAINT outboxkit_roles_pkey PRIMARY KEY (kind);
ALTER TABLE ONLY outboxkit.outboxkit_roles
    ADD CONSTRAINT outboxkit_roles_role_name_key UNIQUE (role_name);
CREATE INDEX inbox_messages_key_head_idx ON outboxkit.inbox_messages USING btree (consumer, key, seq) WHERE ((processed_at IS NULL) AND (key IS NOT NULL));
CREATE INDEX inbox_messages_pending_idx ON outboxkit.inbox_messages USING btree (consumer, seq) WHERE (processed_at IS NULL);
CREATE INDEX inbox_messages_processed_idx ON outboxkit.inbox_messages USING btree (consumer, processed_at) WHERE (processed_at IS NOT NULL);
CREATE INDEX outbox_dead_letters_key_idx ON outboxkit.outbox_dead_letters USING btree (key);
CREATE INDEX outbox_dead_letters_topic_idx ON outboxkit.outbox_dead_letters USING btree (topic);
CREATE INDEX outbox_messages_claim_idx ON outboxkit.outbox_messages USING btree (partition, id);
CREATE TRIGGER outbox_messages_check_new AFTER INSERT ON outboxkit.outbox_messages REFERENCING NEW TABLE AS new_messages FOR EACH STATEMENT EXECUTE FUNCTION outboxkit.outbox_check_new_messages();
ALTER TABLE outboxkit.inbox_consumer_roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY inbox_consumer_roles_admin ON outboxkit.inbox_consumer_roles FOR SELECT TO <admin role> USING (true);
CREATE POLICY inbox_consumer_roles_consumer ON outboxkit.inbox_consumer_roles FOR SELECT TO <consumer role> USING (pg_has_role(CURRENT_USER, (to_regrole(quote_ident(role_name)))::oid, 'USAGE'::text));
ALTER TABLE outboxkit.inbox_dead_letters ENABLE ROW LEVEL SECURITY;
CREATE POLICY inbox_dead_letters_admin ON outboxkit.inbox_dead_letters TO <admin role> USING (true) WITH CHECK (true);
CREATE POLICY inbox_dead_letters_consumer ON outboxkit.inbox_dead_letters TO <consumer role> USING ((consumer = ANY (ARRAY( SELECT c.consumer
   FROM outboxkit.inbox_consumer_roles c
  WHERE pg_has_role(CURRENT_USER, (to_regrole(quote_ident(c.role_name)))::oid, 'USAGE'::text))))) WITH CHECK ((consumer = ANY (ARRAY( SELECT c.consumer
   FROM outboxkit.inbox_consumer_roles c
  WHERE pg_has_role(CURRENT_USER, (to_regrole(quote_ident(c.role_name)))::oid, 'USAGE'::text)))));
ALTER TABLE outboxkit.inbox_messages ENABLE ROW LEVEL SECURITY;
CREATE POLICY inbox_messages_admin ON outboxkit.inbox_messages TO <admin role> USING (true) WITH CHECK (true);
CREATE POLICY inbox_messages_consumer ON outboxkit.inbox_messages TO <consumer role> USING ((consumer = ANY (ARRAY( SELECT c.consumer
   FROM outboxkit.inbox_consumer_roles c
  WHERE pg_has_role(CURRENT_USER, (to_regrole(quote_ident(c.role_name)))::oid, 'USAGE'::text))))) WITH CHECK ((consumer = ANY (ARRAY( SELECT c.consumer
   FROM outboxkit.inbox_consumer_roles c
  WHERE pg_has_role(CURRENT_USER, (to_regrole(quote_ident(c.role_name)))::oid, 'USAGE'::text)))));
