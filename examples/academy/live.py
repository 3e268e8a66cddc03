"""`make live`: a manager's sales as a live page in the browser, through the realtime gateway.

Builds a small academy on the embedded PostgreSQL, enables realtime on tripwire_users, starts
`pyfuncs serve`, and prints the address of the demo page for manager #1: their sales, as
their token may see them (RLS and column privileges decide, in PostgreSQL). Then it keeps
selling: every second or so the manager enrols a student through the `create_student`
routine (a new row appears) or refunds a sale (a row changes). Open the page in two tabs:
they share one WebSocket. Ctrl-C stops.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import urllib.request
import uuid
from decimal import Decimal
from urllib.parse import urlencode

import psycopg

from pyfuncs import realtime
from pyfuncs.auth import JwtVerifier
from pyfuncs.client import Client
from pyfuncs.embedded import Cluster

from . import database, routines
from .demo import SECRET, token

DB = "academy_live"
PORT = int(os.environ.get("PYFUNCS_LIVE_PORT", "8000"))


def wait_healthy(url: str, gateway: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            raise SystemExit(f"the gateway exited (is port {PORT} free? PYFUNCS_LIVE_PORT=...)")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the gateway did not become healthy")


def main() -> int:
    cluster = Cluster.default()
    print(cluster.up())
    admin_url = database.fresh_database(cluster, DB)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        database.build(admin, students=2_000)
        realtime.enable(admin, "tripwire_users")
        manager_id = database.person_id(admin, 1)

    # For brevity the gateway connects as the cluster's superuser; in production it connects
    # as an authenticator role (README, "Realtime: the gateway", Deploying it).
    env = {**os.environ, "PYFUNCS_JWT_SECRET": SECRET, "PYFUNCS_JWT_ROLES": "manager"}
    gateway = subprocess.Popen(
        [sys.executable, "-m", "pyfuncs.cli", "--dsn", admin_url, "serve",
         "--host", "127.0.0.1", "--port", str(PORT), "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{PORT}"
    try:
        wait_healthy(base, gateway)
        fragment = urlencode([
            ("token", token(manager_id, "manager", ttl=3600)), ("table", "public.tripwire_users"),
            ("filter", f"granted_by=eq.{manager_id}"), ("order", "created_at.desc"),
            ("columns", "full_name,email,status,payment_amount,created_at"),
            ("title", "Manager #1: my sales, live"),
        ])  # fmt: skip
        print(f"\nOpen {base}/demo#{fragment}\n(in two tabs, too). Selling... Ctrl-C stops.")
        sell(cluster.url(DB).replace("postgres@", "authenticator@"), manager_id)
    except KeyboardInterrupt:
        pass
    finally:
        gateway.terminate()
        gateway.wait(10)
    return 0


def sell(url: str, manager_id: object) -> None:
    """The manager at work, through pyfuncs routines and RLS like any caller."""
    with Client(url, jwt=JwtVerifier(secret=SECRET, roles=["manager"]), max_size=1) as pf:
        manager = pf.as_user(token(manager_id, "manager", ttl=24 * 3600))
        run = uuid.uuid4().hex[:6]  # emails are unique: a run of its own
        for n in range(1, 1_000_000):
            if n % 4:
                manager.call(routines.create_student, f"live{n}.{run}@academy.test",
                             f"Live Student {n}", [1], None, Decimal(random.choice((49, 99))))  # fmt: skip
                print(f"  sold #{n}")
            else:
                with manager.transaction() as tx:  # as the manager: RLS lets it refund its own
                    refunded = tx.connection.execute(
                        "UPDATE tripwire_users SET status = 'refunded' WHERE user_id = ("
                        " SELECT user_id FROM tripwire_users WHERE granted_by = %s"
                        " AND status = 'active' ORDER BY random() LIMIT 1) RETURNING full_name",
                        [manager_id],
                    ).fetchone()  # fmt: skip
                print(f"  refunded {refunded[0] if refunded else 'nothing'}")
            time.sleep(random.uniform(0.5, 1.5))


if __name__ == "__main__":
    sys.exit(main())
