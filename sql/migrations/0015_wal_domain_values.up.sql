-- 0015 up: in 'wal' mode, values of domains over numbers and booleans as trigger mode gives
-- them (wal2json writes them as text: a key of such a domain never matched the row's, so
-- the gateway delivered none of such a table's changes); a transaction that truncates
-- partitions of a captured table, not the table, is skipped (consumers resync) instead of
-- logged as a TRUNCATE of the whole table.

CREATE OR REPLACE FUNCTION pyfuncs.realtime_wal_value(type text, value jsonb) RETURNS jsonb
LANGUAGE sql STABLE
RETURN CASE
    WHEN pg_catalog.jsonb_typeof(value) IS DISTINCT FROM 'string' THEN value
    WHEN type IN ('json', 'jsonb') THEN (value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.jsonb
    WHEN type = 'timestamp with time zone'
        THEN pg_catalog.to_jsonb((value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.timestamptz)
    WHEN type = 'timestamp without time zone'
        THEN pg_catalog.to_jsonb((value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.timestamp)
    -- (a domain over bytea comes with its \x: wal2json drops it for bytea itself only)
    WHEN type = 'bytea' AND NOT pg_catalog.starts_with(value OPERATOR(pg_catalog.#>>) '{}', '\x')
        THEN pg_catalog.to_jsonb('\x' OPERATOR(pg_catalog.||) (value OPERATOR(pg_catalog.#>>) '{}'))
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
    -- (a domain over a number or a boolean: a string, where the base type's is not)
    WHEN type IN ('smallint', 'integer', 'bigint')
        THEN pg_catalog.to_jsonb((value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.int8)
    WHEN type = 'numeric' OR (pg_catalog.starts_with(type, 'numeric(')
                              AND pg_catalog.right(type, 1) = ')')
        THEN pg_catalog.to_jsonb((value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.numeric)
    WHEN type = 'real'
        THEN pg_catalog.to_jsonb((value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.float4)
    WHEN type = 'double precision'
        THEN pg_catalog.to_jsonb((value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.float8)
    WHEN type = 'boolean'
        THEN pg_catalog.to_jsonb((value OPERATOR(pg_catalog.#>>) '{}')::pg_catalog.bool)
    ELSE value
END;


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
               w.new_row, w.old_row, w.refused,
               -- (a change of the captured table itself, under the name it was enabled
               -- with, not of one of its partitions)
               (e.s, e.t) = (e.schema_name, e.table_name) AS whole
        FROM framed f
        JOIN resolved e ON e.s = f.data->>'schema' AND e.t = f.data->>'table'
        CROSS JOIN bounds b
        -- wal2json's column lists as row objects; only the types realtime_wal_value
        -- converts (arrays, json, timestamps, bytea, domains over numbers and booleans: a
        -- cheap test of the name first) go
        -- through it, and this is written out here rather than as a function, for it is
        -- most of the consumer's work (a function call per row doubled it)
        -- (a json value jsonb refuses is left out, and its transaction skipped: see `skip`)
        CROSS JOIN LATERAL (
            SELECT jsonb_object_agg(c->>'name', CASE
                       WHEN v.refused IS NOT NULL THEN NULL
                       WHEN right(c->>'type', 1) = ']'
                            OR left(c->>'type', 4) IN ('json', 'time', 'byte')
                            OR (jsonb_typeof(c->'value') = 'string'
                                AND left(c->>'type', 4) IN ('smal', 'inte', 'bigi', 'nume',
                                                            'real', 'doub', 'bool'))
                       THEN pyfuncs.realtime_wal_value(c->>'type', c->'value')
                       ELSE c->'value' END) FILTER (WHERE k.which = 'columns') AS new_row,
                   jsonb_object_agg(c->>'name', CASE
                       WHEN v.refused IS NOT NULL THEN NULL
                       WHEN right(c->>'type', 1) = ']'
                            OR left(c->>'type', 4) IN ('json', 'time', 'byte')
                            OR (jsonb_typeof(c->'value') = 'string'
                                AND left(c->>'type', 4) IN ('smal', 'inte', 'bigi', 'nume',
                                                            'real', 'doub', 'bool'))
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
        -- doubt (committed before the rename was noticed), a json value jsonb refuses, a
        -- TRUNCATE of partitions only
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
            UNION ALL
            -- a TRUNCATE of partitions of a captured table but not of the table itself:
            -- wal2json names the partition, logged under the table's name it would empty
            -- the whole table for consumers, so they read the tables again instead. One of
            -- the table itself excuses it only with no other change of the table between
            -- the two (the rows written in between would be lost to consumers: a red team)
            SELECT c.txid, c.commit_lsn, 'a partition was truncated, not its whole table'
            FROM change c
            WHERE c.op = 'TRUNCATE' AND NOT c.whole
              AND NOT EXISTS (
                  SELECT FROM change w
                  WHERE w.txid = c.txid AND w.op = 'TRUNCATE' AND w.whole
                    AND w.schema_name = c.schema_name AND w.table_name = c.table_name
                    AND NOT EXISTS (SELECT FROM change x
                                    WHERE x.txid = c.txid AND x.op <> 'TRUNCATE'
                                      AND x.schema_name = c.schema_name
                                      AND x.table_name = c.table_name
                                      AND x.ord BETWEEN least(w.ord, c.ord)
                                                    AND greatest(w.ord, c.ord)))
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
