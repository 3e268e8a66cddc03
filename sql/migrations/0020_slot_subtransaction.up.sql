-- 0020 up: the realtime slot is created in a subtransaction (see schema.sql).
-- Make this database's slot if it is missing or was invalidated (it held more WAL than
-- max_slot_wal_keep_size allows), and say whether it made one. Changes committed while there
-- was no slot are not in the log: if realtime was already capturing from the WAL, every
-- consumer is told to resync (pruned_through moves past every position handed out). Creating
-- a slot must come before the transaction writes anything (PostgreSQL's rule), and waits for
-- the transactions running then to end. Runs as pyfuncs' owner: callers need no REPLICATION.
-- The slot is created in a subtransaction of its own: at the top level of the transaction,
-- PostgreSQL 15 failed about one creation in thirty with an internal error ("snapshot
-- reference ... is not owned by resource owner TopTransaction") while another database
-- created its slot and a third was created or dropped; in a subtransaction, none in
-- hundreds. Should it still fail so, it is tried again (five times in all).
-- Its settings are pinned (as every function that writes the log from the WAL), so that
-- nothing it writes depends on its caller's.
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
