"""The academy example: caller rights, RLS through routines, JWTs, atomic procedures."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import jwt
import psycopg
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import orm

import pyfuncs.orm
from examples.academy import database, routines
from pyfuncs import errors
from pyfuncs.auth import JwtVerifier
from pyfuncs.client import AsyncClient, Client

SECRET = "test-secret-with-at-least-32-bytes!!"
ROLES = ("student", "manager")


def token(sub: Any, role: str | None, *, secret: str = SECRET, **claims: Any) -> str:
    payload = {"sub": str(sub), "role": role, "exp": int(time.time()) + 300, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret, algorithm="HS256")


@pytest.fixture
def academy(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    database.build(conn, students=200)
    return conn


@pytest.fixture
def client(academy: psycopg.Connection[Any], authenticator_dsn: str) -> Iterator[Client]:
    with Client(authenticator_dsn, jwt=JwtVerifier(secret=SECRET, roles=ROLES)) as client:
        yield client


def count(conn: psycopg.Connection[Any], query: str, *params: Any) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def test_two_students_see_only_their_own_rows(
    academy: psycopg.Connection[Any], client: Client
) -> None:
    for n in (21, 22):
        student = database.person_id(academy, n)
        stats = client.as_user(token(student, "student")).call(routines.dashboard_stats)
        # as the superuser (no RLS), the same numbers for that one student
        assert stats.completed_total == count(
            academy,
            "SELECT count(*) FROM student_progress WHERE is_completed AND user_id = %s",
            student,
        )
        xp = count(academy, "SELECT xp FROM profiles WHERE id = %s", student)
        assert stats.xp == xp
        # asking for someone else's data gives nothing: RLS hides their rows
        other = database.person_id(academy, 43 - n)
        assert (
            client.as_user(token(student, "student"))
            .call(routines.dashboard_stats, for_user=other)
            .completed_total
            == 0
        )
    manager = client.as_user(token(database.person_id(academy, 1), "manager"))
    assert manager.call(routines.dashboard_stats).completed_total == count(
        academy, "SELECT count(*) FROM student_progress WHERE is_completed"
    )


def test_a_role_without_execute_gets_42501(
    academy: psycopg.Connection[Any], client: Client
) -> None:
    student = client.as_user(token(database.person_id(academy, 21), "student"))
    with pytest.raises(errors.PermissionDenied) as info:
        student.call(routines.sales_leaderboard)
    assert info.value.sqlstate == "42501"
    # the login role itself, without switching to a role from a token
    with (
        psycopg.connect(client.pool.conninfo) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT * FROM api.sales_leaderboard()")


def test_leaderboard_and_tripwire_stats(academy: psycopg.Connection[Any], client: Client) -> None:
    manager_id = database.person_id(academy, 1)
    manager = client.as_user(token(manager_id, "manager"))
    board = manager.call(routines.sales_leaderboard, top=3)
    assert len(board) == 3 and all(isinstance(r, routines.LeaderRow) for r in board)
    assert [r.revenue for r in board] == sorted((r.revenue for r in board), reverse=True)
    expected = academy.execute(
        """SELECT sum(payment_amount) FILTER (WHERE status = 'active') FROM tripwire_users
           GROUP BY granted_by ORDER BY 1 DESC LIMIT 1"""
    ).fetchone()
    assert expected is not None and board[0].revenue == expected[0]
    mine = manager.call(routines.tripwire_stats)
    assert mine.total_students == count(
        academy, "SELECT count(*) FROM tripwire_users WHERE granted_by = %s", manager_id
    )


def test_create_student_is_atomic(academy: psycopg.Connection[Any], client: Client) -> None:
    manager = client.as_user(token(database.person_id(academy, 1), "manager"))
    before = count(academy, "SELECT count(*) FROM auth.users")
    # the third write (the profile) fails its phone check: the first two must not remain
    with pytest.raises(errors.CheckViolation) as info:
        manager.call(routines.create_student, "new@academy.test", "New Student", [1, 2],
                     phone="not a phone", payment_amount=Decimal(49))  # fmt: skip
    assert "routines.py:" in str(info.value) and "in create_student" in str(info.value)
    assert count(academy, "SELECT count(*) FROM auth.users") == before
    assert count(academy, "SELECT count(*) FROM users WHERE email = 'new@academy.test'") == 0

    # a course that does not exist fails the fourth write: still nothing
    with pytest.raises(errors.ForeignKeyViolation):
        manager.call(routines.create_student, "new@academy.test", "New Student", [1, 99],
                     None, Decimal(49))  # fmt: skip
    assert count(academy, "SELECT count(*) FROM auth.users") == before

    student_id = manager.call(routines.create_student, "New@Academy.test ", "New Student", [1, 2],
                              phone="+49 170 1234567", payment_amount=Decimal("99.00"))  # fmt: skip
    assert isinstance(student_id, uuid.UUID)
    for table, column in [
        ("auth.users", "id"),
        ("users", "id"),
        ("profiles", "id"),
        ("tripwire_users", "user_id"),
        ("sales_activity_log", "student_id"),
    ]:
        assert count(academy, f"SELECT count(*) FROM {table} WHERE {column} = %s", student_id) == 1
    assert (
        count(academy, "SELECT count(*) FROM course_assignments WHERE user_id = %s", student_id)
        == 2
    )


def test_create_student_from_sql_with_call(academy: psycopg.Connection[Any]) -> None:
    manager_id = database.person_id(academy, 2)
    academy.execute("SET ROLE manager")
    academy.execute("SELECT set_config('request.jwt.claims', %s, false)",
                    [f'{{"sub": "{manager_id}", "role": "manager"}}'])  # fmt: skip
    row = academy.execute(
        "CALL api.create_student(email => 'sql@academy.test', full_name => 'From SQL', "
        "course_ids => ARRAY[3], phone => NULL, payment_amount => 49, result => NULL)"
    ).fetchone()
    assert row is not None and isinstance(row[0], uuid.UUID)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="invalid email address"):
        academy.execute("CALL api.create_student('nope', 'x', ARRAY[1], NULL, 49, NULL)")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda s: token(s, "student", secret="another-secret-that-is-long-enough!"),
            "signature does not verify",
        ),
        (lambda s: token(s, "student", exp=int(time.time()) - 10), "has expired"),
        (lambda s: token(s, "student", nbf=int(time.time()) + 600), "not valid yet"),
        (lambda s: "not.a.token", "malformed"),
        (lambda s: token(s, None), "no 'role' claim"),
        (lambda s: token(s, "none"), "may not take"),  # that is the login role itself
        (lambda s: token(s, "authenticator"), "may not take"),
        (lambda s: jwt.encode({"sub": str(s), "role": "student"}, SECRET), "no exp"),
    ],
)
def test_bad_tokens_are_refused_before_anything_runs(
    academy: psycopg.Connection[Any], client: Client, make: Any, message: str
) -> None:
    with pytest.raises(errors.AuthError, match=message):
        client.as_user(make(database.person_id(academy, 21))).call(routines.dashboard_stats)


def test_audience_and_rs256(academy: psycopg.Connection[Any], authenticator_dsn: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    verifier = JwtVerifier(
        public_key=public, roles=ROLES, audience="academy", role_claim="app.role"
    )
    student = database.person_id(academy, 21)
    claims = {"sub": str(student), "app": {"role": "student"}, "aud": "academy",
              "exp": int(time.time()) + 60}  # fmt: skip
    with Client(authenticator_dsn, jwt=verifier) as client:
        stats = client.as_user(jwt.encode(claims, key, algorithm="RS256")).call(
            routines.dashboard_stats
        )
        assert stats.completed_total > 0
        with pytest.raises(errors.AuthError, match="another audience"):
            client.as_user(jwt.encode(claims | {"aud": "other"}, key, algorithm="RS256"))
        with pytest.raises(errors.AuthError, match="not signed with RS256"):
            client.as_user(token(student, "student"))


def test_claims_helpers_in_sql(academy: psycopg.Connection[Any], client: Client) -> None:
    student = database.person_id(academy, 21)
    with client.as_user(token(student, "student", email="s@x")).transaction() as tx:
        row = tx.connection.execute(
            "SELECT pyfuncs.current_user_id(), pyfuncs.jwt_claim('email'), current_user"
        ).fetchone()
    assert row == (student, "s@x", "student")


def test_async_client(academy: psycopg.Connection[Any], authenticator_dsn: str) -> None:
    async def main() -> list[Any]:
        async with AsyncClient(
            authenticator_dsn, jwt=JwtVerifier(secret=SECRET, roles=ROLES)
        ) as client:
            manager = client.as_user(token(database.person_id(academy, 1), "manager"))
            calls = [manager.call(routines.sales_leaderboard, top=n) for n in (1, 2, 3)]
            return list(await asyncio.gather(*calls))

    results = asyncio.run(main())
    assert [len(r) for r in results] == [1, 2, 3]
    assert results[2][0] == results[0][0]


def test_sqlalchemy_session_call_commits_and_rolls_back_with_the_session(
    academy: psycopg.Connection[Any], dsn: str
) -> None:
    engine = sa.create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    manager_id = database.person_id(academy, 3)
    claims = f'{{"sub": "{manager_id}"}}'
    with orm.Session(engine) as session:
        session.execute(sa.text("SELECT set_config('request.jwt.claims', :c, true)"), {"c": claims})
        board = pyfuncs.orm.call(session, "api.sales_leaderboard", top=2)
        assert len(board) == 2
        pyfuncs.orm.call(session, routines.create_student, "orm@academy.test", "ORM", [1],
                         None, Decimal(10))  # fmt: skip
        session.rollback()
    assert count(academy, "SELECT count(*) FROM users WHERE email = 'orm@academy.test'") == 0
    with orm.Session(engine) as session, session.begin():
        session.execute(sa.text("SELECT set_config('request.jwt.claims', :c, true)"), {"c": claims})
        pyfuncs.orm.call(session, routines.create_student, "orm@academy.test", "ORM", [1],
                         None, Decimal(10))  # fmt: skip
    assert count(academy, "SELECT count(*) FROM users WHERE email = 'orm@academy.test'") == 1
    engine.dispose()
