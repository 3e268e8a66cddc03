-- Named queries used by pyfuncs (loaded by pyfuncs.queries). Parameters are psycopg's
-- %(name)s placeholders; identifiers are never formatted into these texts.

-- name: search_path
SELECT pg_catalog.current_setting('search_path')

-- name: set_search_path
-- For the rest of the transaction (deploys pin it to pg_catalog while they run).
SELECT pg_catalog.set_config('search_path', %(path)s, true)

-- name: lock_deploys
-- Deploys and rollbacks run one at a time per database. A table lock, not an advisory one
-- (any session can take those), in a mode that no statement of a role without privileges on
-- the table takes, not even one only prepared (PREPARE ... FOR UPDATE holds ROW SHARE); only
-- a superuser and the database's owner (ANALYZE) can take it (README "Security model").
LOCK TABLE pyfuncs.deploy_lock IN SHARE UPDATE EXCLUSIVE MODE

-- name: version_table_trust
-- The table Alembic keeps pyfuncs' revision in, if it exists: trusted when it is a plain
-- table of a superuser (or of the installer) on which writing runs nothing.
SELECT c.relkind = 'r' AND (r.rolsuper OR r.rolname = current_user) AND NOT c.relhasrules
       AND NOT c.relrowsecurity AND t.count = 0 AS trusted,
       r.rolname AS owner, t.count AS triggers, c.relhasrules AS rules
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_roles r ON r.oid = c.relowner,
LATERAL (SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = c.oid) AS t
WHERE c.oid = pg_catalog.to_regclass('public.pyfuncs_alembic_version')

-- name: missing_roles
SELECT r AS role FROM unnest(%(roles)s::text[]) AS r
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r)

-- name: live_routine
SELECT r.id, r.kind, r.live_version, v.sha256, v.identity_args, v.signature
FROM pyfuncs.routine r
LEFT JOIN pyfuncs.routine_version v ON v.routine_id = r.id AND v.version = r.live_version
WHERE r.schema_name = %(schema)s AND r.name = %(name)s

-- name: insert_routine
INSERT INTO pyfuncs.routine (schema_name, name, kind)
VALUES (%(schema)s, %(name)s, %(kind)s)
RETURNING id

-- name: version_by_sha
SELECT version FROM pyfuncs.routine_version WHERE routine_id = %(routine_id)s AND sha256 = %(sha256)s

-- name: insert_version
INSERT INTO pyfuncs.routine_version
    (routine_id, version, sha256, identity_args, signature, source, source_file, source_line, ddl)
SELECT %(routine_id)s, coalesce(max(version), 0) + 1, %(sha256)s, %(identity_args)s,
       %(signature)s, %(source)s, %(source_file)s, %(source_line)s, %(ddl)s
FROM pyfuncs.routine_version WHERE routine_id = %(routine_id)s
RETURNING version

-- name: get_version
SELECT r.schema_name, r.name, v.version, v.sha256, v.identity_args, v.signature, v.ddl
FROM pyfuncs.routine_version v JOIN pyfuncs.routine r ON r.id = v.routine_id
WHERE v.routine_id = %(routine_id)s AND v.version = %(version)s

-- name: set_live
UPDATE pyfuncs.routine SET live_version = %(version)s, kind = coalesce(%(kind)s, kind)
WHERE id = %(routine_id)s

-- name: insert_deployment
INSERT INTO pyfuncs.deployment (label, target) VALUES (%(label)s, %(target)s) RETURNING id

-- name: insert_change
INSERT INTO pyfuncs.deployment_change (deployment_id, routine_id, from_version, to_version)
VALUES (%(deployment_id)s, %(routine_id)s, %(from_version)s, %(to_version)s)

-- name: deployment_to_undo
-- The newest deployment still in effect, or the one with the given label.
SELECT id, label, target FROM pyfuncs.deployment
WHERE rolled_back_at IS NULL AND (%(label)s::text IS NULL OR label = %(label)s)
  AND EXISTS (SELECT 1 FROM pyfuncs.deployment_change c WHERE c.deployment_id = id)
ORDER BY id DESC LIMIT 1

-- name: deployment_changes
SELECT c.routine_id, c.from_version, c.to_version, r.schema_name, r.name, r.live_version
FROM pyfuncs.deployment_change c JOIN pyfuncs.routine r ON r.id = c.routine_id
WHERE c.deployment_id = %(deployment_id)s
ORDER BY c.routine_id DESC

