"""`make demo`: the academy on an embedded PostgreSQL, pyfuncs routines against the seed's way.

Starts (or reuses) the private cluster under .pgdata/, builds the academy in a fresh database
(50,000 students, 1,000,000 progress rows), deploys the routines, and calls each one from SQL
and from Python. Next to every result it prints the same answer computed the way the seed
application did (fetch raw rows with psycopg, aggregate in Python), with time and bytes on the
wire for both, measured through a counting loopback relay.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import jwt
import psycopg

from pyfuncs import errors
from pyfuncs.auth import JwtVerifier
from pyfuncs.client import Client
from pyfuncs.embedded import Cluster

from . import appside, database, routines
from .wiretap import WireTap

DB = "academy_demo"
SECRET = "demo-secret-please-change-me-0123456789"
STUDENTS = 50_000


def token(sub: Any, role: str, ttl: int = 600) -> str:
    return jwt.encode({"sub": str(sub), "role": role, "exp": int(time.time()) + ttl}, SECRET)


def step(text: str) -> None:
    print(f"\n\033[1m{text}\033[0m")


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


def measure(tap: WireTap, fn: Callable[[], Any], runs: int = 3) -> tuple[Any, float, int]:
    """Median wall time (ms) and bytes on the wire of one warm call."""
    fn()  # warm: connections, plans, the runtime in the backend
    times, sizes, result = [], [], None
    for _ in range(runs):
        tap.reset()
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
        sizes.append(tap.total)
    return result, statistics.median(times), int(statistics.median(sizes))


def compare(
    taps: tuple[WireTap, WireTap], name: str, ours: Callable[[], Any], seed: Callable[[], Any]
) -> None:
    """Run both ways, each on its own counted connection, and print them side by side."""
    mine, t1, b1 = measure(taps[0], ours)
    theirs, t2, b2 = measure(taps[1], seed)
    same = "same answer" if mine == theirs else "DIFFERENT ANSWERS"
    print(f"   {'':<24}{'time':>10}{'bytes on the wire':>20}")
    print(f"   {'pyfuncs routine':<24}{t1:>8.1f} ms{human_bytes(b1):>20}")
    print(f"   {'fetch + aggregate in app':<24}{t2:>8.1f} ms{human_bytes(b2):>20}")
    print(f"   -> {same}; {t2 / t1:,.0f}x faster, {b2 / max(b1, 1):,.0f}x fewer bytes")
    if mine != theirs:
        raise SystemExit(f"{name}: the two computations disagree:\n{mine}\n{theirs}")


def main() -> int:
    started = time.perf_counter()
    step("1. Embedded PostgreSQL")
    cluster = Cluster.default()
    print(f"   {cluster.up()}  (data in {cluster.root})")
    admin_url = database.fresh_database(cluster, DB)
    print(f"   pyfuncs core schema installed in database {DB!r}")

    step(f"2. The academy: schema with RLS, {STUDENTS:,} students, seeded inside the database")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        timings = database.build(admin, students=STUDENTS)
        counts = admin.execute(
            "SELECT (SELECT count(*) FROM users WHERE role = 'student'),"
            " (SELECT count(*) FROM student_progress), (SELECT count(*) FROM tripwire_users)"
        ).fetchone()
        assert counts is not None
        print(f"   {counts[0]:,} students, {counts[1]:,} progress rows, {counts[2]:,} sales "
              f"seeded in {timings['seed']:.1f} s")  # fmt: skip
        print(f"   routines deployed in {timings['deploy'] * 1000:.0f} ms:")
        for r in admin.execute(
            "SELECT schema_name || '.' || name, kind, live_version FROM pyfuncs.routine ORDER BY 1"
        ):
            print(f"     {r[0]:<26} {r[1]:<10} v{r[2]}")
        manager_id = database.person_id(admin, 1)
        student_id = database.person_id(admin, 21)

    tap = WireTap(cluster.url(DB).replace("postgres@", "authenticator@"))
    admin_tap = WireTap(admin_url)
    pf = Client(tap.url, jwt=JwtVerifier(secret=SECRET, roles=["student", "manager"]), max_size=2)
    taps = (tap, admin_tap)
    manager = pf.as_user(token(manager_id, "manager"))
    student = pf.as_user(token(student_id, "student"))
    with (
        psycopg.connect(admin_url, autocommit=True) as sql_conn,
        psycopg.connect(admin_tap.url) as raw,
    ):
        sql_conn.execute("SET ROLE manager")
        sql_conn.execute("SELECT set_config('request.jwt.claims', %s, false)",
                         [f'{{"sub": "{manager_id}"}}'])  # fmt: skip

        step("3. create_student: six writes in one procedure, all or nothing")
        row = sql_conn.execute(
            "CALL api.create_student('sql.student@academy.test', 'From SQL', ARRAY[1, 2], NULL, 49, NULL)"
        ).fetchone()
        print(
            "   SQL:    CALL api.create_student('sql.student@academy.test', ...)"
            f"  -> {row[0] if row else None}"
        )
        new_id = manager.call(routines.create_student, "py.student@academy.test", "From Python",
                              [1, 3], "+49 170 1234567", Decimal("99.00"))  # fmt: skip
        print(
            f"   Python: manager.call(create_student, 'py.student@academy.test', ...) -> {new_id}"
        )
        before = raw.execute("SELECT count(*) FROM auth.users").fetchone()
        try:
            manager.call(routines.create_student, "bad.phone@academy.test", "Bad Phone", [1],
                         "call me maybe", Decimal("49.00"))  # fmt: skip
        except errors.CheckViolation as exc:
            print(f"   a bad phone fails the 3rd write: [{exc.sqlstate}] {exc}")
        after = raw.execute("SELECT count(*) FROM auth.users").fetchone()
        print(
            f"   rows left behind by the failed call: {after[0] - before[0] if after and before else '?'}"
            "  (the seed's four separate API calls left an auth user and a users row)"
        )

        step("4. sales_leaderboard(top => 5), as a manager")
        board = sql_conn.execute("SELECT manager_name, students, active_students, revenue "
                                 "FROM api.sales_leaderboard(5)").fetchall()  # fmt: skip
        print("   SQL: SELECT * FROM api.sales_leaderboard(5)")
        for name, students, active, revenue in board:
            print(f"     {name:<12} {students:>6,} students {active:>6,} active {revenue:>12,.2f}")
        compare(taps, "sales_leaderboard",
                lambda: manager.call(routines.sales_leaderboard, top=5),
                lambda: appside.sales_leaderboard(raw, top=5))  # fmt: skip

        step(
            "5. dashboard_stats(): the whole academy for a manager, only their own rows for a student"
        )
        stats = manager.call(routines.dashboard_stats)
        print(f"   manager: {stats.completed_total:,} lessons completed, {stats.lessons_today:,} today, "
              f"{stats.watch_minutes_today:,} minutes watched today")  # fmt: skip
        print("   7 days: " + "  ".join(f"{d['day'][5:]}:{d['lessons']:,}" for d in stats.activity))
        mine = student.call(routines.dashboard_stats)
        print(f"   student #21 through the same routine (RLS): {mine.completed_total} lessons completed, "
              f"xp {mine.xp}, level {mine.level}")  # fmt: skip
        compare(taps, "dashboard_stats",
                lambda: manager.call(routines.dashboard_stats),
                lambda: appside.dashboard_stats(raw))  # fmt: skip

        step("6. tripwire_stats(): one manager's sales")
        sql_row = sql_conn.execute(
            "SELECT total_students, active_students, revenue FROM api.tripwire_stats()"
        ).fetchone()
        print(f"   SQL: SELECT * FROM api.tripwire_stats() -> {sql_row}")
        compare(taps, "tripwire_stats",
                lambda: manager.call(routines.tripwire_stats),
                lambda: appside.tripwire_stats(raw, manager_id))  # fmt: skip

        step("7. Caller rights")
        try:
            student.call(routines.sales_leaderboard)
        except errors.PermissionDenied as exc:
            print(
                f"   a student calling sales_leaderboard: PermissionDenied [{exc.sqlstate}] {exc}"
            )
        try:
            pf.as_user(
                jwt.encode(
                    {"sub": str(uuid.uuid4()), "role": "manager"},
                    "wrong-secret-0123456789012345678",
                )
            )
        except errors.AuthError as exc:
            print(f"   a token signed with another key: AuthError: {exc}")
        # the demo's login role is the superuser, a member of every role: only the
        # allow-list (student, manager) decides which roles a token may take
        for role in ("postgres", "none"):
            try:
                pf.as_user(token(uuid.uuid4(), role))
            except errors.AuthError as exc:
                print(f"   a token claiming role {role!r}: AuthError: {exc}")
    pf.close()
    print(
        f"\nDone in {time.perf_counter() - started:.1f} s. The cluster keeps running: "
        "`pyfuncs db url` prints its DSN, `pyfuncs db down` stops it."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
