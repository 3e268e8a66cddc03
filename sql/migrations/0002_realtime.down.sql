-- 0002 down: stops capturing on every enabled table, then removes the change feed.
DO $$
DECLARE
    enabled oid;
BEGIN
    FOR enabled IN SELECT relid FROM pyfuncs.realtime_table LOOP
        PERFORM pyfuncs.disable_realtime(enabled::regclass);
    END LOOP;
END
$$;
DROP FUNCTION pyfuncs.prune_realtime(interval);
DROP FUNCTION pyfuncs.disable_realtime(regclass);
DROP FUNCTION pyfuncs.enable_realtime(regclass);
DROP TABLE pyfuncs.realtime_change, pyfuncs.realtime_commit, pyfuncs.realtime_state,
    pyfuncs.realtime_table;
DROP FUNCTION pyfuncs.realtime_commit_position();
DROP FUNCTION pyfuncs.realtime_capture();
DROP SEQUENCE pyfuncs.realtime_position;
