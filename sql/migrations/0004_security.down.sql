-- 0004 down: the functions as 0003 left them. The trigger functions keep EXECUTE revoked
-- from PUBLIC: a downgrade must not hand back a known privilege escalation.
DROP FUNCTION pyfuncs.set_identity(text, text);
ALTER TABLE pyfuncs.realtime_state DROP COLUMN position_key;
ALTER FUNCTION pyfuncs.forbid_change() RESET search_path;
ALTER FUNCTION pyfuncs.boot() RESET search_path;
ALTER FUNCTION pyfuncs.disable_realtime(regclass) RESET search_path;
ALTER FUNCTION pyfuncs.prune_realtime(interval) RESET search_path;

CREATE OR REPLACE FUNCTION pyfuncs.jwt_claims() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb
$$;

CREATE OR REPLACE FUNCTION pyfuncs.jwt_claim(claim text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT pyfuncs.jwt_claims() ->> claim
$$;

CREATE OR REPLACE FUNCTION pyfuncs.current_user_id() RETURNS uuid
LANGUAGE sql STABLE AS $$
    SELECT nullif(pyfuncs.jwt_claims() ->> 'sub', '')::uuid
$$;

CREATE OR REPLACE FUNCTION pyfuncs.realtime_capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pyfuncs AS $$
BEGIN
    INSERT INTO pyfuncs.realtime_commit (txid) VALUES (pg_current_xact_id())
    ON CONFLICT (txid) DO NOTHING;
    IF TG_LEVEL = 'STATEMENT' THEN  -- TRUNCATE
        INSERT INTO pyfuncs.realtime_change (txid, schema_name, table_name, op)
        VALUES (pg_current_xact_id(), TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP);
    ELSE
        INSERT INTO pyfuncs.realtime_change (txid, schema_name, table_name, op, new_row, old_row)
        VALUES (pg_current_xact_id(), TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP,
                CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END,
                CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION pyfuncs.realtime_commit_position() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pyfuncs AS $$
DECLARE
    assigned bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pyfuncs.realtime'));
    assigned := nextval('pyfuncs.realtime_position');
    UPDATE pyfuncs.realtime_commit SET position = assigned, committed_at = clock_timestamp()
    WHERE txid = NEW.txid;
    -- a wake-up only: the payload is a position, far below NOTIFY's 8000-byte limit
    PERFORM pg_notify('pyfuncs_realtime', assigned::text);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION pyfuncs.enable_realtime(target regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    rel record;
BEGIN
    SELECT n.nspname, c.relname, c.relkind INTO rel
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = target;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'pyfuncs: % is not a table, realtime captures tables only', target
            USING ERRCODE = '42809';
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

DROP FUNCTION pyfuncs.realtime_image(anyelement, oid);
DROP TABLE pyfuncs.realtime_sequencer;
