-- 0007 down: boot() as 0006 made it.
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
