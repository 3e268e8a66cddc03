-- 0021 up: enabling a table in wal mode, and making the slot, wait 10 s at most under the
-- capture lock (a login role's open transaction or PREPARE held every table's capture up).
CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_slot() RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, MDY' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET "TimeZone" = 'UTC' AS $$
DECLARE
    slot name := pyfuncs.realtime_slot_name();
    status text;
BEGIN
    PERFORM pyfuncs.realtime_capture_lock_take();
    SELECT s.wal_status INTO status FROM pg_replication_slots s WHERE s.slot_name = slot;
    IF FOUND AND status IS DISTINCT FROM 'lost' THEN
        RETURN false;
    END IF;
    IF FOUND THEN
        PERFORM pg_drop_replication_slot(slot);
    END IF;
    IF current_setting('wal_level') <> 'logical' THEN
        RAISE EXCEPTION 'pyfuncs: capture from the WAL needs wal_level = logical, and it is %',
            current_setting('wal_level') USING ERRCODE = '55000',
            HINT = 'set wal_level = logical and restart PostgreSQL, or capture with triggers: '
                   'pyfuncs realtime mode trigger';
    END IF;
    -- making the slot waits for every transaction of the cluster open as it begins, under
    -- the capture lock: for 10 s at most (or the caller's shorter lock_timeout; a login
    -- role's open transaction held every table's capture up for as long as it liked)
    IF current_setting('lock_timeout')::interval NOT BETWEEN interval '1 ms' AND interval '10 s' THEN
        PERFORM set_config('lock_timeout', '10s', true);
    END IF;
    FOR attempt IN 1..5 LOOP
        BEGIN
            PERFORM pg_create_logical_replication_slot(slot, 'wal2json');
            EXIT;
        EXCEPTION
            WHEN internal_error THEN
                IF attempt = 5 THEN
                    RAISE;
                END IF;
            WHEN lock_not_available THEN
                RAISE EXCEPTION 'pyfuncs: making the realtime slot waited % for the '
                                'transactions open as it began, and gave up',
                                current_setting('lock_timeout')
                    USING ERRCODE = '55P03',
                          HINT = 'making a slot waits for every transaction of the cluster open '
                                 'when it starts (prepared ones too: pg_prepared_xacts); try '
                                 'again when they have ended';
        END;
    END LOOP;
    PERFORM pyfuncs.realtime_wal_names_reset();
    IF EXISTS (SELECT FROM pyfuncs.realtime_state WHERE mode = 'wal')
       AND EXISTS (SELECT FROM pyfuncs.realtime_table) THEN
        UPDATE pyfuncs.realtime_state SET pruned_through = greatest(
            pruned_through, (SELECT coalesce(max(position), 0) + 1 FROM pyfuncs.realtime_commit));
        RAISE WARNING 'pyfuncs: the realtime slot was %, changes committed meanwhile were not '
                      'captured; consumers will be told to resync',
            CASE WHEN status IS NULL THEN 'missing' ELSE 'invalidated' END;
    END IF;
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION pyfuncs.enable_realtime(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel record;
    wal boolean := (SELECT mode = 'wal' FROM pyfuncs.realtime_state);
    made boolean := false;
    part oid;
    bound text;
    deadline timestamptz;
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
        -- From here the capture lock is held (realtime_wal_slot takes it), so every wait is
        -- bounded: 10 s at most for all (or the caller's shorter lock_timeout). The triggers
        -- are made on the table and its partitions, which any role can hold (by naming the
        -- table in a PREPARE it keeps open): a red team's held every table's capture up for
        -- as long as it liked. They are locked first, then, within what is left of the bound.
        IF current_setting('lock_timeout')::interval NOT BETWEEN interval '1 ms' AND interval '10 s' THEN
            PERFORM set_config('lock_timeout', '10s', true);
        END IF;
        bound := current_setting('lock_timeout');
        deadline := clock_timestamp() + bound::interval;
        made := pyfuncs.realtime_wal_slot();
    END IF;
    -- a slot made here must not outlive an enabling that fails (slots are not transactional:
    -- it would hold WAL for ever)
    BEGIN
        IF wal THEN
            BEGIN
                FOR part IN SELECT t FROM pyfuncs.realtime_tree(target) t ORDER BY 1 LOOP
                    PERFORM set_config('lock_timeout', greatest(1, ceil(1000 * extract(epoch FROM
                                       deadline - clock_timestamp())))::bigint || 'ms', true);
                    EXECUTE format('LOCK TABLE ONLY %s IN SHARE ROW EXCLUSIVE MODE', part::regclass);
                END LOOP;
            EXCEPTION WHEN lock_not_available THEN
                RAISE EXCEPTION 'pyfuncs: enabling % waited % for locks (the last on %), and gave up',
                                target, bound, part::regclass
                    USING ERRCODE = '55P03',
                          HINT = 'a transaction holding that table (pg_locks shows which) must end first';
            END;
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
            PERFORM pyfuncs.realtime_wal_names((SELECT s.applied_lsn FROM pyfuncs.realtime_state s));
        END IF;
        EXECUTE format('CREATE TRIGGER pyfuncs_realtime AFTER INSERT OR UPDATE OR DELETE ON %I.%I '
                       'FOR EACH ROW EXECUTE FUNCTION pyfuncs.realtime_capture()',
                       rel.nspname, rel.relname);
        EXECUTE format('CREATE TRIGGER pyfuncs_realtime_truncate AFTER TRUNCATE ON %I.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION pyfuncs.realtime_capture()',
                       rel.nspname, rel.relname);
        PERFORM pyfuncs.realtime_partition_triggers(target);
        IF wal THEN
            EXECUTE format('ALTER TABLE %I.%I DISABLE TRIGGER pyfuncs_realtime, '
                           'DISABLE TRIGGER pyfuncs_realtime_truncate', rel.nspname, rel.relname);
        END IF;
    EXCEPTION WHEN OTHERS THEN
        IF made THEN
            PERFORM pyfuncs.realtime_wal_drop();
        END IF;
        RAISE;
    END;
END
$$;
