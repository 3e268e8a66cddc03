-- 0018 down: routine modules are compiled on their first call only.
DROP TABLE pyfuncs.routine_code;
CREATE OR REPLACE FUNCTION pyfuncs.boot() RETURNS void
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
