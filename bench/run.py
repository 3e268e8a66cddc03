"""`make bench`: pyfuncs against its baselines, measured in the same run, reported as ratios.

(a) A trivial routine: pyfuncs vs a bare plpython3u function vs a SQL function, and a routine
    that runs one query per call vs bare plpython3u doing the same with a cached plan,
    - as round trips: pgbench, many concurrent clients, prepared statements, on the machine's
      cores and again with the server and pgbench on one core (steady state), where the
      kernel's placement of clients and backends does not move the result;
    - inside the database: one query calling the function for 1,000,000 rows (no network),
      as calls per second of the backend's CPU time.
(c) Stopping: the time from a limit (statement_timeout, timeout_ms) or a pg_cancel_backend
    to the error, for a routine spinning in pure Python that swallows exceptions.
(d) The first call in a new connection: PL/Python's start, and the pyfuncs runtime's.
(b) The academy at 1,000,000 progress rows: sales_leaderboard and dashboard_stats as pyfuncs
    routines vs the seed application's way (fetch raw rows with psycopg, aggregate in Python),
    time and bytes on the wire.

Results are printed and written to bench/results/latest.json. Targets, with every guard on:
(a) round trips of a trivial routine >= 0.90 of bare PL/Python, of a routine with one query
per call >= 0.75, on one core (the in-database rates are reported, not targets);
(b) >= 20x faster and >= 1000x fewer bytes; (c) a stop within 50 ms at the median and 100 ms
at the most; (d) a first call of at most 25 ms.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import psycopg
from psycopg import sql

from examples.academy import appside, database
from examples.academy import routines as academy
from examples.academy.wiretap import WireTap
from pyfuncs import deploy as deploying
from pyfuncs.auth import JwtVerifier
from pyfuncs.client import Client
from pyfuncs.embedded import Cluster

from . import routines as trivial
from .pgbench import pgbench

DB = "pyfuncs_bench"
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "16"))
# long enough for steady state: each pgbench connection's first call starts the runtime
# (~10 ms on top of PL/Python's own start, reported by (d); ~50 ms when a 6 s run weighed ~7%
# on the round-trip figures)
SECONDS = int(os.environ.get("BENCH_SECONDS", "15"))
ONE_CORE_SECONDS = 10  # (steady state: the first three seconds are left out)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
ROWS = 1_000_000
SECRET = "bench-secret-0123456789-0123456789-0123"
RESULTS = Path(__file__).parent / "results"

BASELINES = """
CREATE FUNCTION bench.bare_add_one(x bigint) RETURNS bigint
LANGUAGE plpython3u IMMUTABLE PARALLEL SAFE AS 'return x + 1';
CREATE FUNCTION bench.sql_add_one(x bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT x + 1';
CREATE FUNCTION bench.bare_query_one(x bigint) RETURNS bigint
LANGUAGE plpython3u STABLE AS $$
plan = SD.get("plan")
if plan is None:
    plan = SD["plan"] = plpy.prepare("SELECT $1::bigint + 1 AS v", ["bigint"])
return plpy.execute(plan, [x])[0]["v"]
$$;
"""
FUNCTIONS = {"pyfuncs": "bench.add_one", "bare plpython3u": "bench.bare_add_one",
             "sql": "bench.sql_add_one", "pyfuncs, a query per call": "bench.query_one",
             "pyfuncs, same with max_db_ops": "bench.query_one_counted",
             "bare, a query per call": "bench.bare_query_one"}  # fmt: skip


# the targets' pairs, measured on one core too
ONE_CORE = ("pyfuncs", "bare plpython3u", "pyfuncs, a query per call", "bare, a query per call")


def pgbench_tps(url: str, function: str, cpus: set[int] | None = None) -> dict[str, float]:
    script = f"\\set n random(1, 1000000)\nSELECT {function}(:n);\n"
    return pgbench(url, script, CLIENTS, ONE_CORE_SECONDS if cpus else SECONDS, cpus=cpus)


def one_core(cluster: Cluster, url: str) -> dict[str, Any]:
    """Round trips with the server and pgbench on one core (the postmaster's new backends
    inherit its affinity), in steady state: with two, the same function's rate jumps
    between levels within a run as the kernel places clients and backends on the cores
    (README, Benchmarks), which measures the placement more than the function."""
    postmaster = cluster.postmaster_pid()
    # (the machine's cores, as this process has them: a run killed in this part left the
    # postmaster on one, which its own affinity would keep for good)
    cores = os.sched_getaffinity(0)
    one = {min(cores)}
    steady: dict[str, list[float]] = {name: [] for name in ONE_CORE}
    os.sched_setaffinity(postmaster, one)
    try:
        for round_ in range(ROUNDS):
            for name in ONE_CORE if round_ % 2 == 0 else reversed(ONE_CORE):
                steady[name].append(pgbench_tps(url, FUNCTIONS[name], one)["steady"])
    finally:
        os.sched_setaffinity(postmaster, cores)
    tps = {name: statistics.median(v) for name, v in steady.items()}
    return {
        "round_trips_tps": tps,
        "ratio_vs_bare": {
            name: tps[name]
            / tps["bare, a query per call" if "query" in name else "bare plpython3u"]
            for name in ONE_CORE
        },
    }


def backend_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a backend process (the benchmark runs on the same machine).

    CPU time, unlike wall time, barely moves when other processes compete for the cores.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_database_rate(url: str, function: str, rows: int = ROWS, runs: int = 3) -> float:
    """Calls per CPU second of `function` inside one query (best of `runs`), in a backend of
    its own: what one routine loads (max_db_ops counting, say) must not slow the others."""
    query = sql.SQL("SELECT count({}(i)) FROM generate_series(1, %s) i").format(
        sql.SQL(function)  # a fixed name from FUNCTIONS
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query, [1000])  # warm: the runtime and the routine load once per backend
        best = float("inf")
        for _ in range(runs):
            before = backend_cpu_seconds(conn.info.backend_pid)
            conn.execute(query, [rows])
            best = min(best, backend_cpu_seconds(conn.info.backend_pid) - before)
    return rows / best


def bench_a(url: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
        conn.execute(BASELINES)
        deploying.deploy(conn, trivial)
    # interleave rounds, reversing the order each time, so that drift on a shared machine
    # (and being first or last) hits every target alike; report medians
    tps: dict[str, list[float]] = {name: [] for name in FUNCTIONS}
    inside: dict[str, list[float]] = {name: [] for name in FUNCTIONS}
    for round_ in range(ROUNDS):
        order = list(FUNCTIONS.items())
        for name, fn in order if round_ % 2 == 0 else reversed(order):
            tps[name].append(pgbench_tps(url, fn)["tps"])
            # a query per call is ~10x slower; 400,000 calls still give ~1.5 s of CPU time,
            # well above the clock's 10 ms resolution (100,000 gave ratios from 0.65 to 1.02)
            rows = 400_000 if "query" in fn else ROWS
            inside[name].append(in_database_rate(url, fn, rows))
    result = {
        "round_trips_tps": {n: statistics.median(v) for n, v in tps.items()},
        "in_database_calls_per_s": {n: statistics.median(v) for n, v in inside.items()},
    }
    for key in ("round_trips_tps", "in_database_calls_per_s"):
        plain = result[key]["bare plpython3u"]
        querying = result[key]["bare, a query per call"]
        result[key + "_ratio_vs_bare"] = {
            n: v / (querying if "query" in fn else plain)
            for (n, fn), v in zip(FUNCTIONS.items(), result[key].values(), strict=True)
        }
    return result


def _cancel_later(conn: psycopg.Connection[Any], pid: int, sent: list[float]) -> None:
    time.sleep(0.1)
    sent.append(time.monotonic())
    conn.execute("SELECT pg_cancel_backend(%s)", [pid])


def bench_c(url: str, runs: int = 5) -> dict[str, dict[str, float]]:
    def failing(conn: psycopg.Connection[Any], query: str) -> float:
        try:
            conn.execute(query)
        except psycopg.errors.QueryCanceled:
            return time.monotonic()
        raise AssertionError(f"{query} was not stopped")

    samples: dict[str, list[float]] = {"statement_timeout": [], "timeout_ms": [], "cancel": []}
    with (
        psycopg.connect(url, autocommit=True) as conn,
        psycopg.connect(url, autocommit=True) as other,
    ):
        for _ in range(runs):
            conn.execute("SET statement_timeout = '200ms'")
            start = time.monotonic()
            samples["statement_timeout"].append(failing(conn, "SELECT bench.spin()") - start - 0.2)
            conn.execute("SET statement_timeout = 0")
            start = time.monotonic()
            samples["timeout_ms"].append(failing(conn, "SELECT bench.spin_limited()") - start - 0.1)
            sent: list[float] = []
            thread = threading.Thread(
                target=_cancel_later, args=(other, conn.info.backend_pid, sent)
            )
            thread.start()
            stopped = failing(conn, "SELECT bench.spin()")
            thread.join()
            samples["cancel"].append(stopped - sent[0])
    return {
        name: {"median_ms": statistics.median(v) * 1000, "max_ms": max(v) * 1000}
        for name, v in samples.items()
    }


FIRST_CALL_MS = 25  # target: a trivial routine's first call in a new connection, median


def on_cpu_ms(pid: int) -> float:
    """Milliseconds a backend has run on a CPU (the scheduler's count, in nanoseconds: the
    10 ms ticks of backend_cpu_seconds are too coarse for one call)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e6


def bench_d(url: str, runs: int = 21) -> dict[str, float]:
    """Milliseconds of the first call in a new connection (median): the cost of a backend's
    start, PL/Python's own for bare, plus the pyfuncs runtime's for pyfuncs, and what pyfuncs
    adds; as the client waits for it, and as the backend's CPU time (which a busy machine
    stretches less). The two alternate, so that the machine's load weighs on both alike."""
    first: dict[str, list[float]] = {name: [] for name in ("bare plpython3u", "pyfuncs")}
    cpu: dict[str, list[float]] = {name: [] for name in first}
    for _ in range(runs):
        for name in first:
            with psycopg.connect(url, autocommit=True) as conn:
                ran = on_cpu_ms(conn.info.backend_pid)
                start = time.perf_counter()
                conn.execute(sql.SQL("SELECT {}(1)").format(sql.SQL(FUNCTIONS[name])))
                first[name].append((time.perf_counter() - start) * 1000)
                cpu[name].append(on_cpu_ms(conn.info.backend_pid) - ran)
    medians = {name: statistics.median(v) for name, v in first.items()}
    medians["pyfuncs minus bare"] = medians["pyfuncs"] - medians["bare plpython3u"]
    for name, values in cpu.items():
        medians[f"{name}, backend CPU"] = statistics.median(values)
    medians["pyfuncs minus bare, backend CPU"] = (
        medians["pyfuncs, backend CPU"] - medians["bare plpython3u, backend CPU"]
    )
    return medians


def preloaded(url: str) -> str:
    """The server's shared_preload_libraries: with pyfuncs_preload, PL/Python's interpreter
    starts in the postmaster, not in each backend's first call (README "The first call")."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SHOW shared_preload_libraries").fetchone()
    return row[0] if row else ""


def measure(tap: WireTap, fn: Callable[[], Any], runs: int) -> tuple[Any, float, int]:
    fn()
    times, sizes, value = [], [], None
    for _ in range(runs):
        tap.reset()
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
        sizes.append(tap.total)
    return value, statistics.median(times), int(statistics.median(sizes))


def bench_b(cluster: Cluster, url: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        database.build(conn, students=50_000)
        manager_id = database.person_id(conn, 1)
    ours_tap = WireTap(url.replace("postgres@", "authenticator@", 1))
    app_tap = WireTap(url)
    token = jwt.encode(
        {"sub": str(manager_id), "role": "manager", "exp": time.time() + 3600}, SECRET
    )
    results: dict[str, Any] = {}
    with (
        Client(ours_tap.url, jwt=JwtVerifier(secret=SECRET, roles=["manager"]), max_size=1) as pf,
        psycopg.connect(app_tap.url) as raw,
    ):
        manager = pf.as_user(token)
        cases: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
            "sales_leaderboard": (lambda: manager.call(academy.sales_leaderboard, top=10),
                                  lambda: appside.sales_leaderboard(raw, top=10)),
            "dashboard_stats": (lambda: manager.call(academy.dashboard_stats),
                                lambda: appside.dashboard_stats(raw)),
        }  # fmt: skip
        for name, (ours, seed) in cases.items():
            mine, t1, b1 = measure(ours_tap, ours, runs=7)
            theirs, t2, b2 = measure(app_tap, seed, runs=3)
            if mine != theirs:
                raise SystemExit(f"{name}: pyfuncs and the app-side computation disagree")
            results[name] = {
                "pyfuncs_ms": t1 * 1000, "app_side_ms": t2 * 1000,
                "pyfuncs_bytes": b1, "app_side_bytes": b2,
                "speedup": t2 / t1, "bytes_ratio": b2 / b1,
            }  # fmt: skip
    return results


def main() -> int:
    cluster = Cluster.default()
    cluster.up()
    url = database.fresh_database(cluster, DB)
    print(f"benchmark on {os.cpu_count()} cores, {CLIENTS} pgbench clients x {SECONDS} s, loopback")

    a = bench_a(url)
    print(
        "\n(a) routine                    round trips (tps)   ratio | in database (calls/s)  ratio"
    )
    for name in FUNCTIONS:
        print(f"    {name:<26}{a['round_trips_tps'][name]:>12,.0f}"
              f"{a['round_trips_tps_ratio_vs_bare'][name]:>10.2f} |"
              f"{a['in_database_calls_per_s'][name]:>16,.0f}"
              f"{a['in_database_calls_per_s_ratio_vs_bare'][name]:>10.2f}")  # fmt: skip

    one = one_core(cluster, url)
    print(f"\n(a) on one core, {CLIENTS} clients, steady state   round trips (tps)   ratio")
    for name in ONE_CORE:
        print(f"    {name:<44}{one['round_trips_tps'][name]:>12,.0f}"
              f"{one['ratio_vs_bare'][name]:>8.2f}")  # fmt: skip

    c = bench_c(url)
    print("\n(c) stop latency (limit or cancel to error)   median      max")
    for name, r in c.items():
        print(f"    {name:<40}{r['median_ms']:>7.1f} ms{r['max_ms']:>7.1f} ms")

    d = bench_d(url)
    preload = preloaded(url)
    print("\n(d) first call in a new connection (backend start), median; "
          f"shared_preload_libraries = '{preload}'")  # fmt: skip
    for name, ms in d.items():
        print(f"    {name:<40}{ms:>7.1f} ms")
    print(f"    target: first call at most {FIRST_CALL_MS} ms")

    b = bench_b(cluster, url)
    print("\n(b) 1,000,000 progress rows    pyfuncs        app-side     speedup   "
          "bytes      app bytes   ratio")  # fmt: skip
    for name, r in b.items():
        print(f"    {name:<26}{r['pyfuncs_ms']:>8.1f} ms{r['app_side_ms']:>11.1f} ms"
              f"{r['speedup']:>9.1f}x{r['pyfuncs_bytes']:>8,} B{r['app_side_bytes']:>13,} B"
              f"{r['bytes_ratio']:>9,.0f}x")  # fmt: skip

    RESULTS.mkdir(exist_ok=True)
    results = {"a": a, "a_one_core": one, "b": b, "c": c, "d": d, "d_preload": preload}
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
    failures = []
    # the targets are the round trips' (issue 12), on one core, where a run measures the
    # functions rather than where the kernel placed the clients; the in-database rates
    # isolate what a call and a query cost and are reported, not held to them
    round_trips = one["ratio_vs_bare"]
    if round_trips["pyfuncs"] < 0.90:
        failures.append("(a) round trips on one core below 0.90 of bare PL/Python")
    if round_trips["pyfuncs, a query per call"] < 0.75:
        failures.append("(a) a query per call: round trips on one core below 0.75 of bare")
    for name, r in c.items():
        if r["max_ms"] > 100 or r["median_ms"] > 50:
            failures.append(f"(c) {name} took more than 50 ms (median) or 100 ms to stop")
    if d["pyfuncs"] > FIRST_CALL_MS:
        failures.append(f"(d) first call above {FIRST_CALL_MS} ms")
    for name, r in b.items():
        if r["speedup"] < 20 or r["bytes_ratio"] < 1000:
            failures.append(f"(b) {name} below 20x faster / 1000x fewer bytes")
    print("\ntargets: " + ("all met" if not failures else "; ".join(failures)))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
