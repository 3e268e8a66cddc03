-- The pyfuncs core schema, as declared. Migrations under sql/migrations/ must produce exactly
-- this catalog from an empty database (tests/migrations proves it).

CREATE EXTENSION IF NOT EXISTS plpython3u WITH SCHEMA pg_catalog;
CREATE EXTENSION IF NOT EXISTS jsonb_plpython3u WITH SCHEMA pg_catalog;

CREATE SCHEMA pyfuncs;
-- Callers need the schema for the runtime loader and the JWT helpers; the catalog tables
-- themselves stay readable only by their owner (the deployer) unless granted.
GRANT USAGE ON SCHEMA pyfuncs TO PUBLIC;

-- The in-database runtime (the modules of pyfuncs/_pg/, by name), written by `pyfuncs install`.
CREATE TABLE pyfuncs.runtime_module (
    name text PRIMARY KEY,
    source text NOT NULL,
    sha256 text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now(),
    -- compiled by the installing Python (marshal), used where the bytecode is the same
    code bytea,
    magic bytea
);
-- out of line but not compressed: every new connection's first call reads it (500 kB), and
-- undoing pglz cost more than reading the bytes
ALTER TABLE pyfuncs.runtime_module ALTER COLUMN code SET STORAGE EXTERNAL;
-- Every routine loads the runtime as its caller, so the code (not a secret) is public.
GRANT SELECT ON pyfuncs.runtime_module TO PUBLIC;

-- Routine modules compiled ahead of their first call: `pyfuncs deploy` (and `pyfuncs install`,
-- for the live versions) compiles each with the guards of the runtime it ships; a backend whose
-- runtime and Python are the same loads the code instead of compiling the module itself.
CREATE TABLE pyfuncs.routine_code (
    -- sha256 of vocabulary.compiled_key: Python's magic number, the runtime's modules and
    -- their sha256, the module's file name and its source
    key text PRIMARY KEY,
    runtime text NOT NULL,
    code bytea NOT NULL,
    compiled_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE pyfuncs.routine_code ALTER COLUMN code SET STORAGE EXTERNAL;
-- Read by every routine's first call in a backend, as its caller; written by the deployer.
GRANT SELECT (key, code) ON pyfuncs.routine_code TO PUBLIC;

CREATE TABLE pyfuncs.routine (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schema_name text NOT NULL,
    name text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('function', 'procedure')),
    live_version integer,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (schema_name, name)
);

-- One row per deployed version; rows never change (see the trigger below).
CREATE TABLE pyfuncs.routine_version (
    routine_id bigint NOT NULL REFERENCES pyfuncs.routine (id),
    version integer NOT NULL CHECK (version > 0),
    sha256 text NOT NULL,
    identity_args text NOT NULL,
    signature jsonb NOT NULL,
    source text NOT NULL,
    source_file text NOT NULL,
    source_line integer NOT NULL,
    ddl text NOT NULL,
    deployed_by text NOT NULL DEFAULT current_user,
    deployed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (routine_id, version),
    UNIQUE (routine_id, sha256)
);

ALTER TABLE pyfuncs.routine
    ADD FOREIGN KEY (id, live_version) REFERENCES pyfuncs.routine_version (routine_id, version)
    DEFERRABLE INITIALLY DEFERRED;

-- Signatures are public anyway (pg_proc is readable by everyone); clients that call a
-- routine by name read them here.
GRANT SELECT (id, schema_name, name, kind, live_version) ON pyfuncs.routine TO PUBLIC;
GRANT SELECT (routine_id, version, identity_args, signature) ON pyfuncs.routine_version TO PUBLIC;

-- A deploy (CLI, Python or Alembic) and what it switched, so it can be undone as a whole.
CREATE TABLE pyfuncs.deployment (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    label text,
    target text NOT NULL,
    deployed_by text NOT NULL DEFAULT current_user,
    deployed_at timestamptz NOT NULL DEFAULT now(),
    rolled_back_at timestamptz
);

CREATE TABLE pyfuncs.deployment_change (
    deployment_id bigint NOT NULL REFERENCES pyfuncs.deployment (id),
    routine_id bigint NOT NULL REFERENCES pyfuncs.routine (id),
    from_version integer,
    to_version integer,
    PRIMARY KEY (deployment_id, routine_id)
);

CREATE FUNCTION pyfuncs.forbid_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'pyfuncs.%: deployed versions are immutable', TG_TABLE_NAME
        USING ERRCODE = 'PF001',
              HINT = 'deploy a new version instead, or roll back to an older one';
END
$$;

CREATE TRIGGER routine_version_immutable
    BEFORE UPDATE OR DELETE ON pyfuncs.routine_version
    FOR EACH ROW EXECUTE FUNCTION pyfuncs.forbid_change();
-- Trigger functions: EXECUTE is checked when a trigger is created, not when it fires, so
-- without it nobody else can attach them to a table of theirs.
REVOKE EXECUTE ON FUNCTION pyfuncs.forbid_change() FROM PUBLIC;

-- Loads the runtime into this backend's interpreter once (GD is per backend, shared by all
-- PL/Python routines): its modules, one row each, loaded by pyfuncs/_pg/boot.py. Routines
-- call it only on their first call in a session.
CREATE FUNCTION pyfuncs.boot() RETURNS void
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if "pyfuncs.v1" not in GD:
    from _frozen_importlib_external import MAGIC_NUMBER  # importlib.util would cost 3 ms
    rows = plpy.execute("SELECT name, code, magic, sha256 FROM pyfuncs.runtime_module")
    if any(row["magic"] != MAGIC_NUMBER or row["code"] is None for row in rows):
        # compiled by another Python than this one: the sources too, to compile
        rows = plpy.execute("SELECT name, source, code, magic, sha256 FROM pyfuncs.runtime_module")
    modules = {row["name"]: row for row in rows}
    if "boot" not in modules:
        plpy.error("the pyfuncs runtime is not installed in this database",
                   hint="run `pyfuncs install`", sqlstate="PF002")
    import marshal
    boot = modules["boot"]
    code = (marshal.loads(boot["code"]) if boot["magic"] == MAGIC_NUMBER
            else compile(boot["source"], "pyfuncs/_pg/boot.py", "exec", dont_inherit=True))
    loader = {"__name__": "pyfuncs_pg_loader"}
    exec(code, loader)
    loader["load"](modules, GD)
