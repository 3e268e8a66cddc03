-- 0016 down: no trigger on partitions; a partition's TRUNCATE in 'trigger' mode not captured.

DROP EVENT TRIGGER pyfuncs_realtime_partitions;
DO $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT n.nspname, c.relname FROM pg_trigger g
        JOIN pg_class c ON c.oid = g.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE g.tgname = 'pyfuncs_realtime_partition_truncate'
    LOOP
        EXECUTE format('DROP TRIGGER pyfuncs_realtime_partition_truncate ON %I.%I',
                       part.nspname, part.relname);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION pyfuncs.realtime_sequence() RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    base bigint;
    commits bigint;
    changes bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM pyfuncs.realtime_commit WHERE position IS NULL) THEN
        RETURN 0;
    END IF;
    base := nextval('pyfuncs.realtime_position') - 1;
    WITH given AS (
        UPDATE pyfuncs.realtime_commit c SET position = base + o.rank,
                                             committed_at = clock_timestamp()
        FROM (SELECT p.txid, l.changes,
                     row_number() OVER (ORDER BY l.last NULLS FIRST, p.txid) AS rank
              FROM pyfuncs.realtime_commit p
              CROSS JOIN LATERAL (SELECT max(ch.id) AS last, count(*) AS changes
                                  FROM pyfuncs.realtime_change ch WHERE ch.txid = p.txid) l
              WHERE p.position IS NULL) o
        WHERE c.txid = o.txid
        RETURNING o.changes
    )
    SELECT count(*), coalesce(sum(given.changes), 0) INTO commits, changes FROM given;
    IF commits > 0 THEN
        PERFORM setval('pyfuncs.realtime_position', base + commits);
        IF pg_notification_queue_usage() < 0.5 THEN
            PERFORM pg_notify('pyfuncs_realtime', '');
        END IF;
    END IF;
    RETURN changes;
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
    IF wal THEN
        EXECUTE format('ALTER TABLE %I.%I DISABLE TRIGGER pyfuncs_realtime, '
                       'DISABLE TRIGGER pyfuncs_realtime_truncate', rel.nspname, rel.relname);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION pyfuncs.disable_realtime(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel record;
BEGIN
    SELECT n.nspname, c.relname INTO rel
    FROM pyfuncs.realtime_table e
    JOIN pg_class c ON c.oid = e.relid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE e.relid = target;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    EXECUTE format('DROP TRIGGER pyfuncs_realtime ON %I.%I', rel.nspname, rel.relname);
    EXECUTE format('DROP TRIGGER pyfuncs_realtime_truncate ON %I.%I', rel.nspname, rel.relname);
    DELETE FROM pyfuncs.realtime_table WHERE relid = target;
    IF NOT EXISTS (SELECT FROM pyfuncs.realtime_table) THEN
        PERFORM pyfuncs.realtime_wal_drop();
    END IF;
END
$$;

DROP FUNCTION pyfuncs.realtime_new_partitions();
DROP FUNCTION pyfuncs.realtime_partition_triggers(regclass);
DROP FUNCTION pyfuncs.realtime_partition_truncate();
DROP TABLE pyfuncs.realtime_resync;