-- name: mark_rolled_back
UPDATE pyfuncs.deployment SET rolled_back_at = now() WHERE id = %(deployment_id)s

-- name: status
SELECT r.schema_name, r.name, r.kind, r.live_version,
       (SELECT max(version) FROM pyfuncs.routine_version WHERE routine_id = r.id) AS versions,
       v.sha256, v.source_file, v.source_line, v.deployed_by, v.deployed_at
FROM pyfuncs.routine r
LEFT JOIN pyfuncs.routine_version v ON v.routine_id = r.id AND v.version = r.live_version
ORDER BY r.schema_name, r.name

-- name: routine_versions
SELECT v.version, v.sha256, v.deployed_by, v.deployed_at, v.version = r.live_version AS live
FROM pyfuncs.routine r JOIN pyfuncs.routine_version v ON v.routine_id = r.id
WHERE r.schema_name = %(schema)s AND r.name = %(name)s
ORDER BY v.version

-- name: runtime_upsert
INSERT INTO pyfuncs.runtime_module (name, source, sha256, code, magic)
VALUES (%(name)s, %(source)s, %(sha256)s, %(code)s, %(magic)s)
ON CONFLICT (name) DO UPDATE
SET source = excluded.source, sha256 = excluded.sha256, code = excluded.code,
    magic = excluded.magic, installed_at = now()
WHERE (pyfuncs.runtime_module.sha256, pyfuncs.runtime_module.magic)
      IS DISTINCT FROM (excluded.sha256, excluded.magic)

-- name: runtime_prune
-- Modules an older runtime had and this one has not.
DELETE FROM pyfuncs.runtime_module WHERE name <> ALL (%(names)s::text[])

-- name: runtime_hashes
SELECT name, sha256 FROM pyfuncs.runtime_module

-- name: routine_code_put
-- A routine module compiled ahead of its first call (pyfuncs/ahead.py); the same key is the
-- same code.
INSERT INTO pyfuncs.routine_code (key, runtime, code)
VALUES (%(key)s, %(runtime)s, %(code)s)
ON CONFLICT (key) DO NOTHING

-- name: routine_code_prune
-- Code compiled for another runtime than the one installed: no backend that loads this one
-- reads it.
DELETE FROM pyfuncs.routine_code WHERE runtime <> %(runtime)s

-- name: live_modules
-- The modules of the routines' live versions, to compile for a new runtime.
SELECT DISTINCT v.source_file, v.source
FROM pyfuncs.routine r
JOIN pyfuncs.routine_version v ON v.routine_id = r.id AND v.version = r.live_version

-- name: routine_by_id
SELECT r.id, r.schema_name, r.name, r.kind, r.live_version, v.sha256, v.identity_args, v.signature
FROM pyfuncs.routine r
LEFT JOIN pyfuncs.routine_version v ON v.routine_id = r.id AND v.version = r.live_version
WHERE r.id = %(routine_id)s

-- name: live_signature
-- For clients calling a routine by name; reads only the columns granted to PUBLIC.
SELECT v.signature FROM pyfuncs.routine r
JOIN pyfuncs.routine_version v ON v.routine_id = r.id AND v.version = r.live_version
WHERE r.schema_name = %(schema)s AND r.name = %(name)s

-- name: set_identity
-- A verified JWT for one transaction, as PostgREST sets it (the function refuses roles no
-- token may name, see sql/schema.sql).
SELECT pyfuncs.set_identity(%(role)s, %(claims)s)