$$;
GRANT EXECUTE ON FUNCTION pyfuncs.boot() TO PUBLIC;

-- The JWT helpers are inlined into RLS policies, so they take no SET clause; SQL-standard
-- bodies are bound when they are created, not looked up in the caller's search_path.
CREATE FUNCTION pyfuncs.jwt_claims() RETURNS jsonb
LANGUAGE sql STABLE
RETURN coalesce(nullif(pg_catalog.current_setting('request.jwt.claims', true), ''),
                '{}')::pg_catalog.jsonb;

CREATE FUNCTION pyfuncs.jwt_claim(claim text) RETURNS text
LANGUAGE sql STABLE
RETURN pyfuncs.jwt_claims() OPERATOR(pg_catalog.->>) claim;

CREATE FUNCTION pyfuncs.current_user_id() RETURNS uuid
LANGUAGE sql STABLE
RETURN nullif(pyfuncs.jwt_claims() OPERATOR(pg_catalog.->>) 'sub', '')::pg_catalog.uuid;

-- A verified token's role and claims for the rest of the transaction (what PostgREST sets).
-- The client and the gateway check the role against their allow-list first; this refuses,
-- whatever they were told, what no token may become: the login role itself (that is
-- `SET ROLE NONE` in disguise), a role that does not exist, and a role that is a superuser
-- or can make itself one or act as one: one that is, or is a member (directly or not, with
-- or without INHERIT: a member may SET ROLE to it) of, a role that is SUPERUSER, CREATEROLE,
-- REPLICATION or BYPASSRLS, or a predefined role that reads or writes the server's files,
-- runs programs, reads and writes all data, signals or watches other sessions, reads every
-- setting, checkpoints, or owns the database.
CREATE FUNCTION pyfuncs.set_identity(role text, claims text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    SELECT EXISTS (SELECT FROM pg_roles p
                   WHERE (p.rolsuper OR p.rolcreaterole OR p.rolreplication OR p.rolbypassrls
                          OR p.rolname IN ('pg_execute_server_program', 'pg_read_server_files',
                                           'pg_write_server_files', 'pg_read_all_data',
                                           'pg_write_all_data', 'pg_signal_backend',
                                           'pg_monitor', 'pg_read_all_stats',
                                           'pg_read_all_settings', 'pg_stat_scan_tables',
                                           'pg_checkpoint', 'pg_database_owner'))
                     AND pg_has_role(a.oid, p.oid, 'MEMBER')) AS powerful
    INTO r FROM pg_roles a WHERE a.rolname = role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pyfuncs: the token names role %, which does not exist', quote_literal(role)
            USING ERRCODE = '28000', HINT = 'create the role, or fix the token''s role claim';
    END IF;
    IF r.powerful OR role = session_user THEN
        RAISE EXCEPTION 'pyfuncs: a token may not act as %', quote_ident(role)
            USING ERRCODE = '28000',
                  HINT = 'tokens name application roles: not a superuser, a role with '
                         'powers over the server, other sessions or all data, or a member '
                         'of one, not the login role';
    END IF;
    PERFORM set_config('role', role, true);
    PERFORM set_config('request.jwt.claims', claims, true);
END
$$;
GRANT EXECUTE ON FUNCTION pyfuncs.set_identity(text, text) TO PUBLIC;


-- Realtime change capture (README "Realtime: the change feed"). In trigger mode each change to
-- an enabled table is written here in the writing transaction, and the consumer gives each
-- committed transaction the next position, a batch at a time (realtime_sequence): once
-- position N is visible every smaller position is visible too. A consumer reading "after my
-- last position" in position order therefore misses nothing and repeats nothing, whatever
-- order transactions started or wrote in. (From the WAL, the consumer writes the changes
-- too, with their commit LSNs as positions: realtime_wal_apply.)
CREATE SEQUENCE pyfuncs.realtime_position;

CREATE TABLE pyfuncs.realtime_table (
    relid oid PRIMARY KEY,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    enabled_at timestamptz NOT NULL DEFAULT now()
);

-- One row per capturing transaction, with its position: from the WAL, its commit LSN; with
-- triggers, given after it committed (realtime_sequence), NULL until then.
CREATE TABLE pyfuncs.realtime_commit (
    txid xid8 PRIMARY KEY,
    position bigint UNIQUE,
    committed_at timestamptz
);
CREATE INDEX realtime_commit_pending ON pyfuncs.realtime_commit (txid) WHERE position IS NULL;

CREATE TABLE pyfuncs.realtime_change (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid xid8 NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    op text NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),
    new_row jsonb,
    old_row jsonb
);
CREATE INDEX realtime_change_txid ON pyfuncs.realtime_change (txid, id);

