"""RLS- and privilege-aware delivery: a subscriber receives only rows its role and claims
may SELECT, only the columns it may read; DELETE and TRUNCATE reveal nothing it did not see
(issue 4, "Authorisation" and the randomised reliability test)."""

from __future__ import annotations

import asyncio
import json
import operator
import random
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from .conftest import STUDENTS, GatewayProcess, WsClient, decode, head_commit, token

A, B = STUDENTS


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


def test_students_see_their_rows_without_hidden_columns(
    gateway: GatewayProcess, rt_db: str
) -> None:
    async def main() -> None:
        with psycopg.connect(rt_db, autocommit=True) as db:
            db.execute("INSERT INTO rt.notes VALUES (1, %s, 'a1', 's'), (2, %s, 'b1', 's')", [A, B])
            alice = await WsClient.connect(gateway.ws_url, token("student", A))
            bob = await WsClient.connect(gateway.ws_url, token("student", B))
            boss = await WsClient.connect(gateway.ws_url, token("manager"))
            snaps = [await c.subscribe("n") for c in (alice, bob, boss)]
            assert [[r["id"] for r in s["rows"]] for s in snaps] == [[1], [2], [1, 2]]
            assert "secret" not in snaps[0]["rows"][0] and snaps[2]["rows"][0]["secret"] == "s"
            db.execute("INSERT INTO rt.notes VALUES (3, %s, 'a2', 'top')", [A])
            db.execute("UPDATE rt.notes SET owner = %s WHERE id = 1", [B])  # a1 moves to bob
            db.execute("DELETE FROM rt.notes WHERE id = 2")  # bob's: alice never saw it
            db.execute("INSERT INTO rt.notes VALUES (9, NULL, 'marker', NULL)")
            await boss.wait_for(lambda m: m.get("key") == {"id": 9})
            await asyncio.sleep(0.3)
            seen = {n: [(c["op"], c["key"]["id"], c["row"]) for c in cl.changes()]
                    for n, cl in (("alice", alice), ("bob", bob))}  # fmt: skip
            assert seen["alice"] == [
                ("INSERT", 3, {"id": 3, "owner": A, "body": "a2", "n": 0}),
                ("UPDATE", 1, None),  # left her view: the key only
            ]
            assert seen["bob"] == [
                ("UPDATE", 1, {"id": 1, "owner": B, "body": "a1", "n": 0}),
                ("DELETE", 2, None),
            ]
            assert [c["op"] for c in boss.changes()] == ["INSERT", "UPDATE", "DELETE", "INSERT"]
            db.execute("TRUNCATE rt.notes")
            for c in (alice, bob, boss):
                t = await c.wait_for(lambda m: m.get("op") == "TRUNCATE")
                assert t["key"] is None and t["row"] is None
            for c in (alice, bob, boss):
                await c.close()

    run(main())


def test_a_role_without_select_cannot_subscribe_nor_learn_what_exists(
    gateway: GatewayProcess, rt_db: str, conn: psycopg.Connection[Any]
) -> None:
    """To a role that may not read them, an enabled table, a table that is not enabled and
    no table at all get the same answer."""
    conn.execute("CREATE ROLE rt_nobody NOLOGIN")
    conn.execute("GRANT rt_nobody TO authenticator")
    conn.execute("CREATE TABLE rt.hidden (id int PRIMARY KEY)")
    try:

        async def main() -> None:
            ws = await WsClient.connect(gateway.ws_url, token("rt_nobody"))
            answers = []
            for i, table in enumerate(("rt.notes", "rt.hidden", "rt.nothing", "nothing")):
                reply = await ws.subscribe(f"x{i}", table=table)
                answers.append((reply["code"], reply["message"].replace(repr(table), "T")))
            assert answers == [answers[0]] * 4 and answers[0][0] == "unknown_table", answers
            await ws.close()

        run(main())
    finally:
        conn.execute("DROP ROLE rt_nobody")


def test_revoking_select_stops_delivery_at_once(
    gateway: GatewayProcess, rt_db: str, conn: psycopg.Connection[Any]
) -> None:
    async def main() -> None:
        boss = await WsClient.connect(gateway.ws_url, token("manager"))
        await boss.subscribe("n")
        conn.execute("INSERT INTO rt.notes (id) VALUES (1)")
        await boss.wait_for(lambda m: m["type"] == "change")
        conn.execute("REVOKE SELECT ON rt.notes FROM manager")
        conn.execute("INSERT INTO rt.notes (id) VALUES (2)")
        conn.execute("GRANT SELECT (id) ON rt.notes TO manager")
        conn.execute("INSERT INTO rt.notes (id, body) VALUES (3, 'x')")
        last = await boss.wait_for(lambda m: m.get("key") == {"id": 3})
        assert last["row"] == {"id": 3}  # the one column it may read again
        assert [c["key"]["id"] for c in boss.changes()] in ([1, 3], [1, 2, 3])
        if len(boss.changes()) == 3:  # delivered after the GRANT: only the id
            assert boss.changes()[1]["row"] == {"id": 2}
        await boss.close()

    run(main())


# --- randomised: users, policies and filters -------------------------------------------

