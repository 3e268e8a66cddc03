-- 0016 up: in 'trigger' mode, a TRUNCATE of a partition of an enabled table (but not of
-- the table) makes consumers resync, as in 'wal' mode: a statement trigger on every
-- partition, existing and made later (an event trigger); README "Realtime: how changes
-- are captured".

-- A transaction that truncated a partition of an enabled table but not the table itself: in
-- 'trigger' mode its consumers read the tables again (pruned_through moves to its position
-- when it is given one, realtime_sequence), as in 'wal' mode (0015).
CREATE TABLE pyfuncs.realtime_resync (
    txid xid8 PRIMARY KEY
);

-- The statement trigger of every partition of an enabled table (PostgreSQL gives partitions
-- their parent's row triggers, not its TRUNCATE trigger, so a partition's TRUNCATE fired
-- nothing and clients kept its rows). A TRUNCATE of the enabled table reaches its partitions
-- too, after its own trigger logged it: the partitions' are excused while the table's last
-- change in the transaction is that TRUNCATE.
CREATE FUNCTION pyfuncs.realtime_partition_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    enabled record;
BEGIN
    IF (SELECT s.mode FROM pyfuncs.realtime_state s) <> 'trigger' THEN
        RETURN NULL;  -- (from the WAL: realtime_wal_apply)
    END IF;
    SELECT t.schema_name, t.table_name INTO enabled FROM pyfuncs.realtime_table t
    WHERE t.relid IN (SELECT a.relid FROM pg_partition_ancestors(TG_RELID) a)
      AND t.relid <> TG_RELID
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;  -- detached since, or its table disabled
    END IF;
    IF (SELECT c.op = 'TRUNCATE' FROM pyfuncs.realtime_change c
        WHERE c.txid = pg_current_xact_id() AND c.schema_name = enabled.schema_name
          AND c.table_name = enabled.table_name
        ORDER BY c.id DESC LIMIT 1) THEN
        RETURN NULL;
    END IF;
    INSERT INTO pyfuncs.realtime_commit (txid) VALUES (pg_current_xact_id())
    ON CONFLICT (txid) DO NOTHING;
    INSERT INTO pyfuncs.realtime_resync (txid) VALUES (pg_current_xact_id())
    ON CONFLICT (txid) DO NOTHING;
    RETURN NULL;
END
$$;

REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_partition_truncate() FROM PUBLIC;

-- That trigger on every partition of `target` (and theirs) that lacks it.
CREATE FUNCTION pyfuncs.realtime_partition_triggers(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT n.nspname, c.relname FROM pyfuncs.realtime_tree(target) t (relid)
        JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE t.relid <> target
          AND NOT EXISTS (SELECT FROM pg_trigger g WHERE g.tgrelid = t.relid
                          AND g.tgname = 'pyfuncs_realtime_partition_truncate')
    LOOP
        EXECUTE format('CREATE TRIGGER pyfuncs_realtime_partition_truncate AFTER TRUNCATE '
                       'ON %I.%I FOR EACH STATEMENT EXECUTE FUNCTION '
                       'pyfuncs.realtime_partition_truncate()', part.nspname, part.relname);
    END LOOP;
END
$$;

REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_partition_triggers(regclass) FROM PUBLIC;

-- A partition created or attached later under an enabled table gets it too: run as pyfuncs'
-- owner (whoever makes the partition may not attach pyfuncs' trigger functions), for any
-- role's CREATE TABLE or ALTER TABLE; it reads the catalog and names only partitions of
-- enabled tables.
CREATE FUNCTION pyfuncs.realtime_new_partitions() RETURNS event_trigger
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

REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_new_partitions() FROM PUBLIC;

CREATE EVENT TRIGGER pyfuncs_realtime_partitions ON ddl_command_end
WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
EXECUTE FUNCTION pyfuncs.realtime_new_partitions();

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
    -- a transaction that truncated a partition but not its table: consumers behind it read
    -- the tables again (realtime_partition_truncate)
    WITH resync AS (
        DELETE FROM pyfuncs.realtime_resync r USING pyfuncs.realtime_commit c
        WHERE c.txid = r.txid AND c.position IS NOT NULL
        RETURNING c.position
    )
    UPDATE pyfuncs.realtime_state
    SET pruned_through = greatest(pruned_through, (SELECT max(position) FROM resync))
    WHERE EXISTS (SELECT FROM resync);
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
    PERFORM pyfuncs.realtime_partition_triggers(target);
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
    part record;
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
    FOR part IN
        SELECT n.nspname, c.relname FROM pg_trigger g
        JOIN pg_class c ON c.oid = g.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE g.tgname = 'pyfuncs_realtime_partition_truncate'
          AND g.tgrelid IN (SELECT pyfuncs.realtime_tree(target))
    LOOP
        EXECUTE format('DROP TRIGGER pyfuncs_realtime_partition_truncate ON %I.%I',
                       part.nspname, part.relname);
    END LOOP;
    DELETE FROM pyfuncs.realtime_table WHERE relid = target;
    IF NOT EXISTS (SELECT FROM pyfuncs.realtime_table) THEN
        PERFORM pyfuncs.realtime_wal_drop();
    END IF;
END
$$;

-- the partitions of tables enabled already
SELECT pyfuncs.realtime_partition_triggers(relid) FROM pyfuncs.realtime_table;
