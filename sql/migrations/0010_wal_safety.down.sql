-- 0010 down: capture from the WAL as 0009 left it (README "Realtime: how changes are
-- captured" of that release): the functions of 0009 again, and 0010's tables and functions
-- gone.

CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_value(type text, value jsonb) RETURNS jsonb
LANGUAGE sql STABLE
RETURN CASE
    WHEN pg_catalog.jsonb_typeof(value) IS DISTINCT FROM 'string' THEN value
    WHEN type IN ('json', 'jsonb') THEN (value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.jsonb
    WHEN type = 'timestamp with time zone'
        THEN pg_catalog.to_jsonb((value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.timestamptz)
    WHEN type = 'timestamp without time zone'
        THEN pg_catalog.to_jsonb((value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.timestamp)
    WHEN type IN ('smallint[]', 'integer[]', 'bigint[]')
        THEN pg_catalog.to_jsonb((value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.int8[])
    WHEN type = 'numeric[]'
        THEN pg_catalog.to_jsonb((value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.numeric[])
    WHEN type = 'real[]'
        THEN pg_catalog.to_jsonb((value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.float4[])
    WHEN type = 'double precision[]'
        THEN pg_catalog.to_jsonb((value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.float8[])
    WHEN type = 'boolean[]'
        THEN pg_catalog.to_jsonb((value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.bool[])
    WHEN type IN ('text[]', 'character varying[]', 'character[]', 'name[]')
        THEN pg_catalog.to_jsonb((value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.text[])
    ELSE value
END;

CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_slot() RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    slot name := pyfuncs.realtime_slot_name();
    status text;
BEGIN
    LOCK TABLE pyfuncs.realtime_capture_lock IN SHARE UPDATE EXCLUSIVE MODE;
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

CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_capture(max_changes integer DEFAULT 10000)
RETURNS TABLE (captured bigint, done boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state record;
    slot record;
    flush pg_lsn;
    snap pg_snapshot := pg_current_snapshot();
    top bigint := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
BEGIN
    IF max_changes IS NULL OR max_changes < 1 THEN
        RAISE EXCEPTION 'pyfuncs: max_changes must be a positive number, not %', max_changes
            USING ERRCODE = '22023';
    END IF;
    LOCK TABLE pyfuncs.realtime_capture_lock IN SHARE UPDATE EXCLUSIVE MODE;
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
    RETURN QUERY
    WITH raw AS MATERIALIZED (
        SELECT p.ord, p.lsn, p.data::jsonb AS data,
               -- the full transaction id from the 32-bit one (it is older than any running
               -- now), so that a transaction the triggers captured (while switching modes)
               -- is known
               (top - (((top & 4294967295) - p.xid::text::bigint + 4294967296) % 4294967296))
               ::text::xid8 AS txid
        FROM pg_logical_slot_peek_changes(slot.slot_name, flush, max_changes,
                 'format-version', '2', 'include-timestamp', '1', 'include-typmod', '0',
                 'filter-tables', 'pyfuncs.*') WITH ORDINALITY AS p (lsn, xid, data, ord)
    ), framed AS MATERIALIZED (
        -- a transaction's rows come together, B ... C: each row's commit is the first C
        -- at or after it (none for a transaction cut short by max_changes)
        SELECT r.ord, r.txid, r.data, r.data->>'action' AS action,
               min(r.lsn) FILTER (WHERE r.data->>'action' = 'C')
                   OVER (ORDER BY r.ord DESC) AS commit_lsn
        FROM raw r
    ), cut AS (
        -- a transaction whose commit is in the WAL but not yet visible (it is between the
        -- two) waits for the next batch, with every later one: the log must never be ahead
        -- of the tables that a new subscriber reads its snapshot of
        SELECT min(f.commit_lsn) AS lsn FROM framed f
        WHERE f.action = 'C' AND f.commit_lsn > state.applied_lsn
          AND NOT pg_visible_in_snapshot(f.txid, snap)
    ), bounds AS (
        SELECT max(f.commit_lsn) AS last FROM framed f, cut
        WHERE f.action = 'C' AND f.commit_lsn > state.applied_lsn
          AND (cut.lsn IS NULL OR f.commit_lsn < cut.lsn)
    ), named AS MATERIALIZED (
        SELECT DISTINCT f.data->>'schema' AS s, f.data->>'table' AS t
        FROM framed f WHERE f.action IN ('I', 'U', 'D', 'T')
    ), resolved AS MATERIALIZED (
        -- captured under the name it was enabled with, a partition under its enabled table's
        SELECT n.s, n.t, e.schema_name, e.table_name
        FROM named n
        CROSS JOIN LATERAL (SELECT to_regclass(format('%I.%I', n.s, n.t)) AS rel) r
        JOIN LATERAL (SELECT e.schema_name, e.table_name FROM pyfuncs.realtime_table e
                      WHERE e.relid = r.rel
                         OR e.relid IN (SELECT a.relid FROM pg_partition_ancestors(r.rel) a)
                      LIMIT 1) e ON true
    ), change AS MATERIALIZED (
        SELECT f.txid, f.commit_lsn, (f.data->>'timestamp')::timestamptz AS committed_at,
               f.ord, e.schema_name, e.table_name,
               CASE f.action WHEN 'I' THEN 'INSERT' WHEN 'U' THEN 'UPDATE'
                             WHEN 'D' THEN 'DELETE' ELSE 'TRUNCATE' END AS op,
               w.new_row, w.old_row
        FROM framed f
        JOIN resolved e ON e.s = f.data->>'schema' AND e.t = f.data->>'table'
        CROSS JOIN bounds b
        -- wal2json's column lists as row objects; only the types realtime_wal_value
        -- converts (arrays, json, timestamps: a cheap test of the name first) go through it,
        -- and this is written out here rather than as a function, for it is most of the
        -- consumer's work (a function call per row doubled it)
        CROSS JOIN LATERAL (
            SELECT jsonb_object_agg(c->>'name', CASE
                       WHEN right(c->>'type', 1) = ']' OR left(c->>'type', 4) IN ('json', 'time')
                       THEN pyfuncs.realtime_wal_value(c->>'type', c->'value')
                       ELSE c->'value' END) FILTER (WHERE k.which = 'columns') AS new_row,
                   jsonb_object_agg(c->>'name', CASE
                       WHEN right(c->>'type', 1) = ']' OR left(c->>'type', 4) IN ('json', 'time')
                       THEN pyfuncs.realtime_wal_value(c->>'type', c->'value')
                       ELSE c->'value' END) FILTER (WHERE k.which = 'identity') AS old_row
            FROM (VALUES ('columns'), ('identity')) AS k (which)
            CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN f.data ? k.which
                                                         THEN f.data->k.which
                                                         ELSE '[]' END) AS c
        ) w
        WHERE f.action IN ('I', 'U', 'D', 'T')
          AND f.commit_lsn > state.applied_lsn AND f.commit_lsn <= b.last
          -- (a subquery, not NOT EXISTS: it probes the primary key for each change, where
          -- an anti-join could read the whole table)
          AND (SELECT count(*) FROM pyfuncs.realtime_commit c WHERE c.txid = f.txid) = 0
    ), commits AS (
        INSERT INTO pyfuncs.realtime_commit (txid, position, committed_at)
        SELECT DISTINCT ON (c.txid) c.txid, (c.commit_lsn - '0/0')::bigint, c.committed_at
        FROM change c
    ), changes AS (
        INSERT INTO pyfuncs.realtime_change (txid, schema_name, table_name, op, new_row, old_row)
        SELECT c.txid, c.schema_name, c.table_name, c.op,
               -- an UPDATE leaves out the TOASTed columns it did not change: the old row
               -- has them when the replica identity is FULL
               CASE WHEN c.op = 'UPDATE' THEN coalesce(c.old_row, '{}') || c.new_row
                    WHEN c.op = 'INSERT' THEN c.new_row END,
               CASE WHEN c.op IN ('UPDATE', 'DELETE') THEN c.old_row END
        FROM change c ORDER BY c.commit_lsn, c.ord
        RETURNING 1
    ), applied AS (
        -- written when something was captured, when the batch was full (there is more
        -- to read after it), or when enough WAL without changes of enabled tables went by
        -- to be worth releasing; not otherwise, since each write is a transaction for the
        -- next batch to read: an idle consumer writes nothing
        UPDATE pyfuncs.realtime_state SET applied_lsn = b.last FROM bounds b
        WHERE b.last IS NOT NULL
          AND (EXISTS (SELECT FROM change) OR (SELECT count(*) FROM raw) >= max_changes
               OR b.last - applied_lsn > 1048576)
    )
    SELECT (SELECT count(*) FROM changes),
           (SELECT count(*) FROM raw) < max_changes AND (SELECT cut.lsn IS NULL FROM cut);
    -- (the batch's own commit is in the WAL the next one reads, and writes nothing there)
    IF pg_notification_queue_usage() < 0.5 AND EXISTS (
        SELECT FROM pyfuncs.realtime_state s WHERE s.applied_lsn > state.applied_lsn) THEN
        PERFORM pg_notify('pyfuncs_realtime', '');
    END IF;
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
    IF wal THEN
        PERFORM pyfuncs.realtime_check_identity(target);
        PERFORM pyfuncs.realtime_wal_slot();
        -- a consumer that found no table enabled drops the slot, under this lock
        LOCK TABLE pyfuncs.realtime_capture_lock IN SHARE UPDATE EXCLUSIVE MODE;
        IF NOT EXISTS (SELECT FROM pg_replication_slots
                       WHERE slot_name = pyfuncs.realtime_slot_name()) THEN
            RAISE EXCEPTION 'pyfuncs: the realtime slot was dropped while % was being enabled',
                target USING ERRCODE = '40001', HINT = 'enable it again';
        END IF;
    END IF;
    INSERT INTO pyfuncs.realtime_table (relid, schema_name, table_name)
    VALUES (target, rel.nspname, rel.relname);
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

CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_drop() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    LOCK TABLE pyfuncs.realtime_capture_lock IN SHARE UPDATE EXCLUSIVE MODE;
    PERFORM pg_drop_replication_slot(slot_name) FROM pg_replication_slots
    WHERE slot_name = pyfuncs.realtime_slot_name();
END
$$;

CREATE OR REPLACE FUNCTION pyfuncs.realtime_set_mode(target text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    current text := (SELECT mode FROM pyfuncs.realtime_state);
    rel record;
    action text := CASE target WHEN 'wal' THEN 'DISABLE' ELSE 'ENABLE' END;
    enough timestamptz := clock_timestamp() + interval '30 seconds';
    pending pg_lsn;
    batch record;
BEGIN
    IF target IS NULL OR target NOT IN ('wal', 'trigger') THEN
        RAISE EXCEPTION 'pyfuncs: % is not a capture mode; use wal or trigger',
            coalesce(quote_literal(target), 'NULL') USING ERRCODE = '22023';
    END IF;
    IF current = target THEN
        RETURN;
    END IF;
    IF target = 'wal' THEN
        FOR rel IN SELECT relid FROM pyfuncs.realtime_table ORDER BY relid LOOP
            PERFORM pyfuncs.realtime_check_identity(rel.relid);
            IF (SELECT relpersistence FROM pg_class WHERE oid = rel.relid) = 'u' THEN
                RAISE EXCEPTION 'pyfuncs: % is unlogged: its changes are not in the WAL',
                    rel.relid::regclass USING ERRCODE = '55000';
            END IF;
        END LOOP;
        IF EXISTS (SELECT FROM pyfuncs.realtime_table) THEN
            PERFORM pyfuncs.realtime_wal_slot();
        END IF;
    END IF;
    LOCK TABLE pyfuncs.realtime_capture_lock IN SHARE UPDATE EXCLUSIVE MODE;
    IF (SELECT mode FROM pyfuncs.realtime_state) <> current THEN
        RAISE EXCEPTION 'pyfuncs: the capture mode changed meanwhile' USING ERRCODE = '40001';
    END IF;
    FOR rel IN SELECT schema_name, table_name FROM pyfuncs.realtime_table ORDER BY relid LOOP
        EXECUTE format('ALTER TABLE %I.%I %s TRIGGER pyfuncs_realtime, %s TRIGGER '
                       'pyfuncs_realtime_truncate', rel.schema_name, rel.table_name,
                       action, action);
    END LOOP;
    IF target = 'trigger' THEN
        IF EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = pyfuncs.realtime_slot_name()
                                                      AND wal_status <> 'lost') THEN
            -- every writer has committed (the triggers' locks); wait for their commits to
            -- be flushed, so the slot can read them
            pending := pg_current_wal_insert_lsn();
            WHILE pg_current_wal_flush_lsn() < pending LOOP
                IF clock_timestamp() > enough THEN
                    RAISE EXCEPTION 'pyfuncs: the WAL was not flushed in 30 s' USING ERRCODE = '55000';
                END IF;
                PERFORM pg_sleep(0.01);
            END LOOP;
            LOOP
                SELECT * INTO batch FROM pyfuncs.realtime_wal_capture(100000);
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
        UPDATE pyfuncs.realtime_state SET mode = 'wal';
    END IF;
END
$$;

DROP FUNCTION pyfuncs.realtime_wal_batch(integer);
DROP FUNCTION pyfuncs.realtime_wal_isolate(
    name, pg_lsn, integer, pg_snapshot, bigint, text, text, text);
DROP FUNCTION pyfuncs.realtime_wal_probe(name, pg_lsn, integer, pg_snapshot, bigint);
DROP FUNCTION pyfuncs.realtime_wal_apply(name, pg_lsn, integer, pg_snapshot, bigint);
DROP FUNCTION pyfuncs.realtime_wal_transient(text);
DROP FUNCTION pyfuncs.realtime_wal_json_refusal(text);
DROP FUNCTION pyfuncs.realtime_capture_lock_take();
DROP FUNCTION pyfuncs.realtime_wal_names_reset();
DROP FUNCTION pyfuncs.realtime_wal_names(pg_lsn);
DROP FUNCTION pyfuncs.realtime_wal_tables();
DROP TABLE pyfuncs.realtime_skipped;
DROP TABLE pyfuncs.realtime_wal_doubt;
DROP TABLE pyfuncs.realtime_wal_name;
ALTER TABLE pyfuncs.realtime_state DROP COLUMN renamed_lsn;
