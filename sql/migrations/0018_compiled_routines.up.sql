-- 0018 up: routine modules compiled ahead of their first call. `pyfuncs deploy` (and
-- `pyfuncs install`, for the live versions) compiles each routine module with the guards
-- of the runtime it ships and stores the code here; a backend whose runtime and Python are
-- the same loads it instead of parsing and compiling the module on its first call. boot()
-- hands the runtime its modules' sha256 too: the runtime a code was compiled for is part of
-- its key.
CREATE TABLE pyfuncs.routine_code (
    -- sha256 of vocabulary.compiled_key: Python's magic number, the runtime's modules and
    -- their sha256, the module's file name and its source
    key text PRIMARY KEY,
    runtime text NOT NULL,
    code bytea NOT NULL,
    compiled_at timestamptz NOT NULL DEFAULT now()
);
-- Read by every routine's first call in a backend, as its caller; written by the deployer.
GRANT SELECT (key, code) ON pyfuncs.routine_code TO PUBLIC;

CREATE OR REPLACE FUNCTION pyfuncs.boot() RETURNS void
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
