"""The browser client (`/realtime.js`) in real headless Chromium: Debian's `chromium`, driven
by playwright. Tabs are pages of one browser context (one origin, so they share Web Locks
and BroadcastChannel, as the tabs of one browser window do)."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from .conftest import (
    GatewayProcess,
    burst,
    decode,
    feed_but_superseded,
    head_commit,
    notes,
    token,
)
from .test_exact_keys import make_table

CHROMIUM = "/usr/bin/chromium"  # apt's chromium (`make setup` installs it); no download here
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context()
    yield context
    context.close()


def open_tab(
    context: BrowserContext, gateway: GatewayProcess, table: str = "rt.notes", more: str = ""
) -> Page:
    """A tab of the demo page: one subscription through the browser client."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{gateway.url}/demo#token={token()}&table={table}{more}")
    try:
        page.wait_for_function("window.demo?.subscription.ready", timeout=15_000)
    except Exception:
        raise AssertionError(f"the demo page did not subscribe; page errors: {errors}") from None
    return page


def cache(page: Page) -> dict[int, dict[str, Any]]:
    return {r["id"]: r for r in page.evaluate("[...demo.subscription.rows.values()]")}


def role(page: Page) -> str:
    return str(page.evaluate("demo.realtime.role"))


def record_changes(page: Page) -> None:
    """Keep the position of every change the tab's subscription applies in window.applied."""
    page.evaluate("""() => {
        window.applied = [];
        const options = demo.subscription.options, shown = options.onChange;
        options.onChange = (event, sub) => { applied.push(event.position); shown(event, sub); };
    }""")


def applied(page: Page, dsn: str) -> list[tuple[int, int]]:
    return [decode(dsn, p) for p in page.evaluate("window.applied")]


def eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def websockets_open(gateway: GatewayProcess) -> float:
    return gateway.metrics()['pyfuncs_gateway_connections{transport="websocket"}']


def test_two_tabs_share_one_connection_and_both_see_every_change(
    context: BrowserContext, gateway: GatewayProcess, rt_db: str
) -> None:
    with psycopg.connect(rt_db, autocommit=True) as db:
        db.execute("INSERT INTO rt.notes (id, body) VALUES (1, 'before the tabs')")
        first = open_tab(context, gateway)
        second = open_tab(context, gateway)
        assert (role(first), role(second)) == ("leader", "follower")
        eventually(lambda: websockets_open(gateway) == 1, "one WebSocket serves both tabs")
        assert cache(first) == cache(second) == notes(rt_db)  # the snapshot, in both
        db.execute("INSERT INTO rt.notes (id, body) SELECT i, 'new' FROM generate_series(2, 6) i")
        db.execute("UPDATE rt.notes SET n = 7, body = 'changed' WHERE id IN (1, 3)")
        db.execute("DELETE FROM rt.notes WHERE id = 2")
        state = notes(rt_db)
        eventually(lambda: cache(first) == state and cache(second) == state,
                   "both tabs hold the committed rows")  # fmt: skip
    assert websockets_open(gateway) == 1
    assert gateway.metrics()["pyfuncs_gateway_subscriptions"] == 2  # one per tab, shared socket


def test_leader_tab_closed_another_takes_over_without_gap(
    context: BrowserContext, gateway: GatewayProcess, rt_db: str
) -> None:
    leader = open_tab(context, gateway)
    follower = open_tab(context, gateway)
    assert (role(leader), role(follower)) == ("leader", "follower")
    record_changes(follower)
    since = head_commit(rt_db)
    writing = burst(rt_db)  # four concurrent writers
    eventually(lambda: len(applied(follower, rt_db)) > 20, "the follower receives the burst")
    leader.close()  # mid-burst: its lock is released, the follower is elected
    eventually(lambda: role(follower) == "leader", "the other tab takes over")
    writing.join()
    head = head_commit(rt_db)
    eventually(lambda: applied(follower, rt_db)[-1][0] >= head, "the new leader catches up")
    assert cache(follower) == notes(rt_db)  # exactly the committed rows
    done = applied(follower, rt_db)  # every change once, in order: no gap (but superseded)
    assert done == feed_but_superseded(rt_db, since, done)
    eventually(lambda: websockets_open(gateway) == 1, "only the new leader's connection is left")