POLICIES: dict[str, tuple[str, Callable[[dict[str, Any], dict[str, Any]], bool]]] = {
    "owner": ("owner = pyfuncs.current_user_id()", lambda row, c: row["owner"] == c["sub"]),
    "team": ("team = (pyfuncs.jwt_claims() ->> 'team')::int",
             lambda row, c: row["team"] == c["team"]),
    "level": ("level <= (pyfuncs.jwt_claims() ->> 'level')::int",
              lambda row, c: row["level"] <= c["level"]),
}  # fmt: skip
OPS = {"eq": operator.eq, "neq": operator.ne, "lt": operator.lt, "lte": operator.le,
       "gt": operator.gt, "gte": operator.ge}  # fmt: skip


def _passes(row: dict[str, Any], filters: list[dict[str, Any]]) -> bool:
    for f in filters:
        value = row[f["column"]]
        if f["op"] == "in":
            if value not in f["value"]:
                return False
        elif value is None or not OPS[f["op"]](value, f["value"]):
            return False
    return True


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_randomised_no_subscriber_ever_receives_a_row_its_rls_hides(
    gateway: GatewayProcess, rt_db: str, conn: psycopg.Connection[Any], seed: int
) -> None:
    rnd = random.Random(seed)
    chosen = rnd.sample(sorted(POLICIES), rnd.randint(1, 2))
    conn.execute(
        "CREATE TABLE rt.items (id int PRIMARY KEY, owner uuid, team int, level int, body text)"
    )
    conn.execute("ALTER TABLE rt.items ENABLE ROW LEVEL SECURITY")
    for name in chosen:  # permissive policies: a row is visible if any of them allows it
        conn.execute(f"CREATE POLICY {name} ON rt.items FOR SELECT TO student "
                     f"USING ({POLICIES[name][0]})")  # fmt: skip
    conn.execute("GRANT SELECT (id, owner, team, level) ON rt.items TO student")
    conn.execute("SELECT pyfuncs.enable_realtime('rt.items')")
    users = [{"sub": s, "team": rnd.randint(1, 3), "level": rnd.randint(1, 5)}
             for s in (*STUDENTS, "33333333-3333-3333-3333-333333333333")]  # fmt: skip

    def random_row(i: int) -> dict[str, Any]:
        return {"id": i, "owner": rnd.choice(users)["sub"], "team": rnd.randint(1, 3),
                "level": rnd.randint(1, 5), "body": f"b{rnd.random():.3f}"}  # fmt: skip

    def write(row: dict[str, Any]) -> None:
        conn.execute(
            "INSERT INTO rt.items VALUES (%(id)s, %(owner)s, %(team)s, %(level)s, %(body)s) "
            "ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, team = EXCLUDED.team, "
            "level = EXCLUDED.level, body = EXCLUDED.body", row,
        )  # fmt: skip

    for i in range(20):
        write(random_row(i))

    def random_filters() -> list[dict[str, Any]]:
        choice = rnd.randint(0, 3)
        if choice == 0:
            return []
        if choice == 1:
            return [{"column": "level", "op": rnd.choice(list(OPS)), "value": rnd.randint(1, 5)}]
        if choice == 2:
            return [{"column": "team", "op": "in", "value": rnd.sample([1, 2, 3], 2)}]
        return [{"column": "id", "op": "lt", "value": 25},
                {"column": "team", "op": "neq", "value": rnd.randint(1, 3)}]  # fmt: skip

    async def main() -> None:
        subscribers = []
        for n, user in enumerate(users * 2):
            ws = await WsClient.connect(gateway.ws_url, token("student", **user))
            filters = random_filters()
            snap = await ws.subscribe("s", table="rt.items", filters=filters)
            assert snap["type"] == "subscribed", snap
            cache = {r["id"]: r for r in snap["rows"]}
            subscribers.append((n, user, filters, ws, cache))
        for step in range(120):
            action = rnd.random()
            i = rnd.randint(0, 29)
            if action < 0.6:
                write(random_row(i))
            elif action < 0.9:
                conn.execute("DELETE FROM rt.items WHERE id = %s", [i])
            else:
                conn.execute("UPDATE rt.items SET id = %s WHERE id = %s", [100 + step, i])
        conn.execute("INSERT INTO rt.items (id) VALUES (9999)")  # marker, visible to none
        head = head_commit(rt_db)
        for *_, ws, _ in subscribers:
            await ws.wait_for(lambda m: m["type"] == "heartbeat"
                              and decode(rt_db, m["positions"]["s"])[0] == head, timeout=30)  # fmt: skip
        for n, user, filters, ws, cache in subscribers:
            for change in ws.changes():
                row = change["row"]
                if row is not None:
                    assert "body" not in row, "a column the role may not read was sent"
                    assert any(POLICIES[p][1](row, user) for p in chosen), (seed, n, row)
                    assert _passes(row, filters), (seed, n, filters, row)
                    cache[row["id"]] = row
                elif change["op"] == "TRUNCATE":
                    cache.clear()
                else:
                    cache.pop(change["key"]["id"], None)
            with conn.transaction():
                conn.execute("SELECT set_config('role', 'student', true), "
                             "set_config('request.jwt.claims', %s, true)",
                             [json.dumps(user)])  # fmt: skip
                visible = {
                    r[0]: {"id": r[0], "owner": str(r[1]) if r[1] else None, "team": r[2],
                           "level": r[3]}
                    for r in conn.execute("SELECT id, owner, team, level FROM rt.items")
                }  # fmt: skip
            expected = {k: v for k, v in visible.items() if _passes(v, filters)}
            assert cache == expected, (seed, n, filters)
            await ws.close()

    run(main())