-- name: gateway_as_identity
-- set_identity, in one statement with the gateway's sessions' settings again for the rest
-- of the transaction (the code run as the subscriber before, an RLS policy or a domain's
-- check, may have set_config them; the next subscriber's rows must be written as the change
-- log's: config.VALUE_SETTINGS). Any role may set them: the order does not matter.
SELECT pyfuncs.set_identity(%(role)s, %(claims)s)
FROM (SELECT pg_catalog.count(pg_catalog.set_config(s.name, s.value, true))
      FROM ROWS FROM (pg_catalog.unnest(%(names)s::text[]),
                      pg_catalog.unnest(%(values)s::text[])) AS s (name, value)) AS pinned

-- name: realtime_enable
SELECT pyfuncs.enable_realtime(%(table)s::regclass)

-- name: realtime_disable
SELECT pyfuncs.disable_realtime(%(table)s::regclass)

-- name: realtime_prune
SELECT pyfuncs.prune_realtime(%(keep)s::interval) AS pruned

-- name: realtime_read
-- Committed changes after a position, in commit order (see sql/schema.sql on why that is
-- complete), each with how far the feed was pruned in the same snapshot (one statement);
-- a single row of NULL changes when there are none. With `keys` (the gateway, which needs
-- only each change's key: it reads rows again as each subscriber), the row images are cut
-- down to their table's primary key columns, as the catalog has them now, so that a page of
-- changes to wide rows costs it their keys, not the rows; whole images where no table of that
-- name has a primary key now (the gateway then finds no key in them, or the one it knew).
WITH page AS (
    SELECT c.position, ch.id AS change, ch.schema_name, ch.table_name, ch.op, ch.new_row,
           ch.old_row, c.committed_at, c.txid::text::bigint AS txid
    FROM pyfuncs.realtime_commit c
    JOIN pyfuncs.realtime_change ch ON ch.txid = c.txid
    WHERE c.position >= %(commit)s AND (c.position, ch.id) > (%(commit)s, %(change)s)
    ORDER BY c.position, ch.id
    LIMIT %(limit)s
), keyed AS (
    SELECT t.schema_name, t.table_name,
           CASE WHEN %(keys)s THEN ARRAY(
               SELECT a.attname::text
               FROM pg_catalog.pg_index i
               CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
               JOIN pg_catalog.pg_class r ON r.oid = i.indrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
               -- (by name in the catalog: the feed's role has no USAGE on the schemas)
               WHERE n.nspname = t.schema_name AND r.relname = t.table_name AND i.indisprimary
               ORDER BY k.ord) ELSE '{}' END AS key
    FROM (SELECT DISTINCT schema_name, table_name FROM page) t
)
SELECT s.pruned_through, r.*
FROM pyfuncs.realtime_state s
LEFT JOIN LATERAL (
    SELECT p.position, p.change, p.schema_name, p.table_name, p.op,
           CASE WHEN p.new_row IS NULL OR pg_catalog.cardinality(k.key) = 0 THEN p.new_row
                ELSE coalesce((SELECT pg_catalog.jsonb_object_agg(c, p.new_row OPERATOR(pg_catalog.->) c)
                               FROM pg_catalog.unnest(k.key) c
                               WHERE p.new_row OPERATOR(pg_catalog.?) c), '{}') END AS new_row,
           CASE WHEN p.old_row IS NULL OR pg_catalog.cardinality(k.key) = 0 THEN p.old_row
                ELSE coalesce((SELECT pg_catalog.jsonb_object_agg(c, p.old_row OPERATOR(pg_catalog.->) c)
                               FROM pg_catalog.unnest(k.key) c
                               WHERE p.old_row OPERATOR(pg_catalog.?) c), '{}') END AS old_row,
           p.committed_at, p.txid
    FROM page p JOIN keyed k USING (schema_name, table_name)
) r ON true
ORDER BY r.position, r.change

-- name: realtime_head
-- The last committed position (everything up to it is visible: see realtime_read), or where
-- the feed was cut when that is later (pruned, or the WAL slot lost: sql/schema.sql).
SELECT greatest((SELECT pg_catalog.max(position) FROM pyfuncs.realtime_commit),
                (SELECT pruned_through FROM pyfuncs.realtime_state)) AS head

-- name: realtime_export_head
-- The gateway's snapshot, for its check connection to import (SET TRANSACTION SNAPSHOT),
-- and the last position committed in it: a new subscription's rows and its starting
-- position then agree exactly, though they are read by two roles.
SELECT pg_catalog.pg_export_snapshot() AS snapshot,
       greatest((SELECT pg_catalog.max(position) FROM pyfuncs.realtime_commit),
                (SELECT pruned_through FROM pyfuncs.realtime_state)) AS head

-- name: realtime_capture_batch
-- One batch of the WAL consumer (pyfuncs/capture.py).
SELECT captured, done FROM pyfuncs.realtime_wal_capture(%(batch)s)

-- name: realtime_capture_write
-- One batch of the streaming WAL consumer (pyfuncs/capture.py): the rows it received.
SELECT applied, processed, captured, skipped, capturing, add_tables
FROM pyfuncs.realtime_wal_write(%(tables)s, %(lsns)b, %(xids)b, %(datas)b)

-- name: realtime_capture_slot_name
SELECT pyfuncs.realtime_slot_name() AS slot, pg_catalog.current_setting('server_encoding') AS encoding

-- name: realtime_capture_slot
SELECT pyfuncs.realtime_wal_slot() AS created

-- name: realtime_capture_lead
-- Whether this session leads the database's WAL consumers (held until it ends).
SELECT pg_catalog.pg_try_advisory_lock(%(key)s) AS leading

-- name: realtime_slot_wal
-- The WAL this database's slot holds from being recycled, in bytes (no row: no slot).
SELECT (pg_catalog.pg_current_wal_lsn() - restart_lsn)::bigint AS held
FROM pg_catalog.pg_replication_slots WHERE slot_name = pyfuncs.realtime_slot_name()

-- name: realtime_set_mode
SELECT pyfuncs.realtime_set_mode(%(mode)s)

-- name: realtime_status
-- The capture mode, the slot and the WAL it holds, the leading consumer's backend, and the
-- transactions captured by triggers still waiting for their positions.
SELECT s.mode, pyfuncs.realtime_slot_name()::text AS slot,
       r.slot_name IS NOT NULL AS slot_exists, r.wal_status,
       (pg_catalog.pg_current_wal_lsn() - r.restart_lsn)::bigint AS retained_bytes,
       CASE WHEN r.slot_name IS NOT NULL THEN (pg_catalog.pg_current_wal_lsn()
            - greatest(s.applied_lsn, r.confirmed_flush_lsn))::bigint END AS lag_bytes,
       (SELECT l.pid FROM pg_catalog.pg_locks l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.database = (SELECT oid FROM pg_catalog.pg_database
                            WHERE datname = pg_catalog.current_database())
          AND l.classid = (%(key)s >> 32)::oid AND l.objid = (%(key)s & 4294967295)::oid
        LIMIT 1) AS consumer_pid,
       (SELECT pg_catalog.count(*) FROM pyfuncs.realtime_table)::int AS tables,
       (SELECT pg_catalog.count(*) FROM pyfuncs.realtime_commit
        WHERE position IS NULL)::int AS unpositioned,
       pg_catalog.current_setting('max_slot_wal_keep_size') AS max_slot_wal_keep_size
FROM pyfuncs.realtime_state s
LEFT JOIN pg_catalog.pg_replication_slots r ON r.slot_name = pyfuncs.realtime_slot_name()

-- name: realtime_snapshot
-- Which transactions the current snapshot sees (realtime.Snapshot).
SELECT pg_catalog.pg_current_snapshot()::text AS taken

-- name: realtime_position_key
-- The key the gateways encrypt the positions they give subscribers with (gateway/positions.py).
SELECT position_key FROM pyfuncs.realtime_state

-- name: realtime_check_role
-- What the gateway's check connection (which runs as subscribers, and so runs code of the
-- owners of their tables) can reach of pyfuncs' own tables: nothing, in the recommended
-- setup (README "Deploying it").
SELECT current_user AS login_role,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser,
       pg_catalog.has_table_privilege('pyfuncs.realtime_change', 'SELECT')
       OR pg_catalog.has_column_privilege('pyfuncs.realtime_state', 'position_key', 'SELECT')
           AS reads_change_log

-- name: realtime_table_info
-- A table a subscriber names, as the subscriber: nothing unless it may read some of it (so
-- that nobody learns what exists by asking), else its key and whether realtime captures it.
-- Captured means that pyfuncs' capture function is one of its triggers (not a trigger
-- cloned onto a partition): only pyfuncs' owner may attach that function, whereas any
-- table owner can name a trigger of theirs anything. The catalog is readable by anyone.
SELECT c.oid AS relid, n.nspname AS schema_name, c.relname AS table_name,
       EXISTS (SELECT 1 FROM pg_trigger g
               JOIN pg_proc p ON p.oid = g.tgfoid
               JOIN pg_namespace pn ON pn.oid = p.pronamespace
               WHERE g.tgrelid = c.oid AND g.tgparentid = 0
                 AND pn.nspname = 'pyfuncs' AND p.proname = 'realtime_capture'
                 AND p.pronargs = 0) AS enabled,
       coalesce(pk.key, '{}') AS key, coalesce(pk.odd_key, '{}') AS odd_key
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
    -- its key columns, and those whose value capture logs as its text while a row carries
    -- it as JSON (a composite or an array of a type defined in the database, a domain over
    -- one), so that a change's key never equals the key of the row it changed
    SELECT pg_catalog.array_agg(a.attname::text ORDER BY k.ord) AS key,
           pg_catalog.array_agg(pg_catalog.format('%%s (%%s)', a.attname,
                                                  pg_catalog.format_type(a.atttypid, NULL)))
               FILTER (WHERE b.oid >= 16384 AND (b.typtype = 'c' OR b.typcategory = 'A'))
               AS odd_key
    FROM pg_index i
    CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
    JOIN pg_type t ON t.oid = a.atttypid
    JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
    WHERE i.indrelid = c.oid AND i.indisprimary
) pk ON true
WHERE c.oid = pg_catalog.to_regclass(%(table)s)
  AND pg_catalog.has_any_column_privilege(c.oid, 'SELECT')

