"""The seed application's way: fetch raw rows with psycopg, aggregate in Python.

These mirror the routines in routines.py exactly, so the demo and the benchmark can check
that both give the same answer before comparing time and bytes.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from .routines import DashboardStats, LeaderRow, TripwireStats


def _rows(
    conn: psycopg.Connection[Any], query: str, params: list[Any] | None = None
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def sales_leaderboard(conn: psycopg.Connection[Any], top: int = 10) -> list[LeaderRow]:
    sales = _rows(conn, "SELECT * FROM tripwire_users")  # .from('tripwire_users').select('*')
    names = {
        u["id"]: u["full_name"] for u in _rows(conn, "SELECT * FROM users WHERE role = 'manager'")
    }
    acc: dict[Any, list[Any]] = defaultdict(lambda: [0, 0, Decimal(0)])
    for s in sales:
        a = acc[s["granted_by"]]
        a[0] += 1
        if s["status"] == "active":
            a[1] += 1
            a[2] += s["payment_amount"]
    board = [LeaderRow(m, names[m], a[0], a[1], a[2]) for m, a in acc.items()]
    return sorted(board, key=lambda r: (-r.revenue, r.manager_name))[:top]


def dashboard_stats(conn: psycopg.Connection[Any]) -> DashboardStats:
    today = _rows(conn, "SELECT current_date AS d")[0]["d"]
    week_start = today - datetime.timedelta(days=6)
    progress = _rows(conn, "SELECT * FROM student_progress")
    profiles = _rows(conn, "SELECT * FROM profiles")
    lessons: dict[datetime.date, int] = defaultdict(int)
    seconds: dict[datetime.date, int] = defaultdict(int)
    completed = 0
    for p in progress:
        completed += p["is_completed"]
        day = p["updated_at"].date()
        if day >= week_start:
            lessons[day] += p["is_completed"]
            seconds[day] += p["watch_time_seconds"]
    activity = [
        {"day": d.isoformat(), "lessons": lessons[d], "minutes": seconds[d] // 60}
        for d in (week_start + datetime.timedelta(days=i) for i in range(7))
    ]
    return DashboardStats(
        lessons_today=activity[-1]["lessons"],
        watch_minutes_today=activity[-1]["minutes"],
        completed_total=completed,
        xp=sum(p["xp"] for p in profiles),
        level=max((p["level"] for p in profiles), default=0),
        current_streak=max((p["current_streak"] for p in profiles), default=0),
        activity=activity,
    )


def tripwire_stats(conn: psycopg.Connection[Any], manager_id: Any) -> TripwireStats:
    sales = _rows(conn, "SELECT * FROM tripwire_users WHERE granted_by = %s", [manager_id])
    now = _rows(conn, "SELECT now() AS n")[0]["n"]
    month_start = now.astimezone(datetime.UTC).replace(day=1, hour=0, minute=0, second=0,
                                                                microsecond=0)  # fmt: skip
    active = [s for s in sales if s["status"] == "active"]
    return TripwireStats(
        total_students=len(sales),
        active_students=len(active),
        refunded=sum(s["status"] == "refunded" for s in sales),
        revenue=sum((s["payment_amount"] for s in active), Decimal(0)),
        sold_this_month=sum(s["created_at"] >= month_start for s in sales),
        last_sale_at=max((s["created_at"] for s in sales), default=None),
    )
