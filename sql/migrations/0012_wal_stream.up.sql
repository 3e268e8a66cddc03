-- 0012 up: a streaming consumer of the WAL (README "Realtime: how changes are captured"):
-- realtime_wal_apply also takes rows given to it, realtime_wal_write applies what a consumer
-- streaming the slot received, and reading or dropping the slot ends a stream holding it;
-- disable_realtime finds a renamed table's triggers; a transaction id read from the WAL is
-- made full on the right side of the snapshot's xmax (realtime_wal_txid).

-- The full transaction id of a 32-bit one read from the WAL, given `top`, the xmax of a
-- snapshot taken when the batch began: the one within 2^31 of it, either side. A transaction
-- whose commit is flushed but not yet visible can be at or after that xmax (which is the
-- latest completed transaction's, plus one), and taking it as older would put it an epoch
-- back, where it would count as visible. A standard body: bound when created.
CREATE FUNCTION pyfuncs.realtime_wal_txid(xid bigint, top bigint) RETURNS xid8
LANGUAGE sql IMMUTABLE
RETURN (top + ((xid - (top & 4294967295) + 6442450944) % 4294967296 - 2147483648))::text::xid8;
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_txid(bigint, bigint) FROM PUBLIC;

-- wal2json's list of the tables to decode (its add-tables option): the captured tables' names
-- and the names in doubt, as schema.table with every character but letters, digits and _
-- escaped by a backslash (its rule for the separators, spaces, quotes, dots and *), in a
-- fixed order: a streaming consumer's list is stale when it differs (realtime_wal_write).
CREATE FUNCTION pyfuncs.realtime_wal_add_tables() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN (
    SELECT string_agg(regexp_replace(n.schema_name, '([^[:alnum:]_])', '\\\1', 'g') || '.'
                      || regexp_replace(n.table_name, '([^[:alnum:]_])', '\\\1', 'g'), ','
                      ORDER BY n.schema_name, n.table_name)
    FROM (SELECT w.schema_name, w.table_name FROM pyfuncs.realtime_wal_name w
          UNION SELECT d.schema_name, d.table_name FROM pyfuncs.realtime_wal_doubt d) n
);
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_add_tables() FROM PUBLIC;

-- Free the slot from a walsender streaming it (a streaming consumer, pyfuncs/capture.py) by
-- ending that backend: reading the slot with SQL functions, and dropping it, need it free.
-- The consumer connects again by itself. Whoever calls this must be allowed to end the
-- walsender's backend (its role, pg_signal_backend, or a superuser).
CREATE FUNCTION pyfuncs.realtime_wal_free(slot name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    holder record;
BEGIN
    -- (pg_stat_activity is otherwise read once per transaction: a walsender started since
    -- would not be in it)
    PERFORM pg_stat_clear_snapshot();
    SELECT a.pid, a.usename INTO holder
    FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid
    WHERE s.slot_name = slot AND a.backend_type = 'walsender';
    IF NOT FOUND THEN
        RETURN;
    END IF;
    BEGIN
        IF pg_terminate_backend(holder.pid, 10000) THEN
            RETURN;
        END IF;
    EXCEPTION WHEN insufficient_privilege THEN
        NULL;
    END;
    RAISE EXCEPTION 'pyfuncs: the realtime slot % is being streamed by backend % (role %), '
                    'which could not be ended', slot, holder.pid, holder.usename
        USING ERRCODE = '55006',
              HINT = 'stop that consumer, or act as a role that may end its backend '
                     '(a member of pg_signal_backend, or of its role)';
END
$$;
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_free(name) FROM PUBLIC;

-- What a batch does last (realtime_wal_batch, realtime_wal_write), once it has applied what
-- it read: `before` is applied_lsn when it began, `flush` the end of the WAL it read up to.
CREATE FUNCTION pyfuncs.realtime_wal_finish(
    before pg_lsn, flush pg_lsn, captured bigint, skipped bigint, done boolean
) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF skipped > 0 THEN
        DELETE FROM pyfuncs.realtime_skipped
        WHERE at < now() - (SELECT retention FROM pyfuncs.realtime_state);
        -- (a warning of pyfuncs' own SQLSTATE, which the consumer logs and counts)
        RAISE WARNING 'pyfuncs: realtime capture skipped % transaction(s) it could not capture; '
                      'consumers will be told to resync', skipped
            USING ERRCODE = '01PF0', HINT = 'pyfuncs.realtime_skipped says which and why';
    END IF;
    -- Only commits of this database show up in a batch, but the slot keeps the WAL of every
    -- database. With none for a while (this database quiet, others busy), applied_lsn, and
    -- the slot with it, would stay put: the WAL kept would grow, and each batch read all of
    -- it again. So a batch that found nothing while more than 16 MB went by since
    -- applied_lsn commits a logical message of its own (a heartbeat; wal2json is never asked
    -- for messages, but gives the transaction's commit), which the next batch advances to.
    -- (A streaming consumer asks for one when it has had nothing to write for a while.)
    IF done AND captured = 0 AND skipped = 0
       AND flush - before > 16777216
       AND NOT EXISTS (SELECT FROM pyfuncs.realtime_state s
                       WHERE s.applied_lsn > before) THEN
        PERFORM pg_logical_emit_message(true, 'pyfuncs-heartbeat', '');
    END IF;
    -- (the batch's own commit is in the WAL the next one reads, and writes nothing there)
    IF pg_notification_queue_usage() < 0.5 AND EXISTS (
        SELECT FROM pyfuncs.realtime_state s WHERE s.applied_lsn > before) THEN
        PERFORM pg_notify('pyfuncs_realtime', '');
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION
    pyfuncs.realtime_wal_finish(pg_lsn, pg_lsn, bigint, bigint, boolean) FROM PUBLIC;

DROP FUNCTION pyfuncs.realtime_wal_apply(name, pg_lsn, integer, pg_snapshot, bigint);

-- The heart of a batch: the transactions the slot holds after applied_lsn up to `upto`, at
-- most about `max_changes` decoded rows, written to the log in commit (WAL) order with
-- positions from their commit LSNs, together with the new applied_lsn (see
-- realtime_wal_batch). wal2json is asked for the captured tables only (add-tables, by the
-- names in realtime_wal_name and realtime_wal_doubt) and for no logical message (any role
-- may emit one, of any size: add-msg-prefixes with a prefix no one can know). A transaction
-- with a change over 64 MB (jsonb takes at most 256 MB, and no client wants such a change
-- pushed), or one under a name in doubt, is skipped whole: recorded in realtime_skipped, and
-- pruned_through moves to its position, so consumers behind it resync. `skipped` counts them.
-- With `slot` NULL, the rows are those given (lsns, xids, datas: a streaming consumer's, see
-- realtime_wal_write) instead of those peeked from the slot.
CREATE FUNCTION pyfuncs.realtime_wal_apply(
    slot name, upto pg_lsn, max_changes integer, snap pg_snapshot, top bigint,
    lsns bigint[] DEFAULT NULL, xids bigint[] DEFAULT NULL, datas text[] DEFAULT NULL
) RETURNS TABLE (captured bigint, done boolean, skipped bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state record;
BEGIN
    SELECT s.applied_lsn, s.renamed_lsn INTO state FROM pyfuncs.realtime_state s;
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
          -- (a subquery, not NOT EXISTS: it probes the primary key for each change, where
          -- an anti-join could read the whole table)
          AND (SELECT count(*) FROM pyfuncs.realtime_commit c WHERE c.txid = f.txid) = 0
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
              AND (SELECT count(*) FROM pyfuncs.realtime_commit c WHERE c.txid = f.txid) = 0
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
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_apply(
    name, pg_lsn, integer, pg_snapshot, bigint, bigint[], bigint[], text[]) FROM PUBLIC;

-- A batch failed on something it decoded (`failed`, `failure`, `detail`: its SQLSTATE,
-- message and detail):
-- find the first transaction that fails (probing up to the 1st, 2nd, 4th... commit, then
-- halving), apply those before it, and skip it: recorded in realtime_skipped, and
-- pruned_through moved to its position so that consumers behind it resync. A failure that
-- does not come back when probed is raised as it was, and nothing is skipped. The slow path:
-- the normal one costs one subtransaction per batch.
CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_isolate(
    slot name, flush pg_lsn, max_changes integer, snap pg_snapshot, top bigint,
    failed text, failure text, detail text
) RETURNS TABLE (captured bigint, done boolean, skipped bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    applied pg_lsn := (SELECT s.applied_lsn FROM pyfuncs.realtime_state s);
    ends pg_lsn[];
    txids xid8[];
    n integer;
    good integer := 0;  -- applying up to the good-th commit succeeds ...
    bad integer;        -- ... and up to the bad-th fails
    probe integer := 1;
    result record;
BEGIN
    -- the commits the batch read, without their changes (no table, no message)
    SELECT array_agg(p.lsn ORDER BY p.ord),
           array_agg(pyfuncs.realtime_wal_txid(p.xid::text::bigint, top) ORDER BY p.ord)
    INTO ends, txids
    FROM pg_logical_slot_peek_changes(slot, flush, max_changes, 'format-version', '2',
             'filter-tables', '*.*', 'add-msg-prefixes', 'pyfuncs-' || gen_random_uuid())
         WITH ORDINALITY AS p (lsn, xid, data, ord)
    WHERE starts_with(p.data, '{"action":"C"') AND p.lsn > applied;
    n := coalesce(cardinality(ends), 0);
    WHILE bad IS NULL AND good < n LOOP
        probe := least(probe, n);
        IF pyfuncs.realtime_wal_probe(slot, ends[probe], max_changes, snap, top) THEN
            good := probe;
            probe := probe * 2;
        ELSE
            bad := probe;
        END IF;
    END LOOP;
    IF bad IS NULL THEN
        RAISE EXCEPTION '%', failure USING ERRCODE = failed, DETAIL = coalesce(detail, '');
    END IF;
    WHILE bad - good > 1 LOOP
        probe := (good + bad) / 2;
        IF pyfuncs.realtime_wal_probe(slot, ends[probe], max_changes, snap, top) THEN
            good := probe;
        ELSE
            bad := probe;
        END IF;
    END LOOP;
    captured := 0;
    skipped := 0;
    IF good > 0 THEN
        SELECT * INTO result
        FROM pyfuncs.realtime_wal_apply(slot, ends[good], max_changes, snap, top);
        captured := result.captured;
        skipped := result.skipped;
    END IF;
    -- skipped only once it and every commit before it is visible (see `cut` in
    -- realtime_wal_apply): a consumer that resyncs must see it in the tables
    IF EXISTS (SELECT FROM unnest(txids[1:bad]) t WHERE NOT pg_visible_in_snapshot(t, snap)) THEN
        done := true;
        RETURN NEXT;
        RETURN;
    END IF;
    -- (a transaction the triggers captured while the mode switched is in the log already)
    IF NOT EXISTS (SELECT FROM pyfuncs.realtime_commit c WHERE c.txid = txids[bad]) THEN
        INSERT INTO pyfuncs.realtime_skipped (lsn, txid, reason)
        VALUES (ends[bad], txids[bad], format('%s (SQLSTATE %s)', left(failure || coalesce(
                    ': ' || detail, ''), 500), failed))
        ON CONFLICT (lsn) DO NOTHING;
        UPDATE pyfuncs.realtime_state
        SET pruned_through = greatest(pruned_through, (ends[bad] - '0/0')::bigint);
        skipped := skipped + 1;
    END IF;
    UPDATE pyfuncs.realtime_state SET applied_lsn = greatest(applied_lsn, ends[bad]);
    done := false;
    RETURN NEXT;
END
$$;
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_isolate(
    name, pg_lsn, integer, pg_snapshot, bigint, text, text, text) FROM PUBLIC;

-- One batch (realtime_wal_capture is its entry for consumers, realtime_set_mode calls it
-- directly). The slot is advanced at the start of the next batch, to an applied_lsn that has
-- committed: so the slot never gets ahead of what is durable, and a batch that is repeated
-- (its transaction lost, or its advance) skips what was applied. `done`: everything flushed
-- when the batch began has been read. The output settings are pinned, so that the values
-- written (wal2json calls each type's output function in this session) are the same
-- whatever the caller's session says, and as trigger mode writes them with the defaults.
-- No lock is waited for longer than 10 s (the capture lock, 30 s): a batch held up fails,
-- and the consumer tries again, instead of waiting with the capture lock held. A streaming
-- consumer holding the slot is ended first (realtime_wal_free).
CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_batch(max_changes integer)
RETURNS TABLE (captured bigint, done boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, MDY' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET "TimeZone" = 'UTC' SET lock_timeout = '10s' AS $$
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
    -- (a stream that realtime_wal_free ended can be back before the slot is read, if its
    -- consumer was already connecting: then it is ended again, up to five times)
    FOR attempt IN 1..5 LOOP
        BEGIN
            PERFORM pyfuncs.realtime_wal_free(slot.slot_name);
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
            EXIT;
        EXCEPTION WHEN object_in_use THEN
            IF attempt = 5 THEN
                RAISE;
            END IF;
        END;
    END LOOP;
    PERFORM pyfuncs.realtime_wal_finish(state.applied_lsn, flush, result.captured,
                                        result.skipped, result.done);
    RETURN QUERY SELECT result.captured, result.done;
END
$$;
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_batch(integer) FROM PUBLIC;

-- Drop this database's slot if it exists, waiting for a batch in progress, and ending a
-- streaming consumer's hold on it.
CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_drop() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, MDY' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET "TimeZone" = 'UTC' AS $$
BEGIN
    PERFORM pyfuncs.realtime_capture_lock_take();
    PERFORM pyfuncs.realtime_wal_free(slot_name) FROM pg_replication_slots
    WHERE slot_name = pyfuncs.realtime_slot_name();
    PERFORM pg_drop_replication_slot(slot_name) FROM pg_replication_slots
    WHERE slot_name = pyfuncs.realtime_slot_name();
END
$$;
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_drop() FROM PUBLIC;

-- One batch of a streaming consumer (pyfuncs/capture.py), which reads the slot over the
-- replication protocol with the options realtime_wal_apply peeks with and `tables` as
-- add-tables: the rows it received, whole transactions in the order received (`lsns`,
-- `xids`, `datas`: each row's LSN, transaction id and wal2json text), applied as
-- realtime_wal_batch applies what it peeks. It returns applied_lsn, which the consumer
-- confirms to the slot once this has committed, how far it has dealt with what it was given
-- (`processed`: a transaction not yet visible waits, with those after it, for the next
-- call), what was captured and skipped, and the
-- add-tables list the captured tables need now: when `tables` is not that list (a table was
-- enabled, disabled or renamed since the stream began) nothing is applied, and the consumer
-- streams again from applied_lsn with the new list. A row that cannot be applied fails the
-- call (realtime_wal_batch's slow path isolates and skips it: the consumer captures with SQL
-- batches past it). `capturing` is false when there is nothing to capture (trigger mode, no
-- table enabled). Runs as pyfuncs' owner, and writes the change log as it is told: EXECUTE is
-- for the consumer's role only, which must have REPLICATION (it can read every row anyway).
CREATE FUNCTION pyfuncs.realtime_wal_write(
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
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_write(text, bigint[], bigint[], text[])
    FROM PUBLIC;

-- Disabling the last table in 'wal' mode drops the slot, so that it holds no WAL. Changes of
-- the table that the consumer has not applied yet are not captured any more. The triggers
-- are found by the table's name now (it may have been renamed since it was enabled).
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
