-- Routines as pyfuncs deployed them before the runtime's interface had versions (commit
-- f945472): their bodies find the runtime in GD["pyfuncs.runtime"]. The runtime must keep
-- running them: a rollback makes such versions live again after pyfuncs was upgraded.
CREATE SCHEMA IF NOT EXISTS gold;
CREATE OR REPLACE FUNCTION "gold"."add"("a" bigint, "b" bigint DEFAULT 1)
RETURNS bigint
LANGUAGE plpython3u TRANSFORM FOR TYPE jsonb
VOLATILE
PARALLEL UNSAFE
SECURITY INVOKER
AS  E'# pyfuncs gold.add: generated from gold_routines.py:6; edit the Python source and deploy it.
try:
    _pf_fn = SD["fn"]
except KeyError:
    if "pyfuncs.runtime" not in GD:
        plpy.execute("SELECT pyfuncs.boot()")
    _pf_spec = {''routine'': ''gold.add'', ''function'': ''add'', ''module'': ''pyfuncs_user.gold_routines'', ''file'': ''gold_routines.py'', ''converters'': [], ''limits'': {''timeout_ms'': None, ''max_memory_mb'': None, ''max_db_ops'': None, ''max_result_rows'': None, ''max_result_bytes'': None}, ''allowed_modules'': [''__future__'', ''base64'', ''bisect'', ''calendar'', ''cmath'', ''collections'', ''collections.abc'', ''dataclasses'', ''datetime'', ''decimal'', ''enum'', ''fractions'', ''hashlib'', ''heapq'', ''hmac'', ''itertools'', ''json'', ''math'', ''numbers'', ''pyfuncs'', ''random'', ''secrets'', ''statistics'', ''struct'', ''typing'', ''unicodedata'', ''uuid'', ''zoneinfo'']}
    _pf_source = ''from collections.abc import Iterator\\n\\nfrom pyfuncs import db, stored_function\\n\\n\\n@stored_function(schema="gold")\\ndef add(a: int, b: int = 1) -> int:\\n    """Adds."""\\n    return a + b + int(db.fetchval("SELECT 0"))\\n\\n\\n\\n\\n\\n''
    SD["pf"] = GD["pyfuncs.runtime"].routine(_pf_spec, _pf_source)
    _pf_fn = SD["fn"] = SD["pf"].fn
if a is None:
    raise SD[''pf''].null(''a'')
if b is None:
    raise SD[''pf''].null(''b'')
try:
    return _pf_fn(a, b)
except BaseException as _pf_error:  # RoutineInterrupted is a BaseException on purpose
    raise SD["pf"].fail(_pf_error) from None
';
CREATE OR REPLACE FUNCTION "gold"."upto"("n" bigint)
RETURNS SETOF bigint
LANGUAGE plpython3u TRANSFORM FOR TYPE jsonb
VOLATILE
PARALLEL UNSAFE
SECURITY INVOKER
AS  E'# pyfuncs gold.upto: generated from gold_routines.py:12; edit the Python source and deploy it.
try:
    _pf_fn = SD["fn"]
except KeyError:
    if "pyfuncs.runtime" not in GD:
        plpy.execute("SELECT pyfuncs.boot()")
    _pf_spec = {''routine'': ''gold.upto'', ''function'': ''upto'', ''module'': ''pyfuncs_user.gold_routines'', ''file'': ''gold_routines.py'', ''converters'': [], ''limits'': {''timeout_ms'': None, ''max_memory_mb'': None, ''max_db_ops'': None, ''max_result_rows'': None, ''max_result_bytes'': None}, ''allowed_modules'': [''__future__'', ''base64'', ''bisect'', ''calendar'', ''cmath'', ''collections'', ''collections.abc'', ''dataclasses'', ''datetime'', ''decimal'', ''enum'', ''fractions'', ''hashlib'', ''heapq'', ''hmac'', ''itertools'', ''json'', ''math'', ''numbers'', ''pyfuncs'', ''random'', ''secrets'', ''statistics'', ''struct'', ''typing'', ''unicodedata'', ''uuid'', ''zoneinfo'']}
    _pf_source = ''from collections.abc import Iterator\\n\\nfrom pyfuncs import db, stored_function\\n\\n\\n\\n\\n\\n\\n\\n\\n@stored_function(schema="gold")\\ndef upto(n: int) -> Iterator[int]:\\n    yield from range(n)\\n''
    SD["pf"] = GD["pyfuncs.runtime"].routine(_pf_spec, _pf_source)
    _pf_fn = SD["fn"] = SD["pf"].fn
if n is None:
    raise SD[''pf''].null(''n'')
try:
    return SD[''pf''].rows(_pf_fn(n))
except BaseException as _pf_error:  # RoutineInterrupted is a BaseException on purpose
    raise SD["pf"].fail(_pf_error) from None
';
