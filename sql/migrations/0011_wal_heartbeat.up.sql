-- Capture from the WAL: a heartbeat, so that the slot follows the WAL of other databases
-- while this one is quiet (README "Realtime: how changes are captured", slot hygiene).

-- One batch (realtime_wal_capture is its entry for consumers, realtime_set_mode calls it
-- directly). The slot is advanced at the start of the next batch, to an applied_lsn that has
-- committed: so the slot never gets ahead of what is durable, and a batch that is repeated
-- (its transaction lost, or its advance) skips what was applied. `done`: everything flushed
-- when the batch began has been read. The output settings are pinned, so that the values
-- written (wal2json calls each type's output function in this session) are the same
-- whatever the caller's session says, and as trigger mode writes them with the defaults.
CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_batch(max_changes integer)
RETURNS TABLE (captured bigint, done boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, MDY' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET "TimeZone" = 'UTC' AS $$
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
    IF result.skipped > 0 THEN
        DELETE FROM pyfuncs.realtime_skipped
        WHERE at < now() - (SELECT retention FROM pyfuncs.realtime_state);
        -- (a warning of pyfuncs' own SQLSTATE, which the consumer logs and counts)
        RAISE WARNING 'pyfuncs: realtime capture skipped % transaction(s) it could not capture; '
                      'consumers will be told to resync', result.skipped
            USING ERRCODE = '01PF0', HINT = 'pyfuncs.realtime_skipped says which and why';
    END IF;
    -- Only commits of this database show up in a batch, but the slot keeps the WAL of every
    -- database. With none for a while (this database quiet, others busy), applied_lsn, and
    -- the slot with it, would stay put: the WAL kept would grow, and each batch read all of
    -- it again. So a batch that found nothing while more than 16 MB went by since
    -- applied_lsn commits a logical message of its own (a heartbeat; wal2json is never asked
    -- for messages, but gives the transaction's commit), which the next batch advances to.
    IF result.done AND result.captured = 0 AND result.skipped = 0
       AND flush - state.applied_lsn > 16777216
       AND NOT EXISTS (SELECT FROM pyfuncs.realtime_state s
                       WHERE s.applied_lsn > state.applied_lsn) THEN
        PERFORM pg_logical_emit_message(true, 'pyfuncs-heartbeat', '');
    END IF;
    RETURN QUERY SELECT result.captured, result.done;
    -- (the batch's own commit is in the WAL the next one reads, and writes nothing there)
    IF pg_notification_queue_usage() < 0.5 AND EXISTS (
        SELECT FROM pyfuncs.realtime_state s WHERE s.applied_lsn > state.applied_lsn) THEN
        PERFORM pg_notify('pyfuncs_realtime', '');
    END IF;
END
$$;
