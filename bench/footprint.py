"""What a cold call touches: the lines of memory one call of each function misses in a
second-level cache of 2 MB (first-level 32 KB each), counted by Valgrind's cache simulator
(callgrind) in a single-user backend on a copy of the benchmarks' database, each call after
a statement that sweeps 3 MB through the caches. With 16 clients a core a call's cost is
mostly that memory, cold at each backend's turn (README, Benchmarks); this counts it the
same from run to run within 1%, where round trips move by points.

    make footprint                      # (needs `make bench` run once, and Valgrind)
    .venv/bin/python -m bench.footprint bench.bare_add_one bench.add_one

The cluster is stopped for the copy and started again. The watchdog's timer is set to
1000 s in the copy, so that no look lands in a measured call (under Valgrind a call takes
50 times its CPU time, and looks would come with nearly every one)."""

from __future__ import annotations

import getpass
import glob
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.run import DB, FUNCTIONS
from pyfuncs.embedded import Cluster, _pg_bin

WARM, COLD = 20, 15
SWEEP = "SELECT length(repeat('x', 3000000)), count(*) FROM generate_series(1, 30000);"
EVENTS = ("Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")
SLOW_WATCHDOG = (
    "UPDATE pyfuncs.runtime_module SET source = replace(source, 'TICK = 0.02', "
    "'TICK = 1000.0'), code = NULL WHERE name = 'watchdog';"
)


def _single_user(data: Path, owner: str, stdin: str, *valgrind: str) -> None:
    """PostgreSQL's single-user backend on `data`, as its owner, reading `stdin`."""
    command = [*valgrind, str(_pg_bin() / "postgres"), "--single", "-D", str(data),
               "-c", "shared_preload_libraries=pyfuncs_preload", DB]  # fmt: skip
    if owner != getpass.getuser():  # (root, for a cluster run as postgres)
        command = ["su", owner, "-c", shlex.join(command)]
    subprocess.run(command, input=stdin, text=True, check=True, capture_output=True)


def cold_calls(data: Path, owner: str, function: str, out: Path) -> list[list[int]]:
    """The events of each cold call of `function`, one list per call (EVENTS' order)."""
    calls = [f"SELECT {function}({i});" for i in range(1, WARM + 1)]
    for i in range(1, COLD + 1):
        calls += [SWEEP, f"SELECT {function}({i});"]
    for old in glob.glob(str(out / "cg.out*")):
        os.unlink(old)
    _single_user(
        data, owner, "\n".join(calls) + "\n", "valgrind", "--tool=callgrind",
        f"--callgrind-out-file={out}/cg.out", "--cache-sim=yes", "--I1=32768,8,64",
        "--D1=32768,8,64", "--LL=2097152,16,64", "--collect-atstart=no",
        "--toggle-collect=PLy_exec_function", "--dump-after=PLy_exec_function",
    )  # fmt: skip
    dumps = sorted(glob.glob(str(out / "cg.out.*")), key=lambda p: int(p.rsplit(".", 1)[1]))
    found = []
    for dump in dumps[-COLD:]:
        for line in Path(dump).read_text().splitlines():
            if line.startswith("summary:"):
                values = [int(v) for v in line.split()[1:]]
                found.append(values + [0] * (len(EVENTS) - len(values)))
                break
    return found


def main(functions: list[str]) -> None:
    if shutil.which("valgrind") is None:
        sys.exit("bench.footprint: Valgrind is not installed (apt-get install valgrind)")
    cluster = Cluster.default()
    source = cluster.data
    owner = source.owner()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        work.chmod(0o755)
        data, out = work / "data", work / "out"
        cluster.down()
        try:
            shutil.copytree(source, data, symlinks=True)
        finally:
            cluster.up()
        (data / "postmaster.pid").unlink(missing_ok=True)
        out.mkdir()
        out.chmod(0o777)
        if owner != getpass.getuser():
            subprocess.run(["chown", "-R", f"{owner}:{owner}", str(data)], check=True)
        _single_user(data, owner, SLOW_WATCHDOG + "\n")
        print(f"{'function':30} {'lines':>7} {'code':>6} {'data':>6} {'instructions':>13}")
        for function in functions:
            calls = cold_calls(data, owner, function, out)
            median = [statistics.median(c[i] for c in calls) for i in range(len(EVENTS))]
            code, data_lines = median[6], median[7] + median[8]
            print(f"{function:30} {code + data_lines:7.0f} {code:6.0f} {data_lines:6.0f} "
                  f"{median[0]:13.0f}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:] or [FUNCTIONS[name] for name in FUNCTIONS])
