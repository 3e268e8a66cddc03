-- 0005 down: the runtime as one module (its row is written by the older pyfuncs' install).
CREATE OR REPLACE FUNCTION pyfuncs.boot() RETURNS void
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
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
