-- outboxkit 0005: least-privilege roles of this schema alone, replacing 0003's cluster-wide ones.
--
-- Role names are cluster-wide, so every schema gets its own four roles, <prefix>_writer,
-- <prefix>_relay, <prefix>_consumer and <prefix>_admin. The prefix is the setting
-- outboxkit.role_prefix (`outboxkit migrate --role-prefix`) or by default
-- "<database>_<schema>" (past 54 bytes: its first bytes and a hash of the whole), so two
-- databases of one cluster never share roles even when their schemas have the same name.
-- outboxkit_roles records the names; grant them to your logins, e.g.
--     GRANT orders_outboxkit_relay TO relay_login;
-- 0003's outboxkit_writer, outboxkit_relay and outboxkit_consumer lose all access to this
-- schema here: a login that was granted one of them needs the new role instead.
-- The roles are created when the migrating user may create roles; otherwise a DBA creates the
-- roles named in outboxkit_roles and the owner runs SELECT <schema>.outboxkit_grant_roles().

CREATE TABLE outboxkit_roles (
    kind      text PRIMARY KEY CHECK (kind IN ('writer', 'relay', 'consumer', 'admin')),
    role_name text NOT NULL UNIQUE
);

-- Which inbox consumers a login may act as. A member of <prefix>_consumer reads and writes only
-- the inbox rows and dead letters of the consumers mapped to it or to a role it belongs to:
--     INSERT INTO outboxkit.inbox_consumer_roles VALUES ('billing_login', 'billing');
CREATE TABLE inbox_consumer_roles (
    role_name text NOT NULL,
    consumer  text NOT NULL,
    PRIMARY KEY (role_name, consumer)
);

DO $names$
DECLARE
    prefix text := nullif(current_setting('outboxkit.role_prefix', true), '');
    short  text;
    kind   text;
BEGIN
    IF prefix IS NULL THEN
        prefix := current_database() || '_' || current_schema();
        IF octet_length(prefix) > 54 THEN
            short := left(prefix, 45);
            WHILE octet_length(short) > 45 LOOP
                short := left(short, -1);
            END LOOP;
            prefix := short || '_' || left(md5(prefix), 8);
        END IF;
    ELSIF octet_length(prefix) > 54 THEN
        -- 63 bytes at most per role name, and "_consumer" takes 9
        RAISE EXCEPTION 'outboxkit.role_prefix % is longer than 54 bytes', quote_literal(prefix)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF prefix LIKE 'pg\_%' THEN
        RAISE EXCEPTION 'role names starting with pg_ are reserved (prefix %): '
                        'choose a role prefix', quote_literal(prefix)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH kind IN ARRAY ARRAY['writer', 'relay', 'consumer', 'admin'] LOOP
        INSERT INTO outboxkit_roles (kind, role_name) VALUES (kind, prefix || '_' || kind);
    END LOOP;
END
$names$;

-- Every new outbox row lands in its key's partition and becomes available within 365 days
-- (outbox.building.MAX_DELAY): whoever inserts, no message can hide from every relay or wait
-- forever (which would also skew the oldest-age metric). Checked once per statement over all
-- the inserted rows: a row trigger would add a call and a settings lookup to every message.
-- 8760 hours, not '365 days': a day is calendar time, an hour shorter or longer across a
-- daylight-saving change, and the longest delay the API accepts must always pass.
CREATE FUNCTION outbox_check_new_messages() RETURNS trigger LANGUAGE plpgsql AS $check$
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
$check$;

CREATE TRIGGER outbox_messages_check_new AFTER INSERT ON outbox_messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_check_new_messages();

-- Row-level security on the inbox. Not forced: the owner (the migrating user) and superusers
-- see every row; <prefix>_admin sees every row through its policy; <prefix>_consumer through
-- inbox_consumer_roles; any other role sees none.
ALTER TABLE inbox_messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE inbox_dead_letters ENABLE ROW LEVEL SECURITY;
ALTER TABLE inbox_consumer_roles ENABLE ROW LEVEL SECURITY;

-- (Re)grants everything to the roles named in outboxkit_roles, creating the missing ones when
-- the caller may: each role gets exactly the access listed here, nothing it had before.
-- Idempotent; later migrations replace it when they add tables.
CREATE FUNCTION outboxkit_grant_roles() RETURNS void LANGUAGE plpgsql AS $grant$
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
$grant$;

DO $upgrade$
DECLARE
    old text;
BEGIN
    -- Both functions resolve names in this schema whatever the caller's search_path, and
    -- pg_temp comes last: a writer cannot shadow outbox_settings with a table of its own.
    EXECUTE format('ALTER FUNCTION outboxkit_grant_roles() SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION outbox_check_new_messages() SET search_path = %I, pg_temp',
                   current_schema());
    REVOKE ALL ON FUNCTION outboxkit_grant_roles() FROM PUBLIC;
    REVOKE ALL ON FUNCTION outbox_check_new_messages() FROM PUBLIC;

    FOREACH old IN ARRAY ARRAY['outboxkit_writer', 'outboxkit_relay', 'outboxkit_consumer'] LOOP
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = old) THEN
            EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', current_schema(), old);
            EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', current_schema(), old);
        END IF;
    END LOOP;
    PERFORM outboxkit_grant_roles();
END
$upgrade$;
