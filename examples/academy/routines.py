"""The academy's business logic, as PL/Python routines deployed by pyfuncs.

The seed application did this in the app: four separate writes for create_student (not
transactional), and dashboards and leaderboards that fetched every row and aggregated with
filter/reduce. Here the logic is still Python, but it runs next to the data, atomically, with
the caller's rights: row-level security decides which rows each caller aggregates.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from pyfuncs import RaiseError, db, procedure, stored_function


@dataclass
class DashboardStats:
    lessons_today: int
    watch_minutes_today: int
    completed_total: int
    xp: int
    level: int
    current_streak: int
    activity: list[dict[str, Any]]  # the last 7 days: {"day", "lessons", "minutes"}


class LeaderRow(NamedTuple):
    manager_id: uuid.UUID
    manager_name: str
    students: int
    active_students: int
    revenue: Decimal


@dataclass
class TripwireStats:
    total_students: int
    active_students: int
    refunded: int
    revenue: Decimal
    sold_this_month: int
    last_sale_at: datetime.datetime | None


def _require_email(email: str) -> str:
    email = email.strip().lower()
    if "@" not in email or email.startswith("@") or email.endswith("@"):
        raise RaiseError(f"invalid email address {email!r}", sqlstate="22023",
                         hint="use name@domain")  # fmt: skip
    return email


@procedure(schema="api", roles=["manager"])
def create_student(
    email: str,
    full_name: str,
    course_ids: list[int],
    phone: str | None,
    payment_amount: Decimal,
) -> uuid.UUID:
    """Create a student: auth user, users row, profile, course assignments and the sale.

    All writes happen or none do; the selling manager is the caller (JWT `sub`).
    """
    email = _require_email(email)
    manager_id = db.user_id()
    if manager_id is None:
        raise RaiseError("create_student must be called with a manager's token", sqlstate="42501")
    student_id = uuid.uuid4()
    db.execute("INSERT INTO auth.users (id, email) VALUES ($1, $2)", [student_id, email])
    db.execute(
        "INSERT INTO users (id, email, full_name, role) VALUES ($1, $2, $3, 'student')",
        [student_id, email, full_name],
    )
    db.execute("INSERT INTO profiles (id, phone) VALUES ($1, $2)", [student_id, phone])
    for course_id in course_ids:
        db.execute(
            "INSERT INTO course_assignments (user_id, course_id) VALUES ($1, $2)",
            [student_id, course_id],
        )
    db.execute(
        """INSERT INTO tripwire_users (user_id, full_name, email, granted_by, payment_amount)
           VALUES ($1, $2, $3, $4, $5)""",
        [student_id, full_name, email, manager_id, payment_amount],
    )
    db.execute(
        """INSERT INTO sales_activity_log (manager_id, action_type, student_id, details)
           VALUES ($1, 'student_created', $2, $3)""",
        [manager_id, student_id, {"courses": course_ids}],
    )
    return student_id


@stored_function(schema="api", roles=["student", "manager"], volatility="stable")
def dashboard_stats(for_user: uuid.UUID | None = None) -> DashboardStats:
    """Today's lessons and watch time, XP, and a 7-day activity series.

    Aggregates every row the caller may see: a student's own, or (for a manager) the whole
    academy's, narrowed to one student with `for_user`.
    """
    # days in the session's time zone; `since` as timestamptz lets the planner use the index
    week = db.fetchone("SELECT current_date - 6 AS start, (current_date - 6)::timestamptz AS since")
    assert week is not None
    week_start: datetime.date = week["start"]
    days = db.execute(
        """SELECT updated_at::date AS day,
                  count(*) FILTER (WHERE is_completed) AS lessons,
                  sum(watch_time_seconds) AS seconds
           FROM student_progress
           WHERE updated_at >= $1 AND ($2::uuid IS NULL OR user_id = $2::uuid)
           GROUP BY 1""",
        [week["since"], for_user],
    )
    by_day = {row["day"]: row for row in days}
    activity = []
    for offset in range(7):
        day = week_start + datetime.timedelta(days=offset)
        row = by_day.get(day)
        activity.append({
            "day": day.isoformat(),
            "lessons": int(row["lessons"]) if row else 0,
            "minutes": int(row["seconds"] or 0) // 60 if row else 0,
        })  # fmt: skip
    totals = db.fetchone(
        """SELECT coalesce(sum(xp), 0) AS xp, coalesce(max(level), 0) AS level,
                  coalesce(max(current_streak), 0) AS streak
           FROM profiles WHERE $1::uuid IS NULL OR id = $1::uuid""",
        [for_user],
    )
    completed = db.fetchval(
        """SELECT count(*) FROM student_progress
           WHERE is_completed AND ($1::uuid IS NULL OR user_id = $1::uuid)""",
        [for_user],
    )
    assert totals is not None
    today_row = activity[-1]
    return DashboardStats(
        lessons_today=today_row["lessons"],
        watch_minutes_today=today_row["minutes"],
        completed_total=int(completed),
        xp=int(totals["xp"]),
        level=int(totals["level"]),
        current_streak=int(totals["streak"]),
        activity=activity,
    )


@stored_function(schema="api", roles=["manager"], volatility="stable")
def sales_leaderboard(top: int = 10) -> Iterator[LeaderRow]:
    """Top managers by revenue from active tripwire sales."""
    if top < 1 or top > 100:
        raise RaiseError(f"top must be between 1 and 100, got {top}", sqlstate="22023")
    rows = db.execute(
        """SELECT t.manager_id, u.full_name AS manager_name, t.students, t.active_students,
                  t.revenue
           FROM (SELECT granted_by AS manager_id, count(*) AS students,
                        count(*) FILTER (WHERE status = 'active') AS active_students,
                        coalesce(sum(payment_amount) FILTER (WHERE status = 'active'), 0) AS revenue
                 FROM tripwire_users GROUP BY granted_by) t
           JOIN users u ON u.id = t.manager_id""",
    )
    ranked = sorted(rows, key=lambda r: (-r["revenue"], r["manager_name"]))
    for r in ranked[:top]:
        yield LeaderRow(r["manager_id"], r["manager_name"], r["students"],
                        r["active_students"], r["revenue"])  # fmt: skip


@stored_function(schema="api", roles=["manager"], volatility="stable")
def tripwire_stats(manager_id: uuid.UUID | None = None) -> TripwireStats:
    """One manager's sales (the caller's own by default)."""
    manager = manager_id or db.user_id()
    month_start = datetime.datetime.now(datetime.UTC).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    row = db.fetchone(
        """SELECT count(*) AS total,
                  count(*) FILTER (WHERE status = 'active') AS active,
                  count(*) FILTER (WHERE status = 'refunded') AS refunded,
                  coalesce(sum(payment_amount) FILTER (WHERE status = 'active'), 0) AS revenue,
                  count(*) FILTER (WHERE created_at >= $2) AS this_month,
                  max(created_at) AS last_sale_at
           FROM tripwire_users WHERE granted_by = $1""",
        [manager, month_start],
    )
    assert row is not None
    return TripwireStats(row["total"], row["active"], row["refunded"], row["revenue"],
                         row["this_month"], row["last_sale_at"])  # fmt: skip
