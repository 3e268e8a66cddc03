-- 0021 down: as 0020 left them.
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
    FOR attempt IN 1..5 LOOP
        BEGIN
            PERFORM pg_create_logical_replication_slot(slot, 'wal2json');
            EXIT;
        EXCEPTION WHEN internal_error THEN
            IF attempt = 5 THEN
                RAISE;
            END IF;
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
END
$$;
