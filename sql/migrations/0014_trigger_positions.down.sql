-- 0014 down: the commit step again; the transactions committed meanwhile without a position
-- take theirs first.

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
        RETURN QUERY SELECT 0::bigint, true;
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
    enough timestamptz := clock_timestamp() + interval '30 seconds';
    pending pg_lsn;
    batch record;
BEGIN
    IF target IS NULL OR target NOT IN ('wal', 'trigger') THEN
        RAISE EXCEPTION 'pyfuncs: % is not a capture mode; use wal or trigger',
            coalesce(quote_literal(target), 'NULL') USING ERRCODE = '22023';
    END IF;
    IF current = target THEN
        RETURN;
    END IF;
    IF target = 'wal' THEN
        FOR rel IN SELECT relid FROM pyfuncs.realtime_table ORDER BY relid LOOP
            PERFORM pyfuncs.realtime_check_identity(rel.relid);
            IF (SELECT relpersistence FROM pg_class WHERE oid = rel.relid) = 'u' THEN
                RAISE EXCEPTION 'pyfuncs: % is unlogged: its changes are not in the WAL',
                    rel.relid::regclass USING ERRCODE = '55000';
            END IF;
        END LOOP;
        IF EXISTS (SELECT FROM pyfuncs.realtime_table) THEN
            PERFORM pyfuncs.realtime_wal_slot();
        END IF;
    END IF;
    PERFORM pyfuncs.realtime_capture_lock_take();
    IF (SELECT mode FROM pyfuncs.realtime_state) <> current THEN
        RAISE EXCEPTION 'pyfuncs: the capture mode changed meanwhile' USING ERRCODE = '40001';
    END IF;
    FOR rel IN SELECT schema_name, table_name FROM pyfuncs.realtime_table ORDER BY relid LOOP
        EXECUTE format('ALTER TABLE %I.%I %s TRIGGER pyfuncs_realtime, %s TRIGGER '
                       'pyfuncs_realtime_truncate', rel.schema_name, rel.table_name,
                       action, action);
    END LOOP;
    IF target = 'trigger' THEN
        IF EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = pyfuncs.realtime_slot_name()
                                                      AND wal_status <> 'lost') THEN
            -- every writer has committed (the triggers' locks); wait for their commits to
            -- be flushed, so the slot can read them
            pending := pg_current_wal_insert_lsn();
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
        -- the slot may be older than this switch: the names are compared with today's
        PERFORM pyfuncs.realtime_wal_names_reset();
        -- (every transaction whose trigger fired has committed: the triggers' locks)
        UPDATE pyfuncs.realtime_state SET mode = 'wal', wal_since = pg_current_wal_insert_lsn();
    END IF;
END
$$;


-- (writers wait, and batches: none is left without a position)
LOCK TABLE pyfuncs.realtime_commit IN SHARE MODE;
SELECT pyfuncs.realtime_capture_lock_take();
SELECT pyfuncs.realtime_sequence();
DROP FUNCTION pyfuncs.realtime_sequence();
DROP INDEX pyfuncs.realtime_commit_pending;
CREATE TABLE pyfuncs.realtime_sequencer ();
CREATE FUNCTION pyfuncs.realtime_commit_position() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    assigned bigint;
BEGIN
    LOCK TABLE pyfuncs.realtime_sequencer IN SHARE UPDATE EXCLUSIVE MODE;
    assigned := nextval('pyfuncs.realtime_position');
    UPDATE pyfuncs.realtime_commit SET position = assigned, committed_at = clock_timestamp()
    WHERE txid = NEW.txid;
    IF pg_notification_queue_usage() < 0.5 THEN
        PERFORM pg_notify('pyfuncs_realtime', '');
    END IF;
    RETURN NULL;
END
$$;

REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_commit_position() FROM PUBLIC;
CREATE CONSTRAINT TRIGGER realtime_commit_position
    AFTER INSERT ON pyfuncs.realtime_commit
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.position IS NULL)
    EXECUTE FUNCTION pyfuncs.realtime_commit_position();

DROP FUNCTION pyfuncs.realtime_check_key(regclass);
DROP FUNCTION pyfuncs.realtime_tree(regclass);
CREATE OR REPLACE FUNCTION pyfuncs.realtime_check_identity(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    identity "char";
BEGIN
    SELECT c.relreplident INTO identity FROM pg_class c WHERE c.oid = target;
    IF identity = 'n' OR (identity = 'd' AND NOT EXISTS (
            SELECT FROM pg_index i WHERE i.indrelid = target AND i.indisprimary)) THEN
        RAISE EXCEPTION 'pyfuncs: % has no replica identity, so the WAL does not say which row '
                        'an UPDATE or DELETE changed', target USING ERRCODE = '55000',
            HINT = format('give it a primary key, or ALTER TABLE %s REPLICA IDENTITY FULL', target);
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
SET plan_cache_mode = force_generic_plan AS $$
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