-- The oldest position still kept (pruning moves it on) and how long changes are kept.
CREATE TABLE pyfuncs.realtime_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    retention interval NOT NULL DEFAULT '7 days',
    pruned_through bigint NOT NULL DEFAULT 0,
    -- the key the gateways encrypt positions with, so that a subscriber cannot count the
    -- changes it was not shown (README "Realtime: the gateway"); random per database
    position_key bytea NOT NULL
        DEFAULT sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())),
    -- how this database captures: 'trigger' (the triggers below, every capturing commit
    -- taking the next position in turn) or 'wal' (a consumer decodes the WAL and writes the
    -- log, positions are commit LSNs; README "Realtime: how changes are captured")
    mode text NOT NULL DEFAULT 'trigger' CHECK (mode IN ('trigger', 'wal')),
    -- the end of the last commit the consumer applied, written with its changes: a consumer
    -- that dies anywhere starts again after it, and the slot is advanced only to it
    applied_lsn pg_lsn NOT NULL DEFAULT '0/0',
    -- the end of the WAL when a batch last found a captured table's name changed: changes
    -- committed before it may carry the old names (realtime_wal_doubt)
    renamed_lsn pg_lsn NOT NULL DEFAULT '0/0',
    -- the end of the WAL when the database last switched to 'wal': a transaction committed
    -- before it may be in the log already, captured by its triggers (realtime_set_mode), and
    -- realtime_wal_apply looks only those up
    wal_since pg_lsn NOT NULL DEFAULT '0/0'
);
INSERT INTO pyfuncs.realtime_state DEFAULT VALUES;

-- Locked by every deploy, never written. A table lock, not an advisory one (any session can
-- take those), in SHARE UPDATE EXCLUSIVE mode: it conflicts with itself but not with the ROW SHARE / ROW
-- EXCLUSIVE locks that merely naming a table in a prepared statement takes before any
-- privilege check (PREPARE ... FOR UPDATE), and the statements that do take it (LOCK TABLE,
-- VACUUM, ANALYZE, ALTER TABLE...) check their privileges first. ANALYZE's check admits the
-- database's owner, who is trusted not to deny service (README "Security model").
CREATE TABLE pyfuncs.deploy_lock ();

-- A row of a table with columns of types defined in the database (enums, domains over
-- them, composite types...) as jsonb, without calling any cast or function their owners
-- could define: built-in columns as to_jsonb makes them, the others as their text (their
-- output functions are built in, or written in C by a superuser). Runs as the capture
-- function's owner, for it only.
CREATE FUNCTION pyfuncs.realtime_image(image anyelement, relid oid) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    columns text;
    result jsonb;
BEGIN
    SELECT string_agg(format(
               CASE WHEN (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END) < 16384
                    THEN '($1).%1$I AS %1$I' ELSE 'format(''%%s'', ($1).%1$I) AS %1$I' END,
               a.attname), ', ' ORDER BY a.attnum)
    INTO columns
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = relid AND a.attnum > 0 AND NOT a.attisdropped;
    EXECUTE format('SELECT to_jsonb(r) FROM (SELECT %s) r', columns) INTO result USING image;
    RETURN result;
END
$$;
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_image(anyelement, oid) FROM PUBLIC;

-- Runs as the writer of an enabled table, so it is SECURITY DEFINER: writers need no
-- privileges on the capture tables. It records changes of enabled tables only (and of their
-- partitions, under the name the table was enabled with), and it converts rows with
-- to_jsonb only when every column has a built-in type: to_jsonb calls the casts to json
-- that the owner of a type may define, and those must not run as this function's owner. Other rows take realtime_image. The checks are part of the one
-- statement that writes the change, so a plain table's row costs no extra statement.
CREATE FUNCTION pyfuncs.realtime_capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- one plan for every row: custom plans (they fold the CASEs) would be planned row by row
SET plan_cache_mode = force_generic_plan
-- values written whatever the writer's session says (a key in a writer's TimeZone never
-- matched the one the gateway reads: a red team), as the WAL consumer writes them
-- (pyfuncs.config.VALUE_SETTINGS)
SET "DateStyle" = 'ISO, MDY' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET "TimeZone" = 'UTC' SET lc_monetary = 'C'
SET quote_all_identifiers = off AS $$
DECLARE
    enabled oid := TG_RELID;
    written bigint;
BEGIN
    LOOP
        INSERT INTO pyfuncs.realtime_change (txid, schema_name, table_name, op, new_row, old_row)
        SELECT pg_current_xact_id(), t.schema_name, t.table_name, TG_OP,
               CASE WHEN TG_LEVEL = 'STATEMENT' OR TG_OP = 'DELETE' THEN NULL
                    WHEN plain.builtin THEN to_jsonb(NEW)
                    ELSE pyfuncs.realtime_image(NEW, TG_RELID) END,
               CASE WHEN TG_LEVEL = 'STATEMENT' OR TG_OP = 'INSERT' THEN NULL
                    WHEN plain.builtin THEN to_jsonb(OLD)
                    ELSE pyfuncs.realtime_image(OLD, TG_RELID) END
        FROM pyfuncs.realtime_table t, (
            -- dropped columns have type 0; a domain over a built-in type takes
            -- realtime_image too, which converts it as its base type
            SELECT NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = TG_RELID
                               AND a.attnum > 0 AND a.atttypid >= 16384)
        ) AS plain (builtin)
        WHERE t.relid = enabled;
        GET DIAGNOSTICS written = ROW_COUNT;
        EXIT WHEN written > 0;
        -- not enabled itself: a partition of an enabled table?
        SELECT t.relid INTO enabled FROM pyfuncs.realtime_table t
        WHERE t.relid IN (SELECT a.relid FROM pg_partition_ancestors(TG_RELID) a);
        IF enabled IS NULL THEN
            RAISE EXCEPTION 'pyfuncs: % is not enabled for realtime', TG_RELID::regclass
                USING ERRCODE = '42501',
                      HINT = 'capture runs only on the tables pyfuncs.enable_realtime enabled';
        END IF;
    END LOOP;
    INSERT INTO pyfuncs.realtime_commit (txid) VALUES (pg_current_xact_id())
    ON CONFLICT (txid) DO NOTHING;
    RETURN NULL;
END
$$;

REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_capture() FROM PUBLIC;

