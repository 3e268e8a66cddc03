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
-- Every routine loads the runtime as its caller, so the code (not a secret) is public.
GRANT SELECT ON pyfuncs.runtime_module TO PUBLIC;

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
    rows = plpy.execute("SELECT name, code, magic FROM pyfuncs.runtime_module")
    if any(row["magic"] != MAGIC_NUMBER or row["code"] is None for row in rows):
        # compiled by another Python than this one: the sources too, to compile
        rows = plpy.execute("SELECT name, source, code, magic FROM pyfuncs.runtime_module")
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
-- runs programs or reads and writes all data.
CREATE FUNCTION pyfuncs.set_identity(role text, claims text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    SELECT EXISTS (SELECT FROM pg_roles p
                   WHERE (p.rolsuper OR p.rolcreaterole OR p.rolreplication OR p.rolbypassrls
                          OR p.rolname IN ('pg_execute_server_program', 'pg_read_server_files',
                                           'pg_write_server_files', 'pg_read_all_data',
                                           'pg_write_all_data'))
                     AND pg_has_role(a.oid, p.oid, 'MEMBER')) AS powerful
    INTO r FROM pg_roles a WHERE a.rolname = role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pyfuncs: the token names role %, which does not exist', quote_literal(role)
            USING ERRCODE = '28000', HINT = 'create the role, or fix the token''s role claim';
    END IF;
    IF r.powerful OR role = session_user THEN
        RAISE EXCEPTION 'pyfuncs: a token may not act as %', quote_ident(role)
            USING ERRCODE = '28000',
                  HINT = 'tokens name application roles: not a superuser or a role with '
                         'superuser-like powers or a member of one, not the login role';
    END IF;
    PERFORM set_config('role', role, true);
    PERFORM set_config('request.jwt.claims', claims, true);
END
$$;
GRANT EXECUTE ON FUNCTION pyfuncs.set_identity(text, text) TO PUBLIC;


-- Realtime change capture (README "Realtime: the change feed"). Each change to an enabled
-- table is written here in the writing transaction. At commit, one deferred trigger per
-- transaction gives it the next commit position while holding a lock that every capturing
-- commit takes: PostgreSQL makes a transaction visible before it releases its locks, so once
-- position N is visible every smaller position is visible too or never will be. A consumer
-- reading "after my last position" in position order therefore misses nothing and repeats
-- nothing, whatever order transactions started or wrote in.
CREATE SEQUENCE pyfuncs.realtime_position;

CREATE TABLE pyfuncs.realtime_table (
    relid oid PRIMARY KEY,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    enabled_at timestamptz NOT NULL DEFAULT now()
);

-- One row per capturing transaction; `position` is set at commit.
CREATE TABLE pyfuncs.realtime_commit (
    txid xid8 PRIMARY KEY,
    position bigint UNIQUE,
    committed_at timestamptz
);

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
        DEFAULT sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()))
);
INSERT INTO pyfuncs.realtime_state DEFAULT VALUES;

-- Locked by every capturing commit (see realtime_commit_position), never written; deploys
-- lock deploy_lock the same way. Table locks, not advisory ones (any session can take those),
-- in SHARE UPDATE EXCLUSIVE mode: it conflicts with itself but not with the ROW SHARE / ROW
-- EXCLUSIVE locks that merely naming a table in a prepared statement takes before any
-- privilege check (PREPARE ... FOR UPDATE), and the statements that do take it (LOCK TABLE,
-- VACUUM, ANALYZE, ALTER TABLE...) check their privileges first. ANALYZE's check admits the
-- database's owner, who is trusted not to deny service (README "Security model").
CREATE TABLE pyfuncs.realtime_sequencer ();
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
SET plan_cache_mode = force_generic_plan AS $$
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

-- The commit step, once per capturing transaction as it commits. The wake-up carries no
-- payload (any role may LISTEN, and positions are not for everyone) and is skipped when the
-- NOTIFY queue is half full: any role can fill it, and a full queue would fail this commit.
-- Consumers poll as well, so a skipped wake-up delays delivery by at most their poll interval.
CREATE FUNCTION pyfuncs.realtime_commit_position() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    assigned bigint;
BEGIN
    LOCK TABLE pyfuncs.realtime_sequencer IN SHARE UPDATE EXCLUSIVE MODE;
    assigned := nextval('pyfuncs.realtime_position');
    UPDATE pyfuncs.realtime_commit SET position = assigned, committed_at = clock_timestamp()
    WHERE txid = NEW.txid;
    IF pg_notification_queue_usage() < 0.5 THEN
        PERFORM pg_notify('pyfuncs_realtime', '');
    END IF;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_capture() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_commit_position() FROM PUBLIC;

CREATE CONSTRAINT TRIGGER realtime_commit_position
    AFTER INSERT ON pyfuncs.realtime_commit
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION pyfuncs.realtime_commit_position();

-- pyfuncs' own tables and the system's are not application tables.
CREATE FUNCTION pyfuncs.enable_realtime(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel record;
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
    IF EXISTS (SELECT 1 FROM pyfuncs.realtime_table WHERE relid = target) THEN
        RETURN;
    END IF;
    INSERT INTO pyfuncs.realtime_table (relid, schema_name, table_name)
    VALUES (target, rel.nspname, rel.relname);
    EXECUTE format('CREATE TRIGGER pyfuncs_realtime AFTER INSERT OR UPDATE OR DELETE ON %I.%I '
                   'FOR EACH ROW EXECUTE FUNCTION pyfuncs.realtime_capture()',
                   rel.nspname, rel.relname);
    EXECUTE format('CREATE TRIGGER pyfuncs_realtime_truncate AFTER TRUNCATE ON %I.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION pyfuncs.realtime_capture()',
                   rel.nspname, rel.relname);
END
$$;

CREATE FUNCTION pyfuncs.disable_realtime(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel record;
BEGIN
    SELECT schema_name, table_name INTO rel FROM pyfuncs.realtime_table WHERE relid = target;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    EXECUTE format('DROP TRIGGER pyfuncs_realtime ON %I.%I', rel.schema_name, rel.table_name);
    EXECUTE format('DROP TRIGGER pyfuncs_realtime_truncate ON %I.%I',
                   rel.schema_name, rel.table_name);
    DELETE FROM pyfuncs.realtime_table WHERE relid = target;
END
$$;

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
