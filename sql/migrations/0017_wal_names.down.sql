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

CREATE OR REPLACE FUNCTION pyfuncs.realtime_set_mode(target text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    current text := (SELECT mode FROM pyfuncs.realtime_state);
    rel record;
    action text := CASE target WHEN 'wal' THEN 'DISABLE' ELSE 'ENABLE' END;
    enough timestamptz;
    pending pg_lsn;
    batch record;
    made boolean := false;
    bound text;
    deadline timestamptz;
BEGIN
    IF target IS NULL OR target NOT IN ('wal', 'trigger') THEN
        RAISE EXCEPTION 'pyfuncs: % is not a capture mode; use wal or trigger',
            coalesce(quote_literal(target), 'NULL') USING ERRCODE = '22023';
    END IF;
    IF current = target THEN
        RETURN;
    END IF;
    -- The switch holds the capture lock until it ends, so a transaction holding one of the
    -- tables (any role can, by naming it in a PREPARE it keeps open) would hold up every
    -- table's capture for as long (found by a red team): the table locks are waited for 10 s
    -- at most (or the caller's shorter lock_timeout), all together, so that a role letting
    -- them go one after the other gains nothing. (Making the slot waits for each transaction
    -- it must see end with the whole bound: README "Choosing the mode".)
    IF current_setting('lock_timeout')::interval NOT BETWEEN interval '1 ms' AND interval '10 s' THEN
        PERFORM set_config('lock_timeout', '10s', true);
    END IF;
    bound := current_setting('lock_timeout');
    deadline := clock_timestamp() + bound::interval;
    FOR rel IN SELECT relid FROM pyfuncs.realtime_table ORDER BY relid LOOP
        IF target = 'trigger' THEN
            PERFORM pyfuncs.realtime_check_key(rel.relid);
            CONTINUE;
        END IF;
        PERFORM pyfuncs.realtime_check_identity(rel.relid);
        IF (SELECT relpersistence FROM pg_class WHERE oid = rel.relid) = 'u' THEN
            RAISE EXCEPTION 'pyfuncs: % is unlogged: its changes are not in the WAL',
                rel.relid::regclass USING ERRCODE = '55000';
        END IF;
    END LOOP;
    IF target = 'wal' AND EXISTS (SELECT FROM pyfuncs.realtime_table) THEN
        -- a slot found in trigger mode is stale (left by a switch ended without its cleanup,
        -- a terminated backend): it would decode from where it stopped, and deliver again
        -- what the triggers captured since
        PERFORM pyfuncs.realtime_wal_drop();
        BEGIN
            made := pyfuncs.realtime_wal_slot();
        EXCEPTION WHEN lock_not_available THEN
            RAISE EXCEPTION 'pyfuncs: making the slot waited % for transactions to end, and '
                            'gave up', bound
                USING ERRCODE = '55P03',
                      HINT = 'making a slot waits for every transaction of the cluster open '
                             'when it starts (prepared ones too: pg_prepared_xacts)';
        END;
    END IF;
    -- a slot made here must not outlive a switch that fails (slots are not transactional:
    -- it would hold WAL for ever)
    BEGIN
        BEGIN
            -- the tables as they are named now (a table renamed since it was enabled, and
            -- another given its old name, must not be taken for it), each partition on its
            -- own (LOCK TABLE of a parent waits for each with the whole lock_timeout)
            FOR rel IN SELECT t.relid FROM pyfuncs.realtime_table e,
                              pyfuncs.realtime_tree(e.relid) t (relid) ORDER BY e.relid LOOP
                PERFORM set_config('lock_timeout', greatest(1, ceil(1000 * extract(epoch FROM
                                   deadline - clock_timestamp())))::bigint || 'ms', true);
                EXECUTE format('LOCK TABLE ONLY %s IN SHARE ROW EXCLUSIVE MODE',
                               rel.relid::regclass);
            END LOOP;
        EXCEPTION WHEN lock_not_available THEN
            RAISE EXCEPTION 'pyfuncs: switching to % waited % for locks (the last on %), '
                            'and gave up', target, bound, rel.relid::regclass
                USING ERRCODE = '55P03',
                HINT = 'a transaction holding that table (pg_locks shows which) must end first';
        END;
        PERFORM pyfuncs.realtime_capture_lock_take();
        IF (SELECT mode FROM pyfuncs.realtime_state) <> current THEN
            RAISE EXCEPTION 'pyfuncs: the capture mode changed meanwhile' USING ERRCODE = '40001';
        END IF;
        FOR rel IN SELECT relid FROM pyfuncs.realtime_table ORDER BY relid LOOP
            EXECUTE format('ALTER TABLE %s %s TRIGGER pyfuncs_realtime, %s TRIGGER '
                           'pyfuncs_realtime_truncate', rel.relid::regclass, action, action);
        END LOOP;
        IF target = 'trigger' THEN
            IF EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = pyfuncs.realtime_slot_name()
                                                          AND wal_status <> 'lost') THEN
                -- every writer has committed (the triggers' locks); wait for their commits to
                -- be flushed, so the slot can read them
                pending := pg_current_wal_insert_lsn();
                enough := clock_timestamp() + interval '30 seconds';
                WHILE pg_current_wal_flush_lsn() < pending LOOP
                    IF clock_timestamp() > enough THEN
                        RAISE EXCEPTION 'pyfuncs: the WAL was not flushed in 30 s' USING ERRCODE = '55000';
                    END IF;
                    PERFORM pg_sleep(0.01);
                END LOOP;
                LOOP
                    SELECT * INTO batch FROM pyfuncs.realtime_wal_batch(100000);
                    EXIT WHEN batch.done;
                END LOOP;
            ELSIF EXISTS (SELECT FROM pyfuncs.realtime_table) THEN
                -- the slot was lost: what it held is gone, consumers must resync
                UPDATE pyfuncs.realtime_state SET pruned_through = greatest(pruned_through,
                    (SELECT coalesce(max(position), 0) + 1 FROM pyfuncs.realtime_commit));
            END IF;
            PERFORM setval('pyfuncs.realtime_position', greatest(
                (SELECT coalesce(max(position), 0) FROM pyfuncs.realtime_commit),
                (SELECT pruned_through FROM pyfuncs.realtime_state),
                (SELECT last_value FROM pyfuncs.realtime_position)));
            UPDATE pyfuncs.realtime_state SET mode = 'trigger';
            PERFORM pyfuncs.realtime_wal_drop();
        ELSE
            -- the transactions the triggers captured take their positions first (the capture
            -- lock keeps batches out), all smaller than commit LSNs
            PERFORM pyfuncs.realtime_sequence();
            -- the slot may be older than this switch: the names are compared with today's
            PERFORM pyfuncs.realtime_wal_names_reset();
            -- (every transaction whose trigger fired has committed: the triggers' locks)
            UPDATE pyfuncs.realtime_state SET mode = 'wal', wal_since = pg_current_wal_insert_lsn();
        END IF;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        IF made THEN
            PERFORM pyfuncs.realtime_wal_drop();
        END IF;
        RAISE;
    END;
END
$$;

DROP FUNCTION pyfuncs.realtime_wal_names_stale();
DROP TABLE pyfuncs.realtime_wal_gone;