-- name: realtime_readable_columns
-- The columns the current role (a subscriber's, set for the transaction) may SELECT.
SELECT coalesce(pg_catalog.array_agg(attname::text ORDER BY attnum), '{}') AS columns
FROM pg_attribute
WHERE attrelid = %(relid)s::oid AND attnum > 0 AND NOT attisdropped
  AND pg_catalog.has_column_privilege(attrelid, attnum, 'SELECT')

-- name: realtime_lookup_columns
-- Of the named columns of a table, those whose type converts a value by looking objects up
-- by name (regclass and the other reg* types, aclitem), itself or inside it (a domain's base
-- type, an array's elements, a composite's attributes, a range's subtype): a filter on one
-- would tell a subscriber whether a table, schema or role it may not see exists.
WITH RECURSIVE inside (column_name, type_id) AS (
    SELECT a.attname::text, a.atttypid FROM pg_attribute a
    WHERE a.attrelid = %(relid)s::oid AND a.attnum > 0 AND NOT a.attisdropped
      AND a.attname = ANY (%(columns)s::text[])
  UNION
    SELECT i.column_name, u.type_id
    FROM inside i JOIN pg_type t ON t.oid = i.type_id
    CROSS JOIN LATERAL (
        SELECT t.typbasetype WHERE t.typbasetype <> 0
        UNION ALL SELECT t.typelem WHERE t.typelem <> 0
        UNION ALL SELECT a.atttypid FROM pg_attribute a
                  WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = t.oid
        UNION ALL SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = t.oid
    ) AS u (type_id)
)
SELECT DISTINCT column_name FROM inside
WHERE type_id = ANY (ARRAY['pg_catalog.regclass', 'pg_catalog.regcollation',
                           'pg_catalog.regconfig', 'pg_catalog.regdictionary',
                           'pg_catalog.regnamespace', 'pg_catalog.regoper',
                           'pg_catalog.regoperator', 'pg_catalog.regproc',
                           'pg_catalog.regprocedure', 'pg_catalog.regrole',
                           'pg_catalog.regtype', 'pg_catalog.aclitem']::regtype[])
ORDER BY column_name

-- name: realtime_audit
INSERT INTO pyfuncs.realtime_audit (at, event, connection, role, subject, detail)
VALUES (%(at)s, %(event)s, %(connection)s, %(role)s, %(subject)s, %(detail)s)

-- name: realtime_removed_later
-- Changes committed after a position that delete, re-key or truncate rows of one table
-- (for keys given as jsonb objects of its key columns, `names`): the gateway defers telling
-- a subscriber that such a row left its view, and sends the DELETE instead when it gets
-- there. An UPDATE counts only if it changes a key column: CASE makes that cheap test come
-- first. A change's old key is made once and looked up among the keys hashed (IN of a
-- subquery: a hashed SubPlan), not compared with each (a busy table's later changes, times
-- the keys of a batch); equal, as realtime_changed_later's, not contained (an array key
-- contains a shorter one).
SELECT ch.op, ch.old_row, ch.new_row
FROM pyfuncs.realtime_commit c JOIN pyfuncs.realtime_change ch ON ch.txid = c.txid
WHERE c.position > %(after)s AND ch.schema_name = %(schema)s AND ch.table_name = %(table)s
  AND CASE ch.op
      WHEN 'TRUNCATE' THEN true
      WHEN 'DELETE' THEN true
      WHEN 'UPDATE' THEN EXISTS (SELECT FROM pg_catalog.unnest(%(names)s::text[]) AS k (name)
                                 WHERE ch.old_row -> k.name IS DISTINCT FROM ch.new_row -> k.name)
      ELSE false END
  AND (ch.op = 'TRUNCATE'
       OR (SELECT pg_catalog.jsonb_object_agg(k.name, ch.old_row -> k.name)
           FROM pg_catalog.unnest(%(names)s::text[]) AS k (name))
          IN (SELECT pg_catalog.unnest(%(keys)s::jsonb[])))

