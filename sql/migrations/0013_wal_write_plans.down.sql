-- 0013 down: the functions as 0012 left them.

CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_tables()
RETURNS TABLE (relid oid, schema_name text, table_name text, enabled oid)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT DISTINCT ON (c.oid) c.oid, n.nspname::text, c.relname::text, e.relid
    FROM pyfuncs.realtime_table e
    CROSS JOIN LATERAL (
        WITH RECURSIVE tree (relid, level) AS (
            SELECT e.relid, 0
            UNION ALL
            -- (partitions only: a table that merely inherits is a table of its own, which
            -- trigger mode does not capture either; each partition has one parent, so this
            -- is a tree, walked once, where multiple inheritance would multiply the paths)
            SELECT i.inhrelid, t.level + 1 FROM tree t
            JOIN pg_inherits i ON i.inhparent = t.relid
            JOIN pg_class k ON k.oid = i.inhrelid AND k.relispartition
        )
        SELECT tree.relid, tree.level FROM tree
    ) p (relid, level)
    JOIN pg_class c ON c.oid = p.relid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    ORDER BY c.oid, p.level
$$;

CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_add_tables() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (
    SELECT string_agg(regexp_replace(n.schema_name, '([^[:alnum:]_])', '\\\1', 'g') || '.'
                      || regexp_replace(n.table_name, '([^[:alnum:]_])', '\\\1', 'g'), ','
                      ORDER BY n.schema_name, n.table_name)
    FROM (SELECT w.schema_name, w.table_name FROM pyfuncs.realtime_wal_name w
          UNION SELECT d.schema_name, d.table_name FROM pyfuncs.realtime_wal_doubt d) n
);

CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_write(
    tables text, lsns bigint[], xids bigint[], datas text[]
) RETURNS TABLE (applied bigint, processed bigint, captured bigint, skipped bigint,
                 capturing boolean, add_tables text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, MDY' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET "TimeZone" = 'UTC' SET lock_timeout = '10s' AS $$
DECLARE
    state record;
    snap pg_snapshot := pg_current_snapshot();
    top bigint := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
    flush pg_lsn := pg_current_wal_flush_lsn();
    wanted text;
    result record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles r WHERE r.rolname = session_user
                   AND (r.rolreplication OR r.rolsuper)) THEN
        RAISE EXCEPTION 'pyfuncs: the realtime change log is written from the replication '
                        'stream by a role with REPLICATION, and % has not', session_user
            USING ERRCODE = '42501';
    END IF;
    IF lsns IS NULL OR xids IS NULL OR datas IS NULL OR cardinality(lsns) <> cardinality(xids)
       OR cardinality(lsns) <> cardinality(datas) THEN
        RAISE EXCEPTION 'pyfuncs: lsns, xids and datas must be arrays of one length'
            USING ERRCODE = '22023';
    END IF;
    PERFORM pyfuncs.realtime_capture_lock_take();
    SELECT s.mode, s.applied_lsn INTO state FROM pyfuncs.realtime_state s;
    IF state.mode <> 'wal' OR NOT EXISTS (SELECT FROM pyfuncs.realtime_table) THEN
        RETURN QUERY SELECT (state.applied_lsn - '0/0')::bigint, (state.applied_lsn - '0/0')::bigint,
                            0::bigint, 0::bigint, false, NULL::text;
        RETURN;
    END IF;
    -- (every row given was flushed before this call began: a rename committed after the
    -- names are compared here is after all of them, as in realtime_wal_batch)
    PERFORM pyfuncs.realtime_wal_names(state.applied_lsn);
    wanted := pyfuncs.realtime_wal_add_tables();
    IF tables IS DISTINCT FROM wanted THEN
        RETURN QUERY SELECT (state.applied_lsn - '0/0')::bigint, (state.applied_lsn - '0/0')::bigint,
                            0::bigint, 0::bigint, true, wanted;
        RETURN;
    END IF;
    SELECT * INTO result FROM pyfuncs.realtime_wal_apply(
        NULL, NULL, cardinality(lsns) + 1, snap, top, lsns, xids, datas);
    PERFORM pyfuncs.realtime_wal_finish(state.applied_lsn, flush, result.captured,
                                        result.skipped, result.done);
    RETURN QUERY
    SELECT (s.applied_lsn - '0/0')::bigint,
           CASE WHEN result.done THEN greatest((s.applied_lsn - '0/0')::bigint,
                                               (SELECT max(l) FROM unnest(lsns) l))
                ELSE (s.applied_lsn - '0/0')::bigint END,
           result.captured, result.skipped, true, wanted
    FROM pyfuncs.realtime_state s;
END
$$;
