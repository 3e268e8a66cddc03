-- 0006 up: what a second round of attacks found (README "Security model").

-- The locks that serialise pyfuncs' work are taken in SHARE UPDATE EXCLUSIVE mode, which
-- conflicts with itself but not with the ROW SHARE / ROW EXCLUSIVE locks that merely naming a
-- table in a prepared statement takes before any privilege check (PREPARE ... FOR UPDATE).
-- The statements that do take it (LOCK TABLE, VACUUM, ANALYZE, ALTER TABLE...) check their
-- privileges first. Deploys lock a table of their own, never written (as the sequencer).
CREATE TABLE pyfuncs.deploy_lock ();

-- The commit step. The wake-up carries no payload (any role may LISTEN, and positions are
-- not for everyone) and is skipped when the NOTIFY queue is half full: any role can fill it,
-- and a full queue would fail this commit. Consumers poll as well, so a skipped wake-up
-- delays delivery by at most their poll interval.
CREATE OR REPLACE FUNCTION pyfuncs.realtime_commit_position() RETURNS trigger
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

-- A verified token's role and claims for the rest of the transaction (what PostgREST sets).
-- The client and the gateway check the role against their allow-list first; this refuses,
-- whatever they were told, what no token may become: the login role itself (that is
-- `SET ROLE NONE` in disguise), a role that does not exist, and a role that is a superuser
-- or can make itself one or act as one (CREATEROLE, REPLICATION, BYPASSRLS, or a member of a
-- predefined role that reads or writes the server's files, runs programs or reads and writes
-- all data).
CREATE OR REPLACE FUNCTION pyfuncs.set_identity(role text, claims text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    SELECT rolsuper OR rolcreaterole OR rolreplication OR rolbypassrls
           OR EXISTS (SELECT FROM unnest(ARRAY['pg_execute_server_program',
                          'pg_read_server_files', 'pg_write_server_files',
                          'pg_read_all_data', 'pg_write_all_data']) AS p (name)
                      WHERE pg_has_role(a.oid, p.name, 'MEMBER')) AS powerful
    INTO r FROM pg_roles a WHERE a.rolname = role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pyfuncs: the token names role %, which does not exist', quote_literal(role)
            USING ERRCODE = '28000', HINT = 'create the role, or fix the token''s role claim';
    END IF;
    IF r.powerful OR role = session_user THEN
        RAISE EXCEPTION 'pyfuncs: a token may not act as %', quote_ident(role)
            USING ERRCODE = '28000',
                  HINT = 'tokens name application roles: not a superuser or a role with '
                         'superuser-like powers, not the login role';
    END IF;
    PERFORM set_config('role', role, true);
    PERFORM set_config('request.jwt.claims', claims, true);
END
$$;

-- pyfuncs' own tables and the system's are not application tables.
CREATE OR REPLACE FUNCTION pyfuncs.enable_realtime(target regclass) RETURNS void
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

-- A faster first call: the runtime's modules are stored compiled too (marshalled code
-- objects, by the Python that installed them), and a backend whose Python has the same
-- bytecode (MAGIC_NUMBER) runs them without compiling their source.
ALTER TABLE pyfuncs.runtime_module ADD COLUMN code bytea, ADD COLUMN magic bytea;

CREATE OR REPLACE FUNCTION pyfuncs.boot() RETURNS void
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if "pyfuncs.v1" not in GD:
    rows = plpy.execute("SELECT name, source, code, magic FROM pyfuncs.runtime_module")
    modules = {row["name"]: row for row in rows}
    if "boot" not in modules:
        plpy.error("the pyfuncs runtime is not installed in this database",
                   hint="run `pyfuncs install`", sqlstate="PF002")
    import marshal
    from importlib.util import MAGIC_NUMBER
    boot = modules["boot"]
    code = (marshal.loads(boot["code"]) if boot["magic"] == MAGIC_NUMBER
            else compile(boot["source"], "pyfuncs/_pg/boot.py", "exec", dont_inherit=True))
    loader = {"__name__": "pyfuncs_pg_loader"}
    exec(code, loader)
    loader["load"](modules, GD)
$$;
