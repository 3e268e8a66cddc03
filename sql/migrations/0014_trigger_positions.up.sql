-- 0014 up: trigger mode without a serialised commit step (README "Realtime: the change
-- feed"): writers no longer take a lock at commit and hold it until their commit is flushed,
-- nor NOTIFY (whose queue lock is held as long); the consumer gives committed transactions
-- their positions in batches (realtime_sequence), in the order of their last change; a table
-- whose primary key is DEFERRABLE is refused (realtime_check_key, and realtime_check_identity
-- in 'wal' mode: no replica identity), partitions included; a switch waits at most 10 s for
-- its locks, drops a slot it made when it fails, and finds the tables by their names now; the
-- capture trigger pins the settings values are written with (as the WAL consumer does).

-- (waits for the transactions writing now: their commit step still runs, under the old rule)
DROP TRIGGER realtime_commit_position ON pyfuncs.realtime_commit;
DROP FUNCTION pyfuncs.realtime_commit_position();
DROP TABLE pyfuncs.realtime_sequencer;
CREATE INDEX realtime_commit_pending ON pyfuncs.realtime_commit (txid) WHERE position IS NULL;

CREATE FUNCTION pyfuncs.realtime_sequence() RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    base bigint;
    commits bigint;
    changes bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM pyfuncs.realtime_commit WHERE position IS NULL) THEN
        RETURN 0;
    END IF;
    base := nextval('pyfuncs.realtime_position') - 1;
    WITH given AS (
        UPDATE pyfuncs.realtime_commit c SET position = base + o.rank,
                                             committed_at = clock_timestamp()
        FROM (SELECT p.txid, l.changes,
                     row_number() OVER (ORDER BY l.last NULLS FIRST, p.txid) AS rank
              FROM pyfuncs.realtime_commit p
              CROSS JOIN LATERAL (SELECT max(ch.id) AS last, count(*) AS changes
                                  FROM pyfuncs.realtime_change ch WHERE ch.txid = p.txid) l
              WHERE p.position IS NULL) o
        WHERE c.txid = o.txid
        RETURNING o.changes
    )
    SELECT count(*), coalesce(sum(given.changes), 0) INTO commits, changes FROM given;
    IF commits > 0 THEN
        PERFORM setval('pyfuncs.realtime_position', base + commits);
        IF pg_notification_queue_usage() < 0.5 THEN
            PERFORM pg_notify('pyfuncs_realtime', '');
        END IF;
    END IF;
    RETURN changes;
END
$$;

REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_sequence() FROM PUBLIC;

CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_batch(max_changes integer)
RETURNS TABLE (captured bigint, done boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, MDY' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET "TimeZone" = 'UTC' SET lock_timeout = '10s' AS $$
DECLARE
    state record;
    slot record;
    flush pg_lsn;
    snap pg_snapshot := pg_current_snapshot();
    top bigint := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
    result record;
    failed text;
    failure text;
    detail text;
BEGIN
    IF max_changes IS NULL OR max_changes < 1 THEN
        RAISE EXCEPTION 'pyfuncs: max_changes must be a positive number, not %', max_changes
            USING ERRCODE = '22023';
    END IF;
    PERFORM pyfuncs.realtime_capture_lock_take();
    SELECT s.mode, s.applied_lsn INTO state FROM pyfuncs.realtime_state s;
    IF state.mode <> 'wal' THEN
        RETURN QUERY SELECT pyfuncs.realtime_sequence(), true;
        RETURN;
    END IF;
    SELECT s.slot_name, s.wal_status, s.confirmed_flush_lsn INTO slot
    FROM pg_replication_slots s WHERE s.slot_name = pyfuncs.realtime_slot_name();
    IF NOT EXISTS (SELECT FROM pyfuncs.realtime_table) THEN
        -- nothing to capture: a slot left by an enable that failed half-way holds WAL
        IF slot.slot_name IS NOT NULL THEN
            PERFORM pg_drop_replication_slot(slot.slot_name);
        END IF;
        RETURN QUERY SELECT 0::bigint, true;
        RETURN;
    END IF;
    IF slot.slot_name IS NULL OR slot.wal_status = 'lost' THEN
        RAISE EXCEPTION 'pyfuncs: the realtime replication slot % is %',
            pyfuncs.realtime_slot_name(),
            CASE WHEN slot.slot_name IS NULL THEN 'missing'
                 ELSE 'invalidated: it held more WAL than max_slot_wal_keep_size allows' END
            USING ERRCODE = '55000',
                  HINT = 'pyfuncs.realtime_wal_slot() makes a new one and tells consumers to '
                         'resync; the capture loop does so by itself';
    END IF;
    -- (a stream that realtime_wal_free ended can be back before the slot is read, if its
    -- consumer was already connecting: then it is ended again, up to five times)
    FOR attempt IN 1..5 LOOP
        BEGIN
            PERFORM pyfuncs.realtime_wal_free(slot.slot_name);
            IF slot.confirmed_flush_lsn < state.applied_lsn THEN
                PERFORM pg_replication_slot_advance(slot.slot_name, state.applied_lsn);
            END IF;
            flush := pg_current_wal_flush_lsn();
            -- (after `flush`: a rename committed after this is after every change read now)
            PERFORM pyfuncs.realtime_wal_names(state.applied_lsn);
            BEGIN
                SELECT * INTO result
                FROM pyfuncs.realtime_wal_apply(slot.slot_name, flush, max_changes, snap, top);
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS failed = RETURNED_SQLSTATE, failure = MESSAGE_TEXT,
                                        detail = PG_EXCEPTION_DETAIL;
                IF pyfuncs.realtime_wal_transient(failed) THEN
                    RAISE;
                END IF;
                SELECT * INTO result FROM pyfuncs.realtime_wal_isolate(
                    slot.slot_name, flush, max_changes, snap, top, failed, failure, detail);
            END;
            EXIT;
        EXCEPTION WHEN object_in_use THEN
            IF attempt = 5 THEN
                RAISE;
            END IF;
        END;
    END LOOP;
    PERFORM pyfuncs.realtime_wal_finish(state.applied_lsn, flush, result.captured,
                                        result.skipped, result.done);
    RETURN QUERY SELECT result.captured, result.done;
END
$$;


CREATE OR REPLACE FUNCTION pyfuncs.realtime_set_mode(target text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    current text := (SELECT mode FROM pyfuncs.realtime_state);
    rel record;
    action text := CASE target WHEN 'wal' THEN 'DISABLE' ELSE 'ENABLE' END;
    enough timestamptz;
    pending pg_lsn;
    batch record;
    made boolean := false;
    bound text;
    deadline timestamptz;
BEGIN
    IF target IS NULL OR target NOT IN ('wal', 'trigger') THEN
        RAISE EXCEPTION 'pyfuncs: % is not a capture mode; use wal or trigger',
            coalesce(quote_literal(target), 'NULL') USING ERRCODE = '22023';
    END IF;
    IF current = target THEN
        RETURN;
    END IF;
    -- The switch holds the capture lock until it ends, so a transaction holding one of the
    -- tables (any role can, by naming it in a PREPARE it keeps open) would hold up every
    -- table's capture for as long (found by a red team): the table locks are waited for 10 s
    -- at most (or the caller's shorter lock_timeout), all together, so that a role letting
    -- them go one after the other gains nothing. (Making the slot waits for each transaction
    -- it must see end with the whole bound: README "Choosing the mode".)
    IF current_setting('lock_timeout')::interval NOT BETWEEN interval '1 ms' AND interval '10 s' THEN
        PERFORM set_config('lock_timeout', '10s', true);
    END IF;
    bound := current_setting('lock_timeout');
    deadline := clock_timestamp() + bound::interval;
    FOR rel IN SELECT relid FROM pyfuncs.realtime_table ORDER BY relid LOOP
        IF target = 'trigger' THEN
            PERFORM pyfuncs.realtime_check_key(rel.relid);
            CONTINUE;
        END IF;
        PERFORM pyfuncs.realtime_check_identity(rel.relid);
        IF (SELECT relpersistence FROM pg_class WHERE oid = rel.relid) = 'u' THEN
            RAISE EXCEPTION 'pyfuncs: % is unlogged: its changes are not in the WAL',
                rel.relid::regclass USING ERRCODE = '55000';
        END IF;
    END LOOP;
    IF target = 'wal' AND EXISTS (SELECT FROM pyfuncs.realtime_table) THEN
        -- a slot found in trigger mode is stale (left by a switch ended without its cleanup,
        -- a terminated backend): it would decode from where it stopped, and deliver again
        -- what the triggers captured since
        PERFORM pyfuncs.realtime_wal_drop();
        BEGIN
            made := pyfuncs.realtime_wal_slot();
        EXCEPTION WHEN lock_not_available THEN
            RAISE EXCEPTION 'pyfuncs: making the slot waited % for transactions to end, and '
                            'gave up', bound
                USING ERRCODE = '55P03',
                      HINT = 'making a slot waits for every transaction of the cluster open '
                             'when it starts (prepared ones too: pg_prepared_xacts)';
        END;
    END IF;
    -- a slot made here must not outlive a switch that fails (slots are not transactional:
    -- it would hold WAL for ever)
    BEGIN
        BEGIN
            -- the tables as they are named now (a table renamed since it was enabled, and
            -- another given its old name, must not be taken for it), each partition on its
            -- own (LOCK TABLE of a parent waits for each with the whole lock_timeout)
            FOR rel IN SELECT t.relid FROM pyfuncs.realtime_table e,
                              pyfuncs.realtime_tree(e.relid) t (relid) ORDER BY e.relid LOOP
                PERFORM set_config('lock_timeout', greatest(1, ceil(1000 * extract(epoch FROM
                                   deadline - clock_timestamp())))::bigint || 'ms', true);
                EXECUTE format('LOCK TABLE ONLY %s IN SHARE ROW EXCLUSIVE MODE',
                               rel.relid::regclass);
            END LOOP;
        EXCEPTION WHEN lock_not_available THEN
            RAISE EXCEPTION 'pyfuncs: switching to % waited % for locks (the last on %), '
                            'and gave up', target, bound, rel.relid::regclass
                USING ERRCODE = '55P03',
                HINT = 'a transaction holding that table (pg_locks shows which) must end first';
        END;
        PERFORM pyfuncs.realtime_capture_lock_take();
        IF (SELECT mode FROM pyfuncs.realtime_state) <> current THEN
            RAISE EXCEPTION 'pyfuncs: the capture mode changed meanwhile' USING ERRCODE = '40001';
        END IF;
        FOR rel IN SELECT relid FROM pyfuncs.realtime_table ORDER BY relid LOOP
            EXECUTE format('ALTER TABLE %s %s TRIGGER pyfuncs_realtime, %s TRIGGER '
                           'pyfuncs_realtime_truncate', rel.relid::regclass, action, action);
        END LOOP;
        IF target = 'trigger' THEN
            IF EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = pyfuncs.realtime_slot_name()
                                                          AND wal_status <> 'lost') THEN
                -- every writer has committed (the triggers' locks); wait for their commits to
                -- be flushed, so the slot can read them
                pending := pg_current_wal_insert_lsn();
                enough := clock_timestamp() + interval '30 seconds';
                WHILE pg_current_wal_flush_lsn() < pending LOOP
                    IF clock_timestamp() > enough THEN
                        RAISE EXCEPTION 'pyfuncs: the WAL was not flushed in 30 s' USING ERRCODE = '55000';
                    END IF;
                    PERFORM pg_sleep(0.01);
                END LOOP;
                LOOP
                    SELECT * INTO batch FROM pyfuncs.realtime_wal_batch(100000);
                    EXIT WHEN batch.done;
                END LOOP;
            ELSIF EXISTS (SELECT FROM pyfuncs.realtime_table) THEN
                -- the slot was lost: what it held is gone, consumers must resync
                UPDATE pyfuncs.realtime_state SET pruned_through = greatest(pruned_through,
                    (SELECT coalesce(max(position), 0) + 1 FROM pyfuncs.realtime_commit));
            END IF;
            PERFORM setval('pyfuncs.realtime_position', greatest(
                (SELECT coalesce(max(position), 0) FROM pyfuncs.realtime_commit),
                (SELECT pruned_through FROM pyfuncs.realtime_state),
                (SELECT last_value FROM pyfuncs.realtime_position)));
            UPDATE pyfuncs.realtime_state SET mode = 'trigger';
            PERFORM pyfuncs.realtime_wal_drop();
        ELSE
            -- the transactions the triggers captured take their positions first (the capture
            -- lock keeps batches out), all smaller than commit LSNs
            PERFORM pyfuncs.realtime_sequence();
            -- the slot may be older than this switch: the names are compared with today's
            PERFORM pyfuncs.realtime_wal_names_reset();
            -- (every transaction whose trigger fired has committed: the triggers' locks)
            UPDATE pyfuncs.realtime_state SET mode = 'wal', wal_since = pg_current_wal_insert_lsn();
        END IF;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        IF made THEN
            PERFORM pyfuncs.realtime_wal_drop();
        END IF;
        RAISE;
    END;
END
$$;


CREATE FUNCTION pyfuncs.realtime_tree(target regclass) RETURNS SETOF oid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE tree (relid) AS (
        SELECT target::oid
        UNION ALL
        SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid
        JOIN pg_class c ON c.oid = i.inhrelid AND c.relispartition)
    SELECT relid FROM tree
$$;


CREATE OR REPLACE FUNCTION pyfuncs.realtime_check_identity(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    part record;
BEGIN
    -- (each partition has a replica identity of its own)
    FOR part IN SELECT c.oid, c.relreplident FROM pyfuncs.realtime_tree(target) t (relid)
                JOIN pg_class c ON c.oid = t.relid LOOP
        -- (PostgreSQL takes a DEFERRABLE primary key for no replica identity)
        -- (an index named as the identity and then dropped leaves 'i' and no identity)
        IF part.relreplident = 'n' OR (part.relreplident = 'd' AND NOT EXISTS (
                SELECT FROM pg_index i WHERE i.indrelid = part.oid AND i.indisprimary
                                         AND i.indimmediate))
           OR (part.relreplident = 'i' AND NOT EXISTS (
                SELECT FROM pg_index i WHERE i.indrelid = part.oid AND i.indisreplident)) THEN
            RAISE EXCEPTION 'pyfuncs: % has no replica identity, so the WAL does not say which '
                            'row an UPDATE or DELETE changed', part.oid::regclass
                USING ERRCODE = '55000',
                      HINT = format('give it a primary key that is not DEFERRABLE, or ALTER '
                                    'TABLE %s REPLICA IDENTITY FULL', part.oid::regclass);
        END IF;
    END LOOP;
END
$$;


CREATE FUNCTION pyfuncs.realtime_check_key(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    offender regclass;
BEGIN
    -- (a partition's key may be DEFERRABLE where its parent's is not)
    SELECT t.relid::regclass INTO offender
    FROM pyfuncs.realtime_tree(target) t (relid) JOIN pg_index i ON i.indrelid = t.relid
    WHERE i.indisprimary AND NOT i.indimmediate LIMIT 1;
    IF offender IS NOT NULL THEN
        RAISE EXCEPTION 'pyfuncs: the primary key of % is DEFERRABLE, so trigger capture cannot '
                        'keep its rows'' changes in commit order', offender
            USING ERRCODE = '55000',
                  HINT = 'make the key NOT DEFERRABLE, or capture from the WAL (pyfuncs realtime '
                         'mode wal; with REPLICA IDENTITY FULL)';
    END IF;
END
$$;


CREATE OR REPLACE FUNCTION pyfuncs.enable_realtime(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel record;
    wal boolean := (SELECT mode = 'wal' FROM pyfuncs.realtime_state);
BEGIN
    SELECT n.nspname, c.relname, c.relkind, c.relpersistence INTO rel
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = target;
    IF rel.nspname = 'pyfuncs' OR rel.nspname = 'information_schema'
       OR starts_with(rel.nspname, 'pg_') THEN
        RAISE EXCEPTION 'pyfuncs: % belongs to pyfuncs or to the system, realtime captures '
                        'application tables only', target USING ERRCODE = '42501';
    END IF;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'pyfuncs: % is not a table, realtime captures tables only', target
            USING ERRCODE = '42809';
    END IF;
    IF rel.relpersistence = 't' THEN
        RAISE EXCEPTION 'pyfuncs: % is a temporary table, which no other session can read',
            target USING ERRCODE = '42809';
    END IF;
    IF rel.relpersistence = 'u' AND wal THEN
        RAISE EXCEPTION 'pyfuncs: % is unlogged: its changes are not in the WAL', target
            USING ERRCODE = '55000',
                  HINT = 'make it logged (ALTER TABLE ... SET LOGGED), or capture with triggers';
    END IF;
    IF EXISTS (SELECT 1 FROM pyfuncs.realtime_table WHERE relid = target) THEN
        RETURN;
    END IF;
    IF NOT wal THEN
        PERFORM pyfuncs.realtime_check_key(target);
    END IF;
    IF wal THEN
        PERFORM pyfuncs.realtime_check_identity(target);
        PERFORM pyfuncs.realtime_wal_slot();
        -- a consumer that found no table enabled drops the slot, under this lock
        PERFORM pyfuncs.realtime_capture_lock_take();
        IF NOT EXISTS (SELECT FROM pg_replication_slots
                       WHERE slot_name = pyfuncs.realtime_slot_name()) THEN
            RAISE EXCEPTION 'pyfuncs: the realtime slot was dropped while % was being enabled',
                target USING ERRCODE = '40001', HINT = 'enable it again';
        END IF;
    END IF;
    INSERT INTO pyfuncs.realtime_table (relid, schema_name, table_name)
    VALUES (target, rel.nspname, rel.relname);
    IF wal THEN
        INSERT INTO pyfuncs.realtime_wal_name (relid, schema_name, table_name, enabled)
        SELECT t.relid, t.schema_name, t.table_name, t.enabled
        FROM pyfuncs.realtime_wal_tables() t WHERE t.enabled = target
        ON CONFLICT DO NOTHING;
    END IF;
    EXECUTE format('CREATE TRIGGER pyfuncs_realtime AFTER INSERT OR UPDATE OR DELETE ON %I.%I '
                   'FOR EACH ROW EXECUTE FUNCTION pyfuncs.realtime_capture()',
                   rel.nspname, rel.relname);
    EXECUTE format('CREATE TRIGGER pyfuncs_realtime_truncate AFTER TRUNCATE ON %I.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION pyfuncs.realtime_capture()',
                   rel.nspname, rel.relname);
    IF wal THEN
        EXECUTE format('ALTER TABLE %I.%I DISABLE TRIGGER pyfuncs_realtime, '
                       'DISABLE TRIGGER pyfuncs_realtime_truncate', rel.nspname, rel.relname);
    END IF;
END
$$;


CREATE OR REPLACE FUNCTION pyfuncs.realtime_capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- one plan for every row: custom plans (they fold the CASEs) would be planned row by row
SET plan_cache_mode = force_generic_plan
-- values written whatever the writer's session says (a key in a writer's TimeZone never
-- matched the one the gateway reads: a red team), as the WAL consumer writes them
SET "DateStyle" = 'ISO, MDY' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET "TimeZone" = 'UTC' AS $$
DECLARE
    enabled oid := TG_RELID;
    written bigint;
BEGIN
    LOOP
        INSERT INTO pyfuncs.realtime_change (txid, schema_name, table_name, op, new_row, old_row)
        SELECT pg_current_xact_id(), t.schema_name, t.table_name, TG_OP,
               CASE WHEN TG_LEVEL = 'STATEMENT' OR TG_OP = 'DELETE' THEN NULL
                    WHEN plain.builtin THEN to_jsonb(NEW)
                    ELSE pyfuncs.realtime_image(NEW, TG_RELID) END,
               CASE WHEN TG_LEVEL = 'STATEMENT' OR TG_OP = 'INSERT' THEN NULL
                    WHEN plain.builtin THEN to_jsonb(OLD)
                    ELSE pyfuncs.realtime_image(OLD, TG_RELID) END
        FROM pyfuncs.realtime_table t, (
            -- dropped columns have type 0; a domain over a built-in type takes
            -- realtime_image too, which converts it as its base type
            SELECT NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = TG_RELID
                               AND a.attnum > 0 AND a.atttypid >= 16384)
        ) AS plain (builtin)
        WHERE t.relid = enabled;
        GET DIAGNOSTICS written = ROW_COUNT;
        EXIT WHEN written > 0;
        -- not enabled itself: a partition of an enabled table?
        SELECT t.relid INTO enabled FROM pyfuncs.realtime_table t
        WHERE t.relid IN (SELECT a.relid FROM pg_partition_ancestors(TG_RELID) a);
        IF enabled IS NULL THEN
            RAISE EXCEPTION 'pyfuncs: % is not enabled for realtime', TG_RELID::regclass
                USING ERRCODE = '42501',
                      HINT = 'capture runs only on the tables pyfuncs.enable_realtime enabled';
        END IF;
    END LOOP;
    INSERT INTO pyfuncs.realtime_commit (txid) VALUES (pg_current_xact_id())
    ON CONFLICT (txid) DO NOTHING;
    RETURN NULL;
END
$$;