def test_a_tab_reconnects_and_resumes_when_the_gateway_restarts(
    context: BrowserContext, gateway: GatewayProcess, rt_db: str
) -> None:
    page = open_tab(context, gateway)
    record_changes(page)
    since = head_commit(rt_db)
    with psycopg.connect(rt_db, autocommit=True) as db:
        db.execute("INSERT INTO rt.notes (id) VALUES (1)")
        eventually(lambda: len(applied(page, rt_db)) == 1, "the first change arrives")
        gateway.kill()
        for i in range(2, 12):  # committed while no gateway runs
            db.execute("INSERT INTO rt.notes (id) VALUES (%s)", [i])
        db.execute("UPDATE rt.notes SET n = 1 WHERE id < 5")
        gateway.start()  # the same address: the client's retries find it
        eventually(lambda: cache(page) == notes(rt_db), "the tab resumes and catches up")
        db.execute("DELETE FROM rt.notes WHERE id = 11")
        eventually(lambda: 11 not in cache(page), "the live connection goes on")
    # every change once, in order (each row was still there when its change was delivered;
    # a change to a row deleted before its delivery is sent as the DELETE, README), but the
    # INSERTs of 2-4 that their UPDATE follows, if the resume's catch-up read them
    done = applied(page, rt_db)
    assert done == feed_but_superseded(rt_db, since, done)


def test_rows_that_went_while_the_gateway_was_away_leave_every_tab(
    context: BrowserContext, gateway: GatewayProcess, rt_db: str
) -> None:
    """Resuming, the leader names the keys each tab holds; the rows deleted, or moved out of
    the subscription's filter, while the gateway was down leave both tabs' caches."""
    with psycopg.connect(rt_db, autocommit=True) as db:
        db.execute("INSERT INTO rt.notes (id, n) SELECT i, 0 FROM generate_series(1, 5) i")
        tabs = [open_tab(context, gateway, more="&filter=n=lt.10") for _ in range(2)]
        assert [role(t) for t in tabs] == ["leader", "follower"]
        gateway.kill()
        db.execute("DELETE FROM rt.notes WHERE id = 1")
        db.execute("UPDATE rt.notes SET n = 50 WHERE id = 2")  # out of the filter
        db.execute("UPDATE rt.notes SET body = 'kept' WHERE id = 3")
        db.execute("INSERT INTO rt.notes (id, n) VALUES (6, 0)")
        gateway.start()
        want = {k: v for k, v in notes(rt_db).items() if v["n"] < 10}
        assert sorted(want) == [3, 4, 5, 6]
        for tab in tabs:
            eventually(lambda tab=tab: cache(tab) == want, "each tab holds exactly its rows")
        # resumed (naming the keys held), not subscribed afresh
        resumed = ("SELECT count(*) FROM pyfuncs.realtime_audit "
                   "WHERE event = 'subscribe' AND (detail->>'keys')::int = 5")  # fmt: skip
        eventually(lambda: db.execute(resumed).fetchone() == (2,), "both resumed with keys")


def test_closed_tabs_and_refused_subscriptions_are_dropped(
    context: BrowserContext, gateway: GatewayProcess, rt_db: str
) -> None:
    leader = open_tab(context, gateway)
    follower = open_tab(context, gateway)
    eventually(lambda: gateway.metrics()["pyfuncs_gateway_subscriptions"] == 2, "two subscribed")
    follower.close()  # the leader unsubscribes for it
    eventually(lambda: gateway.metrics()["pyfuncs_gateway_subscriptions"] == 1, "one is left")
    error = leader.evaluate("""() => new Promise((resolve) => {
        demo.realtime.subscribe("rt.notes", {
            filters: [{ column: "nope", op: "eq", value: 1 }],
            onError: (error, sub) => resolve({ code: error.code, closed: sub.closed }),
        });
    })""")
    assert error == {"code": "bad_filter", "closed": True}
    assert leader.evaluate("demo.realtime.subscriptions.size") == 1


def test_the_token_is_refreshed_before_it_expires(
    context: BrowserContext, gateway: GatewayProcess, rt_db: str
) -> None:
    page = open_tab(context, gateway)
    tokens = [token(ttl=3), token(ttl=3600)]
    page.evaluate(
        """(tokens) => {
        window.asked = 0;
        window.states = [];
        window.refreshing = new demo.Realtime({
            crossTab: false, refreshBefore: 2.5, token: async () => tokens[asked++],
            onStatus: ({ state }) => states.push(state),
        });
        window.rows = refreshing.subscribe("rt.notes").rows;
    }""",
        tokens,
    )
    eventually(lambda: page.evaluate("asked") == 2, "the client asks for a new token")
    time.sleep(3)  # past the first token's expiry
    with psycopg.connect(rt_db, autocommit=True) as db:
        db.execute("INSERT INTO rt.notes (id) VALUES (1)")
    eventually(lambda: page.evaluate("rows.size") == 1, "changes still arrive")
    assert page.evaluate("states") == ["connecting", "open"]  # on the same connection


PAGE = """<!doctype html><script type="module">
  import { Realtime } from "GATEWAY/realtime.js";
  const realtime = new Realtime({ token: "TOKEN", crossTab: false });
  window.live = realtime.subscribe("rt.notes", {});
  const events = new EventSource("GATEWAY/realtime/sse?table=rt.notes&access_token=TOKEN");
  window.streamed = [];
  events.addEventListener("change", (e) => streamed.push(JSON.parse(e.data).key.id));
</script>"""


