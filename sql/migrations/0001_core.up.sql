-- 0001: the first core schema (a snapshot of sql/schema.sql at that time).

CREATE EXTENSION IF NOT EXISTS plpython3u WITH SCHEMA pg_catalog;
CREATE EXTENSION IF NOT EXISTS jsonb_plpython3u WITH SCHEMA pg_catalog;

CREATE SCHEMA pyfuncs;
-- Callers need the schema for the runtime loader and the JWT helpers; the catalog tables
-- themselves stay readable only by their owner (the deployer) unless granted.
GRANT USAGE ON SCHEMA pyfuncs TO PUBLIC;

-- The in-database runtime (pyfuncs/_pg/runtime.py), written by `pyfuncs install`.
CREATE TABLE pyfuncs.runtime_module (
    name text PRIMARY KEY,
    source text NOT NULL,
    sha256 text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
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
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'pyfuncs.%: deployed versions are immutable', TG_TABLE_NAME
        USING ERRCODE = 'PF001',
              HINT = 'deploy a new version instead, or roll back to an older one';
END
$$;

CREATE TRIGGER routine_version_immutable
    BEFORE UPDATE OR DELETE ON pyfuncs.routine_version
    FOR EACH ROW EXECUTE FUNCTION pyfuncs.forbid_change();

-- Loads the runtime into this backend's interpreter once (GD is per backend, shared by all
-- PL/Python routines). Routines call it only on their first call in a session.
CREATE FUNCTION pyfuncs.boot() RETURNS void
LANGUAGE plpython3u AS $$
if "pyfuncs.runtime" not in GD:
    import types
    rows = plpy.execute("SELECT source FROM pyfuncs.runtime_module WHERE name = 'runtime'")
    if not rows:
        plpy.error("the pyfuncs runtime is not installed in this database",
                   hint="run `pyfuncs install`", sqlstate="PF002")
    module = types.ModuleType("pyfuncs_runtime")
    exec(compile(rows[0]["source"], "pyfuncs/_pg/runtime.py", "exec"), module.__dict__)
    module.boot(GD)
    GD["pyfuncs.runtime"] = module
$$;
GRANT EXECUTE ON FUNCTION pyfuncs.boot() TO PUBLIC;

-- JWT claims as set for this transaction by the client (PostgREST's request.jwt.claims).
CREATE FUNCTION pyfuncs.jwt_claims() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb
$$;

CREATE FUNCTION pyfuncs.jwt_claim(claim text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT pyfuncs.jwt_claims() ->> claim
$$;

-- The caller's user id: the `sub` claim as a uuid (Supabase's auth.uid()), NULL without one.
CREATE FUNCTION pyfuncs.current_user_id() RETURNS uuid
LANGUAGE sql STABLE AS $$
    SELECT nullif(pyfuncs.jwt_claims() ->> 'sub', '')::uuid
$$;
