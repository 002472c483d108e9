-- outboxkit 0003: least-privilege roles. Grant them to your login roles, e.g.
--   GRANT outboxkit_relay TO relay_login;  GRANT outboxkit_writer TO app_login;
-- The roles are created when the migrating user may create roles; otherwise a DBA creates
-- them (CREATE ROLE outboxkit_relay NOLOGIN; …) and runs this migration's grants again.
DO $roles$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['outboxkit_writer', 'outboxkit_relay', 'outboxkit_consumer']
    LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION
                WHEN duplicate_object THEN NULL;          -- created concurrently
                WHEN insufficient_privilege THEN
                    RAISE NOTICE 'cannot create role %; ask a DBA to create it', role_name;
            END;
        END IF;
    END LOOP;

    -- Producers: write messages in their business transactions.
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'outboxkit_writer') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO outboxkit_writer', current_schema());
        GRANT SELECT ON outbox_settings TO outboxkit_writer;
        GRANT INSERT ON outbox_messages TO outboxkit_writer;
        -- what the insert returns: the database's times for the written messages
        GRANT SELECT (message_id, partition, created_at, available_at)
            ON outbox_messages TO outboxkit_writer;
    END IF;

    -- The relay: claim, delete, back off, dead-letter, coordinate. No DDL, nothing else.
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'outboxkit_relay') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO outboxkit_relay', current_schema());
        GRANT SELECT ON outbox_settings TO outboxkit_relay;
        GRANT SELECT, UPDATE, DELETE ON outbox_messages TO outboxkit_relay;
        GRANT SELECT, INSERT ON outbox_dead_letters TO outboxkit_relay;
        GRANT SELECT, INSERT, UPDATE, DELETE ON outbox_key_blocks TO outboxkit_relay;
        GRANT SELECT, INSERT, UPDATE, DELETE ON outbox_relays TO outboxkit_relay;
    END IF;

    -- Consumers: dedup, store, process, dead-letter, prune.
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'outboxkit_consumer') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO outboxkit_consumer', current_schema());
        GRANT SELECT, INSERT, UPDATE, DELETE ON inbox_messages TO outboxkit_consumer;
        GRANT SELECT, INSERT, DELETE ON inbox_dead_letters TO outboxkit_consumer;
        -- a handler may chain events through the outbox
        GRANT SELECT ON outbox_settings TO outboxkit_consumer;
        GRANT INSERT ON outbox_messages TO outboxkit_consumer;
        GRANT SELECT (message_id, partition, created_at, available_at)
            ON outbox_messages TO outboxkit_consumer;
    END IF;
END
$roles$;