-- Trigger mode's positions, given after commit (README "Realtime: the change feed"): every
-- capturing transaction committed since the last call takes the next position, in the order
-- of its last change. A transaction that wrote a row after another did waited for that one's
-- row lock, which PostgreSQL releases only once that one is visible: so whenever it is seen
-- committed, the other is too, and its last change came later. One call at a time (the
-- caller holds the capture lock until it commits: realtime_wal_batch, realtime_set_mode),
-- and positions are read only once committed, so a position becomes visible only after
-- every smaller one. Writers share nothing at commit, neither a lock nor a NOTIFY (whose
-- queue lock PostgreSQL also holds until the commit is flushed): the call wakes consumers
-- once for all. Returns how many changes it gave positions.
CREATE FUNCTION pyfuncs.realtime_sequence() RETURNS bigint
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
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_sequence() FROM PUBLIC;

-- Delete committed changes older than the retention (or `keep`); returns how many commits
-- went. Consumers behind the new pruned_through are told to resync when they next read.
CREATE FUNCTION pyfuncs.prune_realtime(keep interval DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    horizon bigint;
    pruned bigint;
BEGIN
    SELECT max(position) INTO horizon FROM pyfuncs.realtime_commit
    WHERE position IS NOT NULL
      AND committed_at < clock_timestamp()
          - coalesce(keep, (SELECT retention FROM pyfuncs.realtime_state));
    IF horizon IS NULL THEN
        RETURN 0;
    END IF;
    UPDATE pyfuncs.realtime_state SET pruned_through = greatest(pruned_through, horizon);
    DELETE FROM pyfuncs.realtime_change ch USING pyfuncs.realtime_commit c
    WHERE ch.txid = c.txid AND c.position <= horizon;
    DELETE FROM pyfuncs.realtime_commit WHERE position <= horizon;
    GET DIAGNOSTICS pruned = ROW_COUNT;
    RETURN pruned;
END
$$;

-- Capture from the WAL (0009, made safe with untrusted writers and login roles in 0010).
-- Locked (SHARE UPDATE EXCLUSIVE, never written) by the consumer for each batch and by
-- whatever creates, drops or switches away from the slot, so those never overlap a batch.
-- A table lock rather than a row lock: it gives the transaction no xid and writes no WAL,
-- so an idle consumer's polls write nothing; and only pyfuncs' owner may take it (see
-- deploy_lock).
CREATE TABLE pyfuncs.realtime_capture_lock ();

-- The slot of this database (slot names are per cluster).
CREATE FUNCTION pyfuncs.realtime_slot_name() RETURNS name
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
RETURN ('pyfuncs_realtime_' || (SELECT oid FROM pg_database
                                WHERE datname = current_database()))::name;

-- The names under which the consumer last saw each captured table: an enabled table, or a
-- partition of one, captured as `enabled`. wal2json names a change's table, not its OID, so
-- a batch routes changes by these names, and compares them with the catalog first: a table
-- renamed, or a name taken over by another table, between a change and the batch that reads
-- it would otherwise deliver the change as another table's or drop it.
CREATE TABLE pyfuncs.realtime_wal_name (
    relid oid PRIMARY KEY,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    enabled oid NOT NULL,
    UNIQUE (schema_name, table_name)
);

-- Names that changed (both the old and the new): a change under one of them committed before
-- realtime_state.renamed_lsn may belong to another table, so its transaction is skipped and
-- consumers resync. Emptied once everything up to renamed_lsn has been applied.
CREATE TABLE pyfuncs.realtime_wal_doubt (
    schema_name text NOT NULL,
    table_name text NOT NULL,
    PRIMARY KEY (schema_name, table_name)
);

-- Names that left the capture (their table dropped, no longer captured, or out of a captured
-- table's partitions) and the end of the WAL when a batch found them gone: until everything
-- before that is applied, changes under such a name are its old table's, so another table
-- that takes it is in doubt (realtime_wal_names).
CREATE TABLE pyfuncs.realtime_wal_gone (
    schema_name text NOT NULL,
    table_name text NOT NULL,
    relid oid NOT NULL,
    lsn pg_lsn NOT NULL,
    PRIMARY KEY (schema_name, table_name)
);

-- Transactions the consumer skipped, and why: what it could not capture (consumers were told
-- to resync, so nothing was lost to them). Kept as long as changes are (retention).
CREATE TABLE pyfuncs.realtime_skipped (
    lsn pg_lsn PRIMARY KEY,  -- the end of its commit (its position, had it been captured)
    txid xid8 NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    reason text NOT NULL
);

-- The tables whose changes are captured now: every enabled table and every partition of one
-- (as the nearest enabled table), under their current names. Partitions are found in
-- pg_inherits, which takes no lock: pg_partition_tree locks every partition, so a writer of
-- a partitioned table holding a lock on it (LOCK TABLE reaches its partitions) would hold up
-- every batch, and with it the capture of every table.
CREATE FUNCTION pyfuncs.realtime_wal_tables()
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
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_tables() FROM PUBLIC;

-- Whether the captured tables' names differ from those the consumer saw last.
CREATE FUNCTION pyfuncs.realtime_wal_names_stale() RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN EXISTS (
        SELECT FROM pyfuncs.realtime_wal_tables() c
        FULL JOIN pyfuncs.realtime_wal_name w ON w.relid = c.relid
        WHERE (c.schema_name, c.table_name, c.enabled)
              IS DISTINCT FROM (w.schema_name, w.table_name, w.enabled));
END
$$;
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_names_stale() FROM PUBLIC;

-- Compare the captured tables' names with those the consumer saw last, and write only when
-- they differ (an idle consumer writes nothing). A table whose name changed, and a name that
-- now belongs to another table, put both names in doubt up to the end of the WAL now: every
-- change made under the old name committed before the rename did, which is before now.
CREATE FUNCTION pyfuncs.realtime_wal_names(applied pg_lsn) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    current jsonb;
    doubtful bigint;
BEGIN
    IF applied >= (SELECT s.renamed_lsn FROM pyfuncs.realtime_state s)
       AND EXISTS (SELECT FROM pyfuncs.realtime_wal_doubt) THEN
        DELETE FROM pyfuncs.realtime_wal_doubt;
    END IF;
    IF EXISTS (SELECT FROM pyfuncs.realtime_wal_gone g WHERE g.lsn <= applied) THEN
        DELETE FROM pyfuncs.realtime_wal_gone g WHERE g.lsn <= applied;
    END IF;
    IF NOT pyfuncs.realtime_wal_names_stale() THEN
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
        UNION
        SELECT c.schema_name, c.table_name FROM now_named c
        JOIN pyfuncs.realtime_wal_gone g
          ON (g.schema_name, g.table_name) = (c.schema_name, c.table_name)
        WHERE g.relid <> c.relid
    ), noted AS (
        INSERT INTO pyfuncs.realtime_wal_doubt SELECT * FROM doubt ON CONFLICT DO NOTHING
    ), gone AS (
        INSERT INTO pyfuncs.realtime_wal_gone AS g (schema_name, table_name, relid, lsn)
        SELECT w.schema_name, w.table_name, w.relid, pg_current_wal_insert_lsn()
        FROM pyfuncs.realtime_wal_name w
        WHERE NOT EXISTS (SELECT FROM now_named c WHERE c.relid = w.relid)
          AND NOT EXISTS (SELECT FROM now_named c WHERE (c.schema_name, c.table_name)
                                                        = (w.schema_name, w.table_name))
        ON CONFLICT (schema_name, table_name)
        DO UPDATE SET relid = excluded.relid, lsn = excluded.lsn
    )
    SELECT count(*) INTO doubtful FROM doubt;
    IF doubtful > 0 THEN
        UPDATE pyfuncs.realtime_state SET renamed_lsn = pg_current_wal_insert_lsn();
    END IF;
    -- a name taken again is in doubt now, or back with its table
    DELETE FROM pyfuncs.realtime_wal_gone g
    WHERE EXISTS (SELECT FROM jsonb_to_recordset(current) AS c (schema_name text, table_name text)
                  WHERE (c.schema_name, c.table_name) = (g.schema_name, g.table_name));
    DELETE FROM pyfuncs.realtime_wal_name;
    INSERT INTO pyfuncs.realtime_wal_name (relid, schema_name, table_name, enabled)
    SELECT * FROM jsonb_to_recordset(current)
        AS c (relid oid, schema_name text, table_name text, enabled oid);
END
$$;
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_names(pg_lsn) FROM PUBLIC;

-- A new slot starts from now: the names the consumer compares with are today's.
CREATE FUNCTION pyfuncs.realtime_wal_names_reset() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM pyfuncs.realtime_wal_doubt;
    DELETE FROM pyfuncs.realtime_wal_gone;
    DELETE FROM pyfuncs.realtime_wal_name;
    INSERT INTO pyfuncs.realtime_wal_name (relid, schema_name, table_name, enabled)
    SELECT t.relid, t.schema_name, t.table_name, t.enabled FROM pyfuncs.realtime_wal_tables() t;
END
$$;
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_names_reset() FROM PUBLIC;

-- Take the capture lock (realtime_capture_lock) for the rest of the transaction, waiting at
-- most 30 s: a transaction that keeps it (a consumer that called realtime_wal_capture in a
-- transaction it left open) then costs the others an error that names it, not a wait
-- without end. The capture function also gives its caller's session an
-- idle_in_transaction_session_timeout, which ends such a transaction sooner.
CREATE FUNCTION pyfuncs.realtime_capture_lock_take() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET lock_timeout = '30s' AS $$
DECLARE
    holder record;
BEGIN
    LOCK TABLE pyfuncs.realtime_capture_lock IN SHARE UPDATE EXCLUSIVE MODE;
EXCEPTION WHEN lock_not_available THEN
    SELECT l.pid, a.usename, a.state, a.state_change INTO holder
    FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'relation' AND l.relation = 'pyfuncs.realtime_capture_lock'::regclass
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.granted AND l.pid <> pg_backend_pid()
    LIMIT 1;
    RAISE EXCEPTION 'pyfuncs: realtime capture is held up: backend % (role %, %) has held '
                    'the capture lock for more than 30 s', holder.pid, holder.usename,
                    coalesce(holder.state || ' since ' || holder.state_change, 'state unknown')
        USING ERRCODE = '55P03',
              HINT = 'a transaction that called pyfuncs.realtime_wal_capture must end; '
                     'pg_terminate_backend ends it';
END
$$;
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_capture_lock_take() FROM PUBLIC;

-- Values as wal2json gives them (the type's text output, numbers and booleans as JSON; a
-- domain as its base type) made into what to_jsonb gives in trigger mode for the types whose
-- two forms differ: json, timestamps, bytea (wal2json leaves out its \x), arrays of
-- numbers, booleans and text, and domains over numbers and booleans (wal2json writes those
-- as text: a key of such a domain never matched the row's). Other types arrive as wal2json
-- writes them (README "What a change carries"). No SET clause, so that it is inlined.
CREATE FUNCTION pyfuncs.realtime_wal_value(type text, value jsonb) RETURNS jsonb
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

-- Why jsonb refuses the text of a json value, or NULL when it does not: json keeps its text as
-- written, and takes escapes jsonb cannot hold ("\u0000", a lone surrogate, in a database
-- not in UTF-8 a character its encoding lacks). realtime_wal_apply asks only about json
-- values with a \u in them, so the exception block (a subtransaction) is rarely entered.
CREATE FUNCTION pyfuncs.realtime_wal_json_refusal(value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    message text;
    detail text;
BEGIN
    PERFORM value::jsonb;
    RETURN NULL;
EXCEPTION WHEN data_exception THEN
    GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
    RETURN 'a json value jsonb refuses: ' || message || coalesce(' (' || detail || ')', '');
END
$$;
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_json_refusal(text) FROM PUBLIC;

-- Whether an error is about the server rather than about what was decoded (connection,
-- transaction state, resources, locks, cancellation, the slot, files, corruption): then the
-- batch fails as it is, to be tried again, and nothing is skipped.
CREATE FUNCTION pyfuncs.realtime_wal_transient(sqlstate text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN left(sqlstate, 2) IN ('08', '25', '40', '53', '55', '57', '58', '72', 'F0')
       OR sqlstate IN ('XX001', 'XX002');
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_transient(text) FROM PUBLIC;

-- Make this database's slot if it is missing or was invalidated (it held more WAL than
-- max_slot_wal_keep_size allows), and say whether it made one. Changes committed while there
-- was no slot are not in the log: if realtime was already capturing from the WAL, every
-- consumer is told to resync (pruned_through moves past every position handed out). Creating
-- a slot must come before the transaction writes anything (PostgreSQL's rule), and waits for
-- the transactions running then to end. Runs as pyfuncs' owner: callers need no REPLICATION.
-- The slot is created in a subtransaction of its own: at the top level of the transaction,
-- PostgreSQL 15 failed about one creation in thirty with an internal error ("snapshot
-- reference ... is not owned by resource owner TopTransaction") while another database
-- created its slot and a third was created or dropped; in a subtransaction, none in
-- hundreds. Should it still fail so, it is tried again (five times in all).
-- Its settings are pinned (as every function that writes the log from the WAL), so that
-- nothing it writes depends on its caller's.
CREATE FUNCTION pyfuncs.realtime_wal_slot() RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, MDY' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET "TimeZone" = 'UTC' AS $$
DECLARE
    slot name := pyfuncs.realtime_slot_name();
    status text;
BEGIN
    PERFORM pyfuncs.realtime_capture_lock_take();
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
    -- making the slot waits for every transaction of the cluster open as it begins, under
    -- the capture lock: for 10 s at most (or the caller's shorter lock_timeout; a login
    -- role's open transaction held every table's capture up for as long as it liked)
    IF current_setting('lock_timeout')::interval NOT BETWEEN interval '1 ms' AND interval '10 s' THEN
        PERFORM set_config('lock_timeout', '10s', true);
    END IF;
    FOR attempt IN 1..5 LOOP
        BEGIN
            PERFORM pg_create_logical_replication_slot(slot, 'wal2json');
            EXIT;
        EXCEPTION
            WHEN internal_error THEN
                IF attempt = 5 THEN
                    RAISE;
                END IF;
            WHEN lock_not_available THEN
                RAISE EXCEPTION 'pyfuncs: making the realtime slot waited % for the '
                                'transactions open as it began, and gave up',
                                current_setting('lock_timeout')
                    USING ERRCODE = '55P03',
                          HINT = 'making a slot waits for every transaction of the cluster open '
                                 'when it starts (prepared ones too: pg_prepared_xacts); try '
                                 'again when they have ended';
        END;
    END LOOP;
    PERFORM pyfuncs.realtime_wal_names_reset();
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
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_slot() FROM PUBLIC;

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
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_add_tables() FROM PUBLIC;

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
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_apply(
    name, pg_lsn, integer, pg_snapshot, bigint, bigint[], bigint[], text[]) FROM PUBLIC;

-- Whether realtime_wal_apply up to `upto` succeeds; what it wrote is undone either way.
-- Server-side failures (realtime_wal_transient) are raised, not answered.
CREATE FUNCTION pyfuncs.realtime_wal_probe(
    slot name, upto pg_lsn, max_changes integer, snap pg_snapshot, top bigint
) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    failed text;
BEGIN
    PERFORM FROM pyfuncs.realtime_wal_apply(slot, upto, max_changes, snap, top);
    -- (a SQLSTATE of pyfuncs' own that never leaves this function: it undoes the probe)
    RAISE EXCEPTION 'pyfuncs: probe succeeded' USING ERRCODE = 'PFW00';
EXCEPTION
    WHEN SQLSTATE 'PFW00' THEN
        RETURN true;
    WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS failed = RETURNED_SQLSTATE;
        IF pyfuncs.realtime_wal_transient(failed) THEN
            RAISE;
        END IF;
        RETURN false;
END
$$;
REVOKE EXECUTE ON FUNCTION
    pyfuncs.realtime_wal_probe(name, pg_lsn, integer, pg_snapshot, bigint) FROM PUBLIC;

-- A batch failed on something it decoded (`failed`, `failure`, `detail`: its SQLSTATE,
-- message and detail):
-- find the first transaction that fails (probing up to the 1st, 2nd, 4th... commit, then
-- halving), apply those before it, and skip it: recorded in realtime_skipped, and
-- pruned_through moved to its position so that consumers behind it resync. A failure that
-- does not come back when probed is raised as it was, and nothing is skipped. The slow path:
-- the normal one costs one subtransaction per batch.
CREATE FUNCTION pyfuncs.realtime_wal_isolate(
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

-- One batch (realtime_wal_capture is its entry for consumers, realtime_set_mode calls it
-- directly); in trigger mode, the positions of what committed since the last batch
-- (realtime_sequence) and nothing else. The slot is advanced at the start of the next batch, to an applied_lsn that has
-- committed: so the slot never gets ahead of what is durable, and a batch that is repeated
-- (its transaction lost, or its advance) skips what was applied. `done`: everything flushed
-- when the batch began has been read. The output settings are pinned, so that the values
-- written (wal2json calls each type's output function in this session) are the same
-- whatever the caller's session says, and as trigger mode writes them with the defaults.
-- No lock is waited for longer than 10 s (the capture lock, 30 s): a batch held up fails,
-- and the consumer tries again, instead of waiting with the capture lock held. A streaming
-- consumer holding the slot is ended first (realtime_wal_free).
CREATE FUNCTION pyfuncs.realtime_wal_batch(max_changes integer)
RETURNS TABLE (captured bigint, done boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, MDY' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET "TimeZone" = 'UTC' SET lock_timeout = '10s' SET lc_monetary = 'C'
SET quote_all_identifiers = off AS $$
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
        RETURN QUERY SELECT pyfuncs.realtime_sequence(), true;
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

-- One batch of the consumer (pyfuncs/capture.py; realtime_wal_batch). Runs as pyfuncs' owner,
-- who may read the slot (REPLICATION or superuser); its callers need EXECUTE only (README
-- "Privileges"). It gives its caller's session an idle_in_transaction_session_timeout of
-- 10 s (unless it has a shorter one): a caller that leaves its transaction open keeps the
-- capture lock, and every other batch, enabling and disabling wait for it.
CREATE FUNCTION pyfuncs.realtime_wal_capture(max_changes integer DEFAULT 10000)
RETURNS TABLE (captured bigint, done boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET "DateStyle" = 'ISO, MDY' SET "IntervalStyle" = 'postgres' SET extra_float_digits = 1
SET bytea_output = 'hex' SET "TimeZone" = 'UTC' AS $$
DECLARE
    idle text := current_setting('idle_in_transaction_session_timeout');
BEGIN
    IF idle::interval = interval '0' OR idle::interval > interval '10 s' THEN
        PERFORM set_config('idle_in_transaction_session_timeout', '10s', false);
    END IF;
    RETURN QUERY SELECT * FROM pyfuncs.realtime_wal_batch(max_changes);
END
$$;
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_capture(integer) FROM PUBLIC;

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
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_wal_write(text, bigint[], bigint[], text[])
    FROM PUBLIC;

-- A table and its partitions, at every level, from the catalog (without locking them: a
-- writer's lock must not hold up enabling or switching), for the checks below.
CREATE FUNCTION pyfuncs.realtime_tree(target regclass) RETURNS SETOF oid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE tree (relid) AS (
        SELECT target::oid
        UNION ALL
        SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid
        JOIN pg_class c ON c.oid = i.inhrelid AND c.relispartition)
    SELECT relid FROM tree
$$;

-- What capture from the WAL needs of a table: its old rows identified (README "What a
-- change carries"). Raises when it cannot say which row an UPDATE or DELETE changed.
CREATE FUNCTION pyfuncs.realtime_check_identity(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    part record;
BEGIN
    -- (each partition has a replica identity of its own)
    FOR part IN SELECT c.oid, c.relreplident FROM pyfuncs.realtime_tree(target) t (relid)
                JOIN pg_class c ON c.oid = t.relid LOOP
        -- (PostgreSQL takes a DEFERRABLE primary key for no replica identity)
        -- (an index named as the identity and then dropped leaves 'i' and no identity)
        IF part.relreplident = 'n' OR (part.relreplident = 'd' AND NOT EXISTS (
                SELECT FROM pg_index i WHERE i.indrelid = part.oid AND i.indisprimary
                                         AND i.indimmediate))
           OR (part.relreplident = 'i' AND NOT EXISTS (
                SELECT FROM pg_index i WHERE i.indrelid = part.oid AND i.indisreplident)) THEN
            RAISE EXCEPTION 'pyfuncs: % has no replica identity, so the WAL does not say which '
                            'row an UPDATE or DELETE changed', part.oid::regclass
                USING ERRCODE = '55000',
                      HINT = format('give it a primary key that is not DEFERRABLE, or ALTER '
                                    'TABLE %s REPLICA IDENTITY FULL', part.oid::regclass);
        END IF;
    END LOOP;
END
$$;

-- Trigger mode orders the transactions a batch gives positions by their last change, which
-- is commit order for each row because a writer of a row waits for the one before it. With a
-- DEFERRABLE primary key it does not: an INSERT of a key another transaction is deleting
-- waits only at its commit, after its change was recorded (found by a red team). So trigger
-- mode refuses such a table (enabling it, or switching to trigger with it enabled).
CREATE FUNCTION pyfuncs.realtime_check_key(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    offender regclass;
BEGIN
    -- (a partition's key may be DEFERRABLE where its parent's is not)
    SELECT t.relid::regclass INTO offender
    FROM pyfuncs.realtime_tree(target) t (relid) JOIN pg_index i ON i.indrelid = t.relid
    WHERE i.indisprimary AND NOT i.indimmediate LIMIT 1;
    IF offender IS NOT NULL THEN
        RAISE EXCEPTION 'pyfuncs: the primary key of % is DEFERRABLE, so trigger capture cannot '
                        'keep its rows'' changes in commit order', offender
            USING ERRCODE = '55000',
                  HINT = 'make the key NOT DEFERRABLE, or capture from the WAL (pyfuncs realtime '
                         'mode wal; with REPLICA IDENTITY FULL)';
    END IF;
END
$$;

-- Enabling in 'wal' mode makes the slot (first, as PostgreSQL requires) when it is missing,
-- and adds the capture triggers disabled: they mark the table as captured in the catalog
-- (which subscribers can read, see realtime_table_info) and cost a writer nothing. The
-- table's names are noted for the consumer (realtime_wal_name), so that a rename before it
-- runs is noticed.
CREATE FUNCTION pyfuncs.enable_realtime(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel record;
    wal boolean := (SELECT mode = 'wal' FROM pyfuncs.realtime_state);
    made boolean := false;
    part oid;
    bound text;
    deadline timestamptz;
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
        -- From here the capture lock is held (realtime_wal_slot takes it), so every wait is
        -- bounded: 10 s at most for all (or the caller's shorter lock_timeout). The triggers
        -- are made on the table and its partitions, which any role can hold (by naming the
        -- table in a PREPARE it keeps open): a red team's held every table's capture up for
        -- as long as it liked. They are locked first, then, within what is left of the bound.
        IF current_setting('lock_timeout')::interval NOT BETWEEN interval '1 ms' AND interval '10 s' THEN
            PERFORM set_config('lock_timeout', '10s', true);
        END IF;
        bound := current_setting('lock_timeout');
        deadline := clock_timestamp() + bound::interval;
        made := pyfuncs.realtime_wal_slot();
    END IF;
    -- a slot made here must not outlive an enabling that fails (slots are not transactional:
    -- it would hold WAL for ever)
    BEGIN
        IF wal THEN
            BEGIN
                FOR part IN SELECT t FROM pyfuncs.realtime_tree(target) t ORDER BY 1 LOOP
                    PERFORM set_config('lock_timeout', greatest(1, ceil(1000 * extract(epoch FROM
                                       deadline - clock_timestamp())))::bigint || 'ms', true);
                    EXECUTE format('LOCK TABLE ONLY %s IN SHARE ROW EXCLUSIVE MODE', part::regclass);
                END LOOP;
            EXCEPTION WHEN lock_not_available THEN
                RAISE EXCEPTION 'pyfuncs: enabling % waited % for locks (the last on %), and gave up',
                                target, bound, part::regclass
                    USING ERRCODE = '55P03',
                          HINT = 'a transaction holding that table (pg_locks shows which) must end first';
            END;
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
            PERFORM pyfuncs.realtime_wal_names((SELECT s.applied_lsn FROM pyfuncs.realtime_state s));
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
    EXCEPTION WHEN OTHERS THEN
        IF made THEN
            PERFORM pyfuncs.realtime_wal_drop();
        END IF;
        RAISE;
    END;
END
$$;

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
    touched boolean := false;
BEGIN
    FOR enabled IN
        SELECT e.relid FROM pyfuncs.realtime_table e
        WHERE EXISTS (SELECT FROM pg_event_trigger_ddl_commands() d
                      WHERE d.classid = 'pg_class'::regclass
                        AND d.objid IN (SELECT pyfuncs.realtime_tree(e.relid)))
    LOOP
        PERFORM pyfuncs.realtime_partition_triggers(enabled.relid);
        touched := true;
    END LOOP;
    IF touched AND (SELECT s.mode = 'wal' FROM pyfuncs.realtime_state s)
       AND pyfuncs.realtime_wal_names_stale() THEN
        PERFORM pyfuncs.realtime_capture_lock_take();
        PERFORM pyfuncs.realtime_wal_names((SELECT s.applied_lsn FROM pyfuncs.realtime_state s));
    END IF;
END
$$;

REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_new_partitions() FROM PUBLIC;

CREATE EVENT TRIGGER pyfuncs_realtime_partitions ON ddl_command_end
WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
EXECUTE FUNCTION pyfuncs.realtime_new_partitions();

-- Disabling the last table in 'wal' mode drops the slot, so that it holds no WAL. Changes of
-- the table that the consumer has not applied yet are not captured any more. The triggers
-- are found by the table's name now (it may have been renamed since it was enabled).
CREATE FUNCTION pyfuncs.disable_realtime(target regclass) RETURNS void
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

-- Drop this database's slot if it exists, waiting for a batch in progress, and ending a
-- streaming consumer's hold on it.
CREATE FUNCTION pyfuncs.realtime_wal_drop() RETURNS void
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

-- Switch how this database captures (README "Choosing the mode"). To 'wal': the slot is made
-- first, then the triggers are disabled, which waits for the transactions writing to enabled
-- tables; those that commit between the two are captured by their triggers and skipped by
-- the consumer (it knows them by transaction id). To 'trigger': the triggers are enabled
-- (again waiting for writers), what the WAL holds up to then is applied here, trigger
-- positions continue after the last LSN position, and the slot goes. Positions keep
-- increasing across switches: an LSN is larger than the number of commits before it.
CREATE FUNCTION pyfuncs.realtime_set_mode(target text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    current text := (SELECT mode FROM pyfuncs.realtime_state);
    rel record;
    action text := CASE target WHEN 'wal' THEN 'DISABLE' ELSE 'ENABLE' END;
    enough timestamptz;
    pending pg_lsn;
    switch_at timestamptz;
    switched boolean := false;
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
                switch_at := clock_timestamp() + interval '50 milliseconds';
                WHILE pg_current_wal_flush_lsn() < pending LOOP
                    IF clock_timestamp() > enough THEN
                        RAISE EXCEPTION 'pyfuncs: the WAL was not flushed in 30 s' USING ERRCODE = '55000';
                    END IF;
                    IF NOT switched AND clock_timestamp() > switch_at THEN
                        -- the WAL writer flushes a tail that no commit follows only once its
                        -- page fills: seconds on an idle cluster that commits asynchronously.
                        -- Ending the WAL segment flushes it at once (where the caller may:
                        -- superusers, or a role granted EXECUTE on pg_switch_wal)
                        switched := true;
                        BEGIN
                            PERFORM pg_switch_wal();
                        EXCEPTION WHEN insufficient_privilege THEN
                            NULL;
                        END;
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

-- What the gateway saw of its clients (README "Realtime: the gateway"): connections, auth
-- failures, subscriptions and why each connection ended. Written by the gateway in batches.
CREATE TABLE pyfuncs.realtime_audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    event text NOT NULL CHECK (event IN ('connect', 'auth_failed', 'subscribe', 'unsubscribe',
                                         'subscribe_failed', 'token_expired', 'rate_limited',
                                         'disconnect')),
    connection text NOT NULL,
    role text,
    subject text,
    detail jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX realtime_audit_at ON pyfuncs.realtime_audit (at);
