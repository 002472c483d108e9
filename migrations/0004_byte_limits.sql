-- outboxkit 0004: byte limits on every text column that an index or primary key holds.
--
-- PostgreSQL limits a btree entry to about 2.7 KB, in bytes: a key of 1,024 four-byte
-- characters is 4 KB, and the statement that indexes it (a key block, a dead letter) fails
-- with "index row size exceeds maximum", after the message was published. The write API
-- refuses such values (its limits count UTF-8 bytes: `outbox.limits`); these CHECKs make them
-- impossible whatever writes the row, refused at the INSERT, before anything is published.
-- NUL cannot be stored in text at all. octet_length counts bytes of the database encoding
-- (UTF-8 in any deployment that stores more than ASCII).
--
-- Existing rows that break a limit (written by an older outboxkit) make this migration fail,
-- naming the table and column and a query that finds them; nothing is changed until they are
-- dealt with: let the relay publish them (outbox_messages), purge them (dead letters:
-- `outboxkit dead-letters purge`) or prune them (processed inbox rows), then migrate again.
--
-- Each constraint is added valid: its table is scanned under an ACCESS EXCLUSIVE lock, held
-- until this migration's transaction commits (NOT VALID + VALIDATE in one transaction would
-- hold it as long). For a big live table, add a constraint online beforehand under the same
-- name; this migration then only checks that it is valid:
--   ALTER TABLE outboxkit.inbox_messages
--       ADD CONSTRAINT inbox_messages_key_bytes CHECK (octet_length(key) <= 1024) NOT VALID;
--   ALTER TABLE outboxkit.inbox_messages VALIDATE CONSTRAINT inbox_messages_key_bytes;
DO $limits$
DECLARE
    c record;
    name text;
BEGIN
    FOR c IN
        SELECT * FROM (VALUES
            ('outbox_messages',     'topic',     255),
            ('outbox_messages',     'key',      1024),
            ('outbox_dead_letters', 'topic',     255),
            ('outbox_dead_letters', 'key',      1024),
            ('outbox_key_blocks',   'key',      1024),
            ('outbox_relays',       'relay_id',  255),
            ('inbox_messages',      'consumer',  255),
            ('inbox_messages',      'topic',     255),
            ('inbox_messages',      'key',      1024),
            ('inbox_dead_letters',  'consumer',  255),
            ('inbox_dead_letters',  'topic',     255),
            ('inbox_dead_letters',  'key',      1024)
        ) AS limits(tab, col, max_bytes)
    LOOP
        name := c.tab || '_' || c.col || '_bytes';
        BEGIN
            IF EXISTS (SELECT FROM pg_constraint
                       WHERE conrelid = quote_ident(c.tab)::regclass AND conname = name) THEN
                EXECUTE format('ALTER TABLE %I VALIDATE CONSTRAINT %I', c.tab, name);
            ELSE
                EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (octet_length(%I) <= %s)',
                               c.tab, name, c.col, c.max_bytes);
            END IF;
        EXCEPTION WHEN check_violation THEN
            RAISE EXCEPTION 'outboxkit 0004: rows of %.% have a % of more than % bytes',
                            current_schema(), c.tab, c.col, c.max_bytes
                USING ERRCODE = 'check_violation',
                      HINT = format('Find them with SELECT * FROM %I.%I WHERE octet_length(%I) '
                                    '> %s; publish, purge or prune them, then migrate again.',
                                    current_schema(), c.tab, c.col, c.max_bytes);
        END;
    END LOOP;
END
$limits$;
