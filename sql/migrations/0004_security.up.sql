-- 0004 up: the security boundary (README "Security model").
-- Every function pins its search_path; the only SECURITY DEFINER functions are the two
-- capture triggers, which nobody but their owner may attach, which check the table they run
-- on, and which never run code another role controls (casts, operators, functions); the
-- locks that serialise pyfuncs' own work are table locks no other role may take.

-- Trigger functions: EXECUTE is checked when a trigger is created, not when it fires, so
-- without it nobody else can attach them to a table of theirs.
REVOKE EXECUTE ON FUNCTION pyfuncs.forbid_change() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_capture() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pyfuncs.realtime_commit_position() FROM PUBLIC;

ALTER FUNCTION pyfuncs.forbid_change() SET search_path = pg_catalog, pg_temp;

-- The runtime loader runs as its caller; a pinned search_path keeps its one query's
-- operators those of pg_catalog, whatever the caller's path says.
ALTER FUNCTION pyfuncs.boot() SET search_path = pg_catalog, pg_temp;

-- The JWT helpers are inlined into RLS policies, so they take no SET clause; SQL-standard
-- bodies are bound when they are created, not looked up in the caller's search_path.
CREATE OR REPLACE FUNCTION pyfuncs.jwt_claims() RETURNS jsonb
LANGUAGE sql STABLE
RETURN coalesce(nullif(pg_catalog.current_setting('request.jwt.claims', true), ''),
                '{}')::pg_catalog.jsonb;

CREATE OR REPLACE FUNCTION pyfuncs.jwt_claim(claim text) RETURNS text
LANGUAGE sql STABLE
RETURN pyfuncs.jwt_claims() OPERATOR(pg_catalog.->>) claim;

CREATE OR REPLACE FUNCTION pyfuncs.current_user_id() RETURNS uuid
LANGUAGE sql STABLE
RETURN nullif(pyfuncs.jwt_claims() OPERATOR(pg_catalog.->>) 'sub', '')::pg_catalog.uuid;

-- A verified token's role and claims for the rest of the transaction (what PostgREST sets).
-- The client and the gateway check the role against their allow-list first; this refuses,
-- whatever they were told, what no token may become: a superuser, the login role itself
-- (that is `SET ROLE NONE` in disguise), or a role that does not exist.
CREATE FUNCTION pyfuncs.set_identity(role text, claims text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    super boolean;
BEGIN
    SELECT r.rolsuper INTO super FROM pg_roles r WHERE r.rolname = role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pyfuncs: the token names role %, which does not exist', quote_literal(role)
            USING ERRCODE = '28000', HINT = 'create the role, or fix the token''s role claim';
    END IF;
    IF super OR role = session_user THEN
        RAISE EXCEPTION 'pyfuncs: a token may not act as %', quote_ident(role)
            USING ERRCODE = '28000',
                  HINT = 'tokens name application roles: not a superuser, not the login role';
    END IF;
    PERFORM set_config('role', role, true);
    PERFORM set_config('request.jwt.claims', claims, true);
END
$$;
GRANT EXECUTE ON FUNCTION pyfuncs.set_identity(text, text) TO PUBLIC;

-- Locked by every capturing commit (see realtime_commit_position), never written. Only its
-- owner can lock it, unlike an advisory lock, which any session could take and hold.
CREATE TABLE pyfuncs.realtime_sequencer ();

-- The key the gateways encrypt positions with, so that a subscriber cannot count the
-- changes it was not shown (README "Realtime: the gateway"). Random per database.
ALTER TABLE pyfuncs.realtime_state ADD COLUMN position_key bytea NOT NULL
    DEFAULT sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));

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
CREATE OR REPLACE FUNCTION pyfuncs.realtime_capture() RETURNS trigger
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

-- The commit step, once per capturing transaction as it commits.
CREATE OR REPLACE FUNCTION pyfuncs.realtime_commit_position() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    assigned bigint;
BEGIN
    LOCK TABLE pyfuncs.realtime_sequencer IN EXCLUSIVE MODE;
    assigned := nextval('pyfuncs.realtime_position');
    UPDATE pyfuncs.realtime_commit SET position = assigned, committed_at = clock_timestamp()
    WHERE txid = NEW.txid;
    -- a wake-up only: the payload is a position, far below NOTIFY's 8000-byte limit
    PERFORM pg_notify('pyfuncs_realtime', assigned::text);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION pyfuncs.enable_realtime(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel record;
BEGIN
    SELECT n.nspname, c.relname, c.relkind, c.relpersistence INTO rel
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = target;
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

ALTER FUNCTION pyfuncs.disable_realtime(regclass) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pyfuncs.prune_realtime(interval) SET search_path = pg_catalog, pg_temp;
