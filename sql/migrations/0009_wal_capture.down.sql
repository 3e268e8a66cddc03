-- 0009 down: back to trigger capture only. Tables captured from the WAL get their triggers
-- enabled; changes the consumer has not applied yet are not captured.
DO $$
DECLARE
    rel record;
BEGIN
    FOR rel IN SELECT schema_name, table_name FROM pyfuncs.realtime_table LOOP
        EXECUTE format('ALTER TABLE %I.%I ENABLE TRIGGER pyfuncs_realtime, ENABLE TRIGGER '
                       'pyfuncs_realtime_truncate', rel.schema_name, rel.table_name);
    END LOOP;
END
$$;
SELECT pyfuncs.realtime_wal_drop();
SELECT setval('pyfuncs.realtime_position', greatest(
    (SELECT coalesce(max(position), 0) FROM pyfuncs.realtime_commit),
    (SELECT last_value FROM pyfuncs.realtime_position)));
DROP TRIGGER realtime_commit_position ON pyfuncs.realtime_commit;
CREATE CONSTRAINT TRIGGER realtime_commit_position
    AFTER INSERT ON pyfuncs.realtime_commit
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION pyfuncs.realtime_commit_position();
DROP FUNCTION pyfuncs.realtime_set_mode(text);
DROP FUNCTION pyfuncs.realtime_wal_capture(integer);
DROP FUNCTION pyfuncs.realtime_wal_slot();
DROP FUNCTION pyfuncs.realtime_wal_drop();
DROP FUNCTION pyfuncs.realtime_check_identity(regclass);
DROP FUNCTION pyfuncs.realtime_wal_value(text, jsonb);
DROP FUNCTION pyfuncs.realtime_slot_name();
DROP TABLE pyfuncs.realtime_capture_lock;
ALTER TABLE pyfuncs.realtime_state DROP COLUMN mode, DROP COLUMN applied_lsn;

-- pyfuncs' own tables and the system's are not application tables.
CREATE OR REPLACE FUNCTION pyfuncs.enable_realtime(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel record;
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
    IF EXISTS (SELECT 1 FROM pyfuncs.realtime_table WHERE relid = target) THEN
        RETURN;
    END IF;
    INSERT INTO pyfuncs.realtime_table (relid, schema_name, table_name)
    VALUES (target, rel.nspname, rel.relname);
    EXECUTE format('CREATE TRIGGER pyfuncs_realtime AFTER INSERT OR UPDATE OR DELETE ON %I.%I '
                   'FOR EACH ROW EXECUTE FUNCTION pyfuncs.realtime_capture()',
                   rel.nspname, rel.relname);
    EXECUTE format('CREATE TRIGGER pyfuncs_realtime_truncate AFTER TRUNCATE ON %I.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION pyfuncs.realtime_capture()',
                   rel.nspname, rel.relname);
END
$$;

CREATE OR REPLACE FUNCTION pyfuncs.disable_realtime(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel record;
BEGIN
    SELECT schema_name, table_name INTO rel FROM pyfuncs.realtime_table WHERE relid = target;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    EXECUTE format('DROP TRIGGER pyfuncs_realtime ON %I.%I', rel.schema_name, rel.table_name);
    EXECUTE format('DROP TRIGGER pyfuncs_realtime_truncate ON %I.%I',
                   rel.schema_name, rel.table_name);
    DELETE FROM pyfuncs.realtime_table WHERE relid = target;
END
$$;

