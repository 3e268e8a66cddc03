-- 0013 up: the streaming consumer's fixed cost per write (README "Realtime: how changes are
-- captured"): the functions realtime_wal_write calls on every write keep their plans
-- (PL/pgSQL; a SQL function is planned again on every call), and realtime_wal_write plans
-- each statement once (plan_cache_mode); a transaction is looked up in the log only when it
-- committed before the switch to 'wal' (realtime_state.wal_since), which is what a plan kept
-- from when the log was empty would otherwise read whole for every change.

ALTER TABLE pyfuncs.realtime_state ADD COLUMN wal_since pg_lsn NOT NULL DEFAULT '0/0';
-- (a database capturing from the WAL already: its transactions so far may be looked up)
UPDATE pyfuncs.realtime_state SET wal_since = pg_current_wal_insert_lsn() WHERE mode = 'wal';

CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_tables()
RETURNS TABLE (relid oid, schema_name text, table_name text, enabled oid)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
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
    ORDER BY c.oid, p.level;
END
$$;

CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_add_tables() RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT string_agg(regexp_replace(n.schema_name, '([^[:alnum:]_])', '\\\1', 'g') || '.'
                          || regexp_replace(n.table_name, '([^[:alnum:]_])', '\\\1', 'g'), ','
                          ORDER BY n.schema_name, n.table_name)
        FROM (SELECT w.schema_name, w.table_name FROM pyfuncs.realtime_wal_name w
              UNION SELECT d.schema_name, d.table_name FROM pyfuncs.realtime_wal_doubt d) n
    );
END
$$;

CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_write(
    tables text, lsns bigint[], xids bigint[], datas text[]
) RETURNS TABLE (applied bigint, processed bigint, captured bigint, skipped bigint,
                 capturing boolean, add_tables text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, MDY' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET "TimeZone" = 'UTC' SET lock_timeout = '10s'
-- one plan for every call: custom plans of realtime_wal_apply's query, made again on every
-- call, cost more than a small batch's whole work
SET plan_cache_mode = force_generic_plan AS $$
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

CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_apply(
    slot name, upto pg_lsn, max_changes integer, snap pg_snapshot, top bigint,
    lsns bigint[] DEFAULT NULL, xids bigint[] DEFAULT NULL, datas text[] DEFAULT NULL
) RETURNS TABLE (captured bigint, done boolean, skipped bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state record;
BEGIN
    SELECT s.applied_lsn, s.renamed_lsn, s.wal_since INTO state FROM pyfuncs.realtime_state s;
    RETURN QUERY
    WITH raw AS MATERIALIZED (
        -- every row wal2json writes begins {"action":"X": only changes are made jsonb, and
        -- only those of at most 64 MB
        SELECT p.ord, p.lsn, substr(p.data, 12, 1) AS action,
               octet_length(p.data) > 67108864 AS oversized,
               CASE WHEN substr(p.data, 12, 1) IN ('I', 'U', 'D', 'T')
                         AND octet_length(p.data) <= 67108864 THEN p.data::jsonb END AS data,
               -- the full transaction id from the 32-bit one, so that a transaction the
               -- triggers captured (while switching modes) is known, and one not yet visible
               -- is seen as such
               pyfuncs.realtime_wal_txid(p.xid, top) AS txid
        FROM (
            SELECT d.lsn, d.xid::text::bigint, d.data, d.ord
            FROM pg_logical_slot_peek_changes(slot, upto, max_changes,
                     'format-version', '2', 'include-timestamp', '1', 'include-typmod', '0',
                     'include-domain-data-type', '1',
                     'add-tables', coalesce(pyfuncs.realtime_wal_add_tables(), ''),
                     'add-msg-prefixes', 'pyfuncs-' || gen_random_uuid())
                 WITH ORDINALITY AS d (lsn, xid, data, ord)
            WHERE slot IS NOT NULL
            UNION ALL
            SELECT '0/0'::pg_lsn + g.lsn, g.xid, g.data, g.ord
            FROM unnest(lsns, xids, datas) WITH ORDINALITY AS g (lsn, xid, data, ord)
            WHERE slot IS NULL
        ) AS p (lsn, xid, data, ord)
    ), framed AS MATERIALIZED (
        -- a transaction's rows come together, B ... C: each row's commit is the first C
        -- at or after it (none for a transaction cut short by max_changes)
        SELECT r.ord, r.txid, r.data, r.action, r.oversized,
               min(r.lsn) FILTER (WHERE r.action = 'C') OVER (ORDER BY r.ord DESC) AS commit_lsn
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
        FROM framed f WHERE f.data IS NOT NULL
    ), resolved AS MATERIALIZED (
        -- captured under the name it was enabled with, a partition under its enabled
        -- table's; a name no longer captured (the old name of a renamed table) resolves to
        -- nothing
        SELECT n.s, n.t, e.schema_name, e.table_name,
               EXISTS (SELECT FROM pyfuncs.realtime_wal_doubt d
                       WHERE d.schema_name = n.s AND d.table_name = n.t) AS doubtful
        FROM named n
        LEFT JOIN pyfuncs.realtime_wal_name w ON w.schema_name = n.s AND w.table_name = n.t
        LEFT JOIN pyfuncs.realtime_table e ON e.relid = w.enabled
    ), change AS MATERIALIZED (
        SELECT f.txid, f.commit_lsn, (f.data->>'timestamp')::timestamptz AS committed_at,
               f.ord, e.schema_name, e.table_name,
               CASE f.action WHEN 'I' THEN 'INSERT' WHEN 'U' THEN 'UPDATE'
                             WHEN 'D' THEN 'DELETE' ELSE 'TRUNCATE' END AS op,
               w.new_row, w.old_row, w.refused
        FROM framed f
        JOIN resolved e ON e.s = f.data->>'schema' AND e.t = f.data->>'table'
        CROSS JOIN bounds b
        -- wal2json's column lists as row objects; only the types realtime_wal_value
        -- converts (arrays, json, timestamps, bytea: a cheap test of the name first) go
        -- through it, and this is written out here rather than as a function, for it is
        -- most of the consumer's work (a function call per row doubled it)
        -- (a json value jsonb refuses is left out, and its transaction skipped: see `skip`)
        CROSS JOIN LATERAL (
            SELECT jsonb_object_agg(c->>'name', CASE
                       WHEN v.refused IS NOT NULL THEN NULL
                       WHEN right(c->>'type', 1) = ']'
                            OR left(c->>'type', 4) IN ('json', 'time', 'byte')
                       THEN pyfuncs.realtime_wal_value(c->>'type', c->'value')
                       ELSE c->'value' END) FILTER (WHERE k.which = 'columns') AS new_row,
                   jsonb_object_agg(c->>'name', CASE
                       WHEN v.refused IS NOT NULL THEN NULL
                       WHEN right(c->>'type', 1) = ']'
                            OR left(c->>'type', 4) IN ('json', 'time', 'byte')
                       THEN pyfuncs.realtime_wal_value(c->>'type', c->'value')
                       ELSE c->'value' END) FILTER (WHERE k.which = 'identity') AS old_row,
                   min(v.refused) AS refused
            FROM (VALUES ('columns'), ('identity')) AS k (which)
            CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN f.data ? k.which
                                                         THEN f.data->k.which
                                                         ELSE '[]' END) AS c
            CROSS JOIN LATERAL (
                -- (what jsonb may refuse: an escape, or a number numeric cannot hold: an
                -- exponent of five digits or more, or more than 16,383 digits, which only a
                -- long value with a long run of digits has)
                SELECT CASE WHEN c->>'type' = 'json'
                                 AND (strpos(c->>'value', '\u') > 0
                                      OR c->>'value' ~ '[eE][-+]?[0-9]{5}'
                                      OR (octet_length(c->>'value') > 16383
                                          AND c->>'value' ~ '[0-9]{255}'))
                            THEN pyfuncs.realtime_wal_json_refusal(c->>'value') END
            ) AS v (refused)
        ) w
        WHERE f.action IN ('I', 'U', 'D', 'T') AND e.schema_name IS NOT NULL
          AND f.commit_lsn > state.applied_lsn AND f.commit_lsn <= b.last
          -- not in the log already (captured by its triggers: only a transaction committed
          -- before the switch to 'wal' can be); a subquery, not NOT EXISTS: it probes the
          -- primary key for each change, where an anti-join could read the whole table, and
          -- behind CASE, which is never reordered: a plan kept from when the log was empty
          -- would read all of it for every change
          AND CASE WHEN f.commit_lsn > state.wal_since THEN true
                   ELSE (SELECT count(*) FROM pyfuncs.realtime_commit c WHERE c.txid = f.txid) = 0
              END
    ), skip AS MATERIALIZED (
        -- transactions not captured, with why: a change over 64 MB, a change under a name in
        -- doubt (committed before the rename was noticed), a json value jsonb refuses
        SELECT r.txid, min(r.commit_lsn) AS commit_lsn, min(r.reason) AS reason
        FROM (
            SELECT f.txid, f.commit_lsn,
                   CASE WHEN f.oversized THEN 'a change of more than 64 MB'
                        ELSE 'a table it changed was renamed, or its name taken, before the '
                             'change was read' END
            FROM framed f
            LEFT JOIN resolved e ON e.s = f.data->>'schema' AND e.t = f.data->>'table'
            CROSS JOIN bounds b
            WHERE f.action IN ('I', 'U', 'D', 'T')
              AND f.commit_lsn > state.applied_lsn AND f.commit_lsn <= b.last
              AND (f.oversized OR (e.doubtful AND f.commit_lsn <= state.renamed_lsn))
              AND CASE WHEN f.commit_lsn > state.wal_since THEN true
                       ELSE (SELECT count(*) FROM pyfuncs.realtime_commit c
                             WHERE c.txid = f.txid) = 0
                  END
            UNION ALL
            SELECT c.txid, c.commit_lsn, c.refused FROM change c WHERE c.refused IS NOT NULL
        ) AS r (txid, commit_lsn, reason)
        GROUP BY r.txid
    ), commits AS (
        INSERT INTO pyfuncs.realtime_commit (txid, position, committed_at)
        SELECT DISTINCT ON (c.txid) c.txid, (c.commit_lsn - '0/0')::bigint, c.committed_at
        FROM change c WHERE NOT EXISTS (SELECT FROM skip s WHERE s.txid = c.txid)
    ), changes AS (
        INSERT INTO pyfuncs.realtime_change (txid, schema_name, table_name, op, new_row, old_row)
        SELECT c.txid, c.schema_name, c.table_name, c.op,
               -- an UPDATE leaves out the TOASTed columns it did not change: the old row
               -- has them when the replica identity is FULL
               CASE WHEN c.op = 'UPDATE' THEN coalesce(c.old_row, '{}') || c.new_row
                    WHEN c.op = 'INSERT' THEN c.new_row END,
               CASE WHEN c.op IN ('UPDATE', 'DELETE') THEN c.old_row END
        FROM change c WHERE NOT EXISTS (SELECT FROM skip s WHERE s.txid = c.txid)
        ORDER BY c.commit_lsn, c.ord
        RETURNING 1
    ), recorded AS (
        INSERT INTO pyfuncs.realtime_skipped (lsn, txid, reason)
        SELECT s.commit_lsn, s.txid, s.reason FROM skip s
        ON CONFLICT (lsn) DO NOTHING
    ), applied AS (
        -- written when something was captured or skipped, when the batch was full (there
        -- is more to read after it), or when enough WAL without changes of enabled tables
        -- went by to be worth releasing; not otherwise, since each write is a transaction
        -- for the next batch to read: an idle consumer writes nothing
        UPDATE pyfuncs.realtime_state SET applied_lsn = b.last,
            pruned_through = greatest(pruned_through,
                                      (SELECT max(s.commit_lsn - '0/0')::bigint FROM skip s))
        FROM bounds b
        WHERE b.last IS NOT NULL
          AND (EXISTS (SELECT FROM change) OR EXISTS (SELECT FROM skip)
               OR (SELECT count(*) FROM raw) >= max_changes OR b.last - applied_lsn > 1048576)
    )
    SELECT (SELECT count(*) FROM changes),
           (SELECT count(*) FROM raw) < max_changes AND (SELECT cut.lsn IS NULL FROM cut),
           (SELECT count(*) FROM skip);
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
    PERFORM pyfuncs.realtime_capture_lock_take();
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
        -- the slot may be older than this switch: the names are compared with today's
        PERFORM pyfuncs.realtime_wal_names_reset();
        -- (every transaction whose trigger fired has committed: the triggers' locks)
        UPDATE pyfuncs.realtime_state SET mode = 'wal', wal_since = pg_current_wal_insert_lsn();
    END IF;
END
$$;
