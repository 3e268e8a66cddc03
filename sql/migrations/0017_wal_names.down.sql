-- 0017 down: names noted by the batches only; no record of names that left.

CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_names(applied pg_lsn) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    current jsonb;
    doubtful bigint;
BEGIN
    IF applied >= (SELECT s.renamed_lsn FROM pyfuncs.realtime_state s)
       AND EXISTS (SELECT FROM pyfuncs.realtime_wal_doubt) THEN
        DELETE FROM pyfuncs.realtime_wal_doubt;
    END IF;
    IF NOT EXISTS (
        SELECT FROM pyfuncs.realtime_wal_tables() c
        FULL JOIN pyfuncs.realtime_wal_name w ON w.relid = c.relid
        WHERE (c.schema_name, c.table_name, c.enabled)
              IS DISTINCT FROM (w.schema_name, w.table_name, w.enabled)) THEN
        RETURN;
    END IF;
    SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]') INTO current FROM pyfuncs.realtime_wal_tables() t;
    WITH now_named AS (
        SELECT * FROM jsonb_to_recordset(current)
            AS c (relid oid, schema_name text, table_name text, enabled oid)
    ), doubt AS (
        SELECT w.schema_name, w.table_name FROM now_named c
        JOIN pyfuncs.realtime_wal_name w ON w.relid = c.relid
        WHERE (c.schema_name, c.table_name) <> (w.schema_name, w.table_name)
        UNION
        SELECT c.schema_name, c.table_name FROM now_named c
        JOIN pyfuncs.realtime_wal_name w ON w.relid = c.relid
        WHERE (c.schema_name, c.table_name) <> (w.schema_name, w.table_name)
        UNION
        SELECT c.schema_name, c.table_name FROM now_named c
        JOIN pyfuncs.realtime_wal_name w
          ON (w.schema_name, w.table_name) = (c.schema_name, c.table_name)
        WHERE w.relid <> c.relid
    ), noted AS (
        INSERT INTO pyfuncs.realtime_wal_doubt SELECT * FROM doubt ON CONFLICT DO NOTHING
    )
    SELECT count(*) INTO doubtful FROM doubt;
    IF doubtful > 0 THEN
        UPDATE pyfuncs.realtime_state SET renamed_lsn = pg_current_wal_insert_lsn();
    END IF;
    DELETE FROM pyfuncs.realtime_wal_name;
    INSERT INTO pyfuncs.realtime_wal_name (relid, schema_name, table_name, enabled)
    SELECT * FROM jsonb_to_recordset(current)
        AS c (relid oid, schema_name text, table_name text, enabled oid);
END
$$;

CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_names_reset() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM pyfuncs.realtime_wal_doubt;
    DELETE FROM pyfuncs.realtime_wal_name;
    INSERT INTO pyfuncs.realtime_wal_name (relid, schema_name, table_name, enabled)
    SELECT t.relid, t.schema_name, t.table_name, t.enabled FROM pyfuncs.realtime_wal_tables() t;
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
    PERFORM pyfuncs.realtime_partition_triggers(target);
    IF wal THEN
        EXECUTE format('ALTER TABLE %I.%I DISABLE TRIGGER pyfuncs_realtime, '
                       'DISABLE TRIGGER pyfuncs_realtime_truncate', rel.nspname, rel.relname);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION pyfuncs.realtime_new_partitions() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    enabled record;
BEGIN
    FOR enabled IN
        SELECT e.relid FROM pyfuncs.realtime_table e
        WHERE EXISTS (SELECT FROM pg_event_trigger_ddl_commands() d
                      WHERE d.classid = 'pg_class'::regclass
                        AND d.objid IN (SELECT pyfuncs.realtime_tree(e.relid)))
    LOOP
        PERFORM pyfuncs.realtime_partition_triggers(enabled.relid);
    END LOOP;
END
$$;

DROP TABLE pyfuncs.realtime_wal_gone;
