"""pgbench, as every benchmark here runs it: a script of its own, prepared statements."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

from pyfuncs.embedded import _pg_bin


def pgbench(
    url: str, script: str, clients: int, seconds: float, *, rate: float | None = None,
    options: str = "", cpus: set[int] | None = None,
) -> dict[str, float]:  # fmt: skip
    """Run `script` from `clients` connections for `seconds` (at most `rate` transactions a
    second in all, if given; `options`: the sessions' settings, as PGOPTIONS; `cpus`: the
    cores pgbench may run on). Returns the transactions processed and per second, and
    `steady`: the median of each second's rate after the first three (the connections'
    start and their first calls left out)."""
    file = Path(tempfile.mkstemp(suffix=".sql")[1])
    file.write_text(script)
    file.chmod(0o644)  # (read by pgbench, which may run as another user)
    try:
        out = subprocess.run(
            [str(_pg_bin() / "pgbench"), "-n", "-M", "prepared", "-c", str(clients),
             "-j", str(min(clients, 2)), "-T", str(int(seconds)), "-P", "1", "-f", str(file),
             url] + (["-R", str(rate)] if rate else []),
            check=True, capture_output=True, text=True,
            env={**os.environ, "PGOPTIONS": options} if options else None,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )  # fmt: skip
    finally:
        file.unlink()
    processed = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    tps = re.search(r"tps = ([\d.]+)", out.stdout)
    assert processed and tps, out.stdout
    each = [float(x) for x in re.findall(r"^progress: \S+ s, ([\d.]+) tps", out.stderr, re.M)]
    steady = statistics.median(each[3:]) if len(each) > 3 else float(tps.group(1))
    return {"processed": int(processed.group(1)), "tps": float(tps.group(1)), "steady": steady}
