-- 0005 up: the runtime as modules (pyfuncs/_pg/*.py, one row each in pyfuncs.runtime_module),
-- loaded by pyfuncs/_pg/boot.py. Bodies of every interface version find it in GD.
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