-- name: realtime_changed_later
-- Of keys of one table (jsonb objects of its key columns, `names`), the ordinals of those a
-- change of the table among the next `window` changes of the log (of any table, in the next
-- `window` commits) after a position (commit, change) writes or removes, or all of them when
-- one truncates the table: a catch-up sends a key's latest change only (README "Resuming"),
-- the later one takes the place of the earlier. Any op counts. The later changes' keys are
-- made once and hashed, not compared with each key. Only so many are looked at, as each
-- page of a catch-up asks: all of the log after each page made a catch-up's cost grow with
-- the square of its length. The commits are walked in order by their index and the window
-- counts every change read (counting the table's only read on through commits of other
-- tables, and a window of positions was bytes of WAL in wal mode: a red team's); no order
-- is asked of the changes, which would sort them all first.
WITH later AS MATERIALIZED (
    SELECT ch.op, ch.new_row, ch.old_row, ch.schema_name, ch.table_name
    FROM (SELECT c.txid, c.position FROM pyfuncs.realtime_commit c
          WHERE c.position >= %(commit)s ORDER BY c.position LIMIT %(window)s) c
    -- each commit's changes by its index (the LIMIT keeps this a walk: joined whole, the
    -- planner read the whole log to hash it)
    CROSS JOIN LATERAL (
        SELECT ch.* FROM pyfuncs.realtime_change ch
        WHERE ch.txid = c.txid AND (c.position, ch.id) > (%(commit)s, %(change)s)
        LIMIT %(window)s
    ) ch
    LIMIT %(window)s
), mine AS (
    SELECT l.op, l.new_row, l.old_row FROM later l
    WHERE l.schema_name = %(schema)s AND l.table_name = %(table)s
), touched AS (
    SELECT (SELECT pg_catalog.jsonb_object_agg(n.name, i.image -> n.name)
            FROM pg_catalog.unnest(%(names)s::text[]) AS n (name)) AS key
    FROM mine m CROSS JOIN LATERAL (VALUES (m.new_row), (m.old_row)) AS i (image)
    WHERE i.image IS NOT NULL
)
SELECT k.i
FROM pg_catalog.unnest(%(keys)s::jsonb[]) WITH ORDINALITY AS k (key, i)
WHERE k.key IN (SELECT t.key FROM touched t)
   OR EXISTS (SELECT FROM mine WHERE op = 'TRUNCATE')

-- name: gateway_missing_grants
-- Of the privileges the gateway's role needs (README "Deploying it"), those it lacks.
SELECT g.privilege, g.name
FROM unnest(%(privileges)s::text[], %(names)s::text[]) AS g (privilege, name)  -- (only unqualified)
WHERE pg_catalog.to_regclass(g.name) IS NULL
   OR NOT pg_catalog.has_table_privilege(g.name, g.privilege)

-- name: routine_maker
-- The routine of that schema, name and argument types, if there is one, whoever made it:
-- who owns it, what kind it is, and in what language it is
-- written: pyfuncs' own are plpython3u routines of a superuser (only one can create them),
-- which another role cannot have re-created under the same signature.
SELECT r.rolname AS owner, r.rolsuper AS superuser, l.lanname AS language, p.prokind AS kind
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE p.oid = pg_catalog.to_regprocedure(
    pg_catalog.quote_ident(%(schema)s) || '.' || pg_catalog.quote_ident(%(name)s)
    || '(' || %(identity_args)s || ')')