@contextlib.contextmanager
def page_server(html: str) -> Iterator[int]:
    """A web server of another origin (another port) serving one page: the app's."""
    body = html.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()


def test_a_page_on_an_allowed_origin_imports_the_client_and_streams(
    browser: Browser, gateway_factory: Callable[..., GatewayProcess], rt_db: str
) -> None:
    """README's own example, from another origin: the module import, the WebSocket and an
    EventSource all cross origins, allowed by PYFUNCS_GATEWAY_ALLOWED_ORIGINS; the same page
    on an origin not allowed (another host name) gets none of them."""
    gateway = gateway_factory(heartbeat=1)
    html = PAGE.replace("GATEWAY", gateway.url).replace("TOKEN", token())
    with page_server(html) as port:
        allowed = f"http://127.0.0.1:{port}"
        gateway.stop()
        gateway.env["PYFUNCS_GATEWAY_ALLOWED_ORIGINS"] = allowed
        gateway.start()
        for origin in (allowed, f"http://localhost:{port}"):
            context = browser.new_context()
            try:
                page = context.new_page()
                page.goto(f"{origin}/")
                if origin != allowed:
                    time.sleep(1)
                    assert page.evaluate("typeof window.live") == "undefined"  # import refused
                    continue
                page.wait_for_function("window.live?.ready", timeout=15_000)
                with psycopg.connect(rt_db, autocommit=True) as db:
                    db.execute("INSERT INTO rt.notes (id) VALUES (1)")
                for count, what in (("live.rows.size", "the WebSocket"),
                                    ("streamed.length", "an EventSource")):  # fmt: skip
                    eventually(lambda p=page, c=count: p.evaluate(c) == 1, f"{what} delivers")
            finally:
                context.close()


# the browser's values of rt.k's keys (test_exact_keys.KEYS): a number JavaScript cannot
# hold exactly arrives as a string of its digits; the cache's keys (sub.keyOf) are exact
IN_THE_BROWSER = {
    "bigint": ("9007199254740993", "9007199254740992"),
    "numeric": ("0.10000000000000000001", 0.1),
    "float8": (0.30000000000000004, 0.3),
}


def entries(page: Page) -> dict[str, dict[str, Any]]:
    return dict(page.evaluate("[...demo.subscription.rows.entries()]"))


@pytest.mark.parametrize("kind", list(IN_THE_BROWSER))
def test_keys_a_double_cannot_tell_apart_stay_apart_in_every_tab(
    kind: str, context: BrowserContext, gateway_factory: Callable[..., GatewayProcess],
    rt_db: str, conn: psycopg.Connection[Any],
) -> None:  # fmt: skip
    """Two keys one double would hold: both tabs hold both rows, apply a change of one to it
    alone, and, resuming after the gateway was away, drop exactly the one deleted meanwhile
    (the leader named the keys with all their digits) and keep its neighbour."""
    a, b = make_table(conn, kind)
    gateway = gateway_factory(heartbeat=1)
    js_a, js_b = IN_THE_BROWSER[kind]

    def row(value: Any, n: int) -> tuple[str, dict[str, Any]]:
        digits = value if isinstance(value, str) else json.dumps(value)
        return f"[{digits}]", {"id": value, "n": n}

    where = f"WHERE id = %s::text::{kind}"
    with psycopg.connect(rt_db, autocommit=True) as db:
        tabs = [open_tab(context, gateway, table="rt.k") for _ in range(2)]
        assert [role(t) for t in tabs] == ["leader", "follower"]
        for tab in tabs:
            assert entries(tab) == dict([row(js_a, 0), row(js_b, 0)])
        db.execute(f"UPDATE rt.k SET n = 1 {where}", [b])
        want = dict([row(js_a, 0), row(js_b, 1)])
        for tab in tabs:
            eventually(lambda tab=tab: entries(tab) == want, "the change of one row, alone")
        gateway.kill()
        db.execute(f"DELETE FROM rt.k {where}", [a])
        gateway.start()
        db.execute("INSERT INTO rt.k (id) VALUES (7)")  # after the resume: it caught up
        want = dict([row(js_b, 1), row(7, 0)])
        for tab in tabs:
            eventually(lambda tab=tab: entries(tab) == want, "exactly the deleted row left")
        resumed = ("SELECT count(*) FROM pyfuncs.realtime_audit "
                   "WHERE event = 'subscribe' AND (detail->>'keys')::int = 2")  # fmt: skip
        eventually(lambda: db.execute(resumed).fetchone() == (2,), "both resumed with keys")
        time.sleep(0.5)
        for tab in tabs:
            assert entries(tab) == want
