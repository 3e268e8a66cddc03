"""`make bench`, capture: what realtime costs a writer, and how fast a consumer catches up.

Everything runs against a cluster of its own, initdb'd in a temporary directory with
production durability (fsync=on, synchronous_commit=on, full_page_writes=on,
wal_level=logical), not the embedded one (whose fsync is off, which hides the cost of
serialised commits).

(1) Write throughput: pgbench, single-row UPDATEs by primary key on a 10,000-row table, 16 and
    64 clients, each run BENCH_CAPTURE_SECONDS long; the same statements against a table that
    realtime captures, in 'wal' mode with the consumer (`pyfuncs realtime capture --follow`)
    running on the same machine, and in 'trigger' mode (with the consumer too: it gives the
    positions), as ratios to a table that is not
    captured, measured alternately in the same run. Target: wal >= 0.9. And where the CPU
    goes: the machine's busy time per commit while the writers run alone, and the CPU time
    per change of the consumer's Python, its walsender and its backend while it captures.
(2) Commit to change log: pgbench offers BENCH_CAPTURE_RATE (5,000) single-row commits/s from
    4 connections while the streaming consumer runs; p50 and p99 of the time from each
    commit to the commit of the consumer's write that logged it (track_commit_timestamp).
(3) Catch-up: BENCH_CATCHUP_CHANGES changes (default 1,000,000, in transactions of 1,000
    single-row UPDATEs... made by INSERT ... SELECT) left in the slot, then the time a fresh
    consumer (the streaming one `pyfuncs serve` runs) takes to write them all to the log, from
    its start, and the time a fresh reader (what a gateway
    starting from position 0 does) takes to read them all from the log.

Results are printed and written to bench/results/capture.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from pyfuncs import capture, migrate, realtime
from pyfuncs.embedded import OUTPUT_PLUGINS, SUPERUSER, _free_port, _pg_bin
from pyfuncs.realtime import Position

from .pgbench import pgbench

SECONDS = float(os.environ.get("BENCH_CAPTURE_SECONDS", "10"))
CLIENTS = [int(c) for c in os.environ.get("BENCH_CAPTURE_CLIENTS", "16,64").split(",")]
CATCHUP = int(os.environ.get("BENCH_CATCHUP_CHANGES", "1000000"))
RATE = int(os.environ.get("BENCH_CAPTURE_RATE", "5000"))  # commits/s offered in (2)
RUNS = int(os.environ.get("BENCH_CAPTURE_RUNS", "2"))
ROWS = 10_000
RESULTS = Path(__file__).parent / "results"
SETTINGS = {
    "fsync": "on", "synchronous_commit": "on", "full_page_writes": "on",
    "wal_level": "logical", "max_replication_slots": "10", "max_wal_senders": "10",
    "max_connections": "200", "shared_buffers": "256MB", "max_wal_size": "4GB",
    "checkpoint_timeout": "15min", "output_plugin_libraries": ",".join(OUTPUT_PLUGINS),
    # (when the consumer's writes committed: the latency of (2))
    "track_commit_timestamp": "on",
}  # fmt: skip
SCHEMA = """
CREATE SCHEMA b;
CREATE TABLE b.plain (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, note text);
CREATE TABLE b.captured (LIKE b.plain INCLUDING ALL);
INSERT INTO b.plain (id, note) SELECT i, 'row ' || i FROM generate_series(1, 10000) i;
INSERT INTO b.captured SELECT * FROM b.plain;
"""


def _as_postgres(*cmd: str) -> list[str]:
    return ["runuser", "-u", SUPERUSER, "--", *cmd] if os.geteuid() == 0 else list(cmd)


class Production:
    """A throwaway cluster with production durability."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="pyfuncs-bench-", dir="/var/tmp"))
        self.data = self.home / "data"
        self.port = _free_port()
        if os.geteuid() == 0:
            shutil.chown(self.home, SUPERUSER, SUPERUSER)

    def __enter__(self) -> Production:
        run = subprocess.run
        run(_as_postgres(str(_pg_bin() / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                         "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8"),
            check=True, capture_output=True)  # fmt: skip
        options = " ".join([f"-p {self.port}", "-c listen_addresses=127.0.0.1",
                            f"-k {self.home}"] + [f"-c {k}={v}" for k, v in SETTINGS.items()])  # fmt: skip
        run(_as_postgres(str(_pg_bin() / "pg_ctl"), "start", "-w", "-D", str(self.data),
                         "-l", str(self.home / "postgres.log"), "-o", options),
            check=True, capture_output=True)  # fmt: skip
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(_as_postgres(str(_pg_bin() / "pg_ctl"), "stop", "-m", "immediate",
                                    "-D", str(self.data)), capture_output=True)  # fmt: skip
        shutil.rmtree(self.home, ignore_errors=True)

    def url(self, db: str = "bench") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{db}"


def updates(url: str, table: str, clients: int, rate: int | None = None) -> float:
    """Committed transactions per second of single-row UPDATEs on `table` (at most `rate`
    a second in all, if given)."""
    script = f"\\set id random(1, {ROWS})\nUPDATE {table} SET n = n + 1 WHERE id = :id;\n"
    return pgbench(url, script, clients, SECONDS, rate=rate)["tps"]


def consumer(url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYFUNCS_DSN": url}
    return subprocess.Popen(
        [sys.executable, "-m", "pyfuncs.cli", "realtime", "capture", "--follow"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_seconds() -> float:
    """CPU time the whole machine spent busy so far (every core: user, nice, system, irq)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:3]) + sum(fields[5:8])) / _TICK


def capture_processes(
    conn: psycopg.Connection[Any], proc: subprocess.Popen[bytes]
) -> dict[str, int]:
    """The consumer's three processes: its Python, its walsender, its backend."""
    found = {"consumer's Python": proc.pid}
    for pid, name in conn.execute(
        "SELECT pid, application_name FROM pg_stat_activity"
        " WHERE application_name IN ('pyfuncs-capture', 'pyfuncs-capture-stream')"
    ):
        found["walsender" if name.endswith("stream") else "consumer's backend"] = pid
    return found


def logged_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM pyfuncs.realtime_change").fetchone()
    return int(row[0]) if row else 0


def positioned(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(position) FROM pyfuncs.realtime_commit").fetchone()
    return int(row[0]) if row else 0


def flushed_and_captured(conn: psycopg.Connection[Any]) -> int:
    capture.capture(conn)
    return logged_count(conn)


def bench_writes(url: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for clients in CLIENTS:
            tps: dict[str, list[float]] = {"plain": [], "wal": [], "wal_writers_only": [],
                                           "trigger": []}  # fmt: skip
            # CPU time per commit: the machine's while the writers alone run; the consumer's
            # processes' per change while it captures
            cost: dict[str, list[float]] = {}
            for _ in range(RUNS):  # alternate, so drift (checkpoints, caches) hits all alike
                conn.execute("CHECKPOINT")
                busy = machine_seconds()
                tps["plain"].append(updates(url, "b.plain", clients))
                cost.setdefault("machine, writers alone", []).append(
                    (machine_seconds() - busy) / (tps["plain"][-1] * SECONDS)
                )
                capture.set_mode(conn, "wal")
                flushed_and_captured(conn)
                conn.execute("CHECKPOINT")
                # the writers alone (the consumer catches up afterwards)
                tps["wal_writers_only"].append(updates(url, "b.captured", clients))
                flushed_and_captured(conn)
                conn.execute("CHECKPOINT")
                proc = consumer(url)
                try:
                    before = flushed_and_captured(conn)
                    time.sleep(2)  # (it connects and starts its stream)
                    parts = capture_processes(conn, proc)
                    spent = {part: cpu_seconds(pid) for part, pid in parts.items()}
                    tps["wal"].append(updates(url, "b.captured", clients))
                    for part, pid in parts.items():
                        cost.setdefault(part, []).append(
                            (cpu_seconds(pid) - spent[part]) / (tps["wal"][-1] * SECONDS)
                        )
                finally:
                    proc.terminate()
                    proc.wait()
                    after = flushed_and_captured(conn)
                assert after > before, "the consumer captured nothing"
                capture.set_mode(conn, "trigger")
                conn.execute("CHECKPOINT")
                proc = consumer(url)  # (it gives the positions)
                try:
                    before = positioned(conn)
                    tps["trigger"].append(updates(url, "b.captured", clients))
                finally:
                    proc.terminate()
                    proc.wait()
                assert positioned(conn) > before, "the consumer gave no positions"
                capture.capture(conn)
                realtime.prune(conn, keep=None)
            mean = {k: sum(v) / len(v) for k, v in tps.items()}
            results[f"{clients}_writers"] = {
                **{f"{k}_tps": round(v) for k, v in mean.items()},
                **{f"{k}_ratio": round(v / mean["plain"], 3) for k, v in mean.items()
                   if k != "plain"},
                "runs": {k: [round(x) for x in v] for k, v in tps.items()},
                "cpu_us_per_commit": {k: round(sum(v) / len(v) * 1e6, 1) for k, v in cost.items()},
            }  # fmt: skip
            print(f"{clients} writers: {results[f'{clients}_writers']}", flush=True)
    return results


def bench_latency(url: str) -> dict[str, Any]:
    """Commit to change log: pgbench offers RATE single-row commits/s from 4 connections
    while the consumer streams; each commit's latency is from its commit (committed_at) to
    the commit of the consumer's write that logged it (its commit timestamp)."""
    with psycopg.connect(url, autocommit=True) as conn:
        capture.set_mode(conn, "wal")
        capture.capture(conn)
        proc = consumer(url)
        try:
            time.sleep(3)  # it connects, leads and starts its stream
            assert proc.poll() is None, "the consumer stopped"
            start = conn.execute("SELECT now()").fetchone()
            committed = updates(url, "b.captured", 4, RATE)
            time.sleep(2)
        finally:
            proc.terminate()
            proc.wait()
        row = conn.execute(
            "SELECT count(*), percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY"
            " extract(epoch FROM pg_xact_commit_timestamp(xmin) - committed_at) * 1000)"
            " FROM pyfuncs.realtime_commit WHERE committed_at >= %s",
            start,
        ).fetchone()
    assert row is not None and row[0], "nothing was captured"
    result = {"offered_commits_per_s": RATE, "commits_per_s": round(committed),
              "p50_ms": round(row[1][0], 1), "p99_ms": round(row[1][1], 1)}  # fmt: skip
    print(f"commit to change log: {result}", flush=True)
    return result


def bench_catch_up(url: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        capture.set_mode(conn, "wal")
        capture.capture(conn)
        conn.execute("TRUNCATE pyfuncs.realtime_change, pyfuncs.realtime_commit")
        head = Position()
        per_txn = 1000
        start = time.monotonic()
        for i in range(CATCHUP // per_txn):
            base = (i * per_txn) % ROWS
            conn.execute(
                "UPDATE b.captured SET n = n + 1 WHERE id > %s AND id <= %s",
                [base, base + per_txn],
            )
        made = time.monotonic() - start
        held = capture.status(conn).retained_bytes
        # the consumer `pyfuncs serve` runs (streaming the slot), from its start
        start = time.monotonic()
        proc = consumer(url)
        try:
            while (captured := logged_count(conn)) < CATCHUP:
                assert proc.poll() is None, "the consumer stopped"
                time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait()
        consumed = time.monotonic() - start
    assert captured == CATCHUP, (captured, CATCHUP)

    async def read_all() -> int:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as aconn:
            n, position = 0, head
            while batch := await realtime.read(aconn, position, limit=5000):
                n += len(batch)
                position = batch[-1].position
            return n

    start = time.monotonic()
    read = asyncio.run(read_all())
    reading = time.monotonic() - start
    assert read == CATCHUP
    result = {
        "changes": CATCHUP, "transactions": CATCHUP // per_txn, "writing_s": round(made, 1),
        "slot_wal_bytes": held, "consumer_s": round(consumed, 1),
        "consumer_changes_per_s": round(CATCHUP / consumed),
        "reader_s": round(reading, 1), "reader_changes_per_s": round(CATCHUP / reading),
    }  # fmt: skip
    print(f"catch-up: {result}", flush=True)
    return result


def main() -> int:
    with Production() as cluster:
        url = cluster.url()
        migrate.install(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SCHEMA)
            capture.set_mode(conn, "wal")
            realtime.enable(conn, "b.captured")
            conn.execute("VACUUM ANALYZE")
        writes = bench_writes(url)
        latency = bench_latency(url)
        catch_up = bench_catch_up(url)
    results = {"settings": SETTINGS, "seconds_per_run": SECONDS, "writes": writes,
               "latency": latency, "catch_up": catch_up}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "capture.json").write_text(json.dumps(results, indent=2) + "\n")
    ok = all(w["wal_ratio"] >= 0.9 for w in writes.values())
    ratios = ", ".join(f"{k} {w['wal_ratio']}" for k, w in writes.items())
    print(f"write throughput, wal / not captured: {ratios} (target >= 0.9): "
          f"{'ok' if ok else 'MISSED'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
