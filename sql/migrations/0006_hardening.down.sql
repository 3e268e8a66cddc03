-- 0006 down: the functions as 0004 and 0005 made them; deploys lock pyfuncs.deployment again.
DROP TABLE pyfuncs.deploy_lock;
ALTER TABLE pyfuncs.runtime_module DROP COLUMN code, DROP COLUMN magic;

CREATE OR REPLACE FUNCTION pyfuncs.boot() RETURNS void
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if "pyfuncs.v1" not in GD:
    rows = plpy.execute("SELECT name, source FROM pyfuncs.runtime_module")
    sources = {row["name"]: row["source"] for row in rows}
    if "boot" not in sources:
        plpy.error("the pyfuncs runtime is not installed in this database",
                   hint="run `pyfuncs install`", sqlstate="PF002")
    loader = {"__name__": "pyfuncs_pg_loader"}
    exec(compile(sources["boot"], "pyfuncs/_pg/boot.py", "exec", dont_inherit=True), loader)
    loader["load"](sources, GD)
$$;

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

CREATE OR REPLACE FUNCTION pyfuncs.set_identity(role text, claims text) RETURNS void
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
