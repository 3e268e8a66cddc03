-- 0020 down: the realtime slot is created at the top level of the transaction again.
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
    PERFORM pg_create_logical_replication_slot(slot, 'wal2json');
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
