"""The `pyfuncs` command line."""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence

import psycopg

from . import deploy as deploying
from . import migrate, realtime
from .collect import collect
from .config import resolve_dsn
from .embedded import Cluster
from .errors import PyfuncsError


def _connect(args: argparse.Namespace) -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(resolve_dsn(args.dsn), autocommit=True)
    except psycopg.OperationalError as exc:
        raise PyfuncsError(f"cannot connect to the database: {exc}") from exc


def _print_result(result: deploying.DeployResult) -> None:
    for change in result.changes:
        before = f" (was v{change.previous})" if change.previous else ""
        version = f"v{change.version}" if change.version else "-"
        print(f"{change.action:>9}  {change.routine}  {version}{before}")
    if result.deployment_id is not None:
        print(f"deployment {result.deployment_id} recorded")
    else:
        print("nothing changed")


def cmd_db(args: argparse.Namespace) -> None:
    cluster = Cluster.default()
    if args.action == "up":
        print(cluster.up())
    elif args.action == "url":
        print(cluster.url())
    else:
        cluster.down()
        print("stopped")


def cmd_install(args: argparse.Namespace) -> None:
    revision = migrate.install(resolve_dsn(args.dsn))
    print(f"pyfuncs core schema at revision {revision}, runtime installed")


def cmd_deploy(args: argparse.Namespace) -> None:
    with _connect(args) as conn:
        _print_result(
            deploying.deploy(conn, args.target, label=args.label, notify=not args.no_notify)
        )


def cmd_rollback(args: argparse.Namespace) -> None:
    with _connect(args) as conn:
        if args.routine:
            if args.to is None:
                raise PyfuncsError("--to VERSION is needed with a routine name")
            result = deploying.switch_version(conn, args.routine, args.to)
        else:
            result = deploying.rollback(conn, label=args.label)
    _print_result(result)


def cmd_status(args: argparse.Namespace) -> None:
    with _connect(args) as conn:
        rows = deploying.status(conn)
    if not rows:
        print("no routines deployed")
    for r in rows:
        live = f"v{r['live_version']}" if r["live_version"] else "dropped"
        print(
            f"{r['schema_name']}.{r['name']:<28} {r['kind']:<9} live {live:<8} of "
            f"{r['versions']:<3} {(r['sha256'] or '')[:12]}  {r['source_file']}:{r['source_line']}"
            f"  {r['deployed_by']} {r['deployed_at']:%Y-%m-%d %H:%M:%S}"
        )


def cmd_check(args: argparse.Namespace) -> None:
    definitions = collect(args.target)
    for d in definitions:
        print(f"ok  {d.qualname}({d.identity_args})  {d.where}")


def cmd_realtime(args: argparse.Namespace) -> None:
    with _connect(args) as conn:
        if args.action == "prune":
            keep = datetime.timedelta(days=args.keep_days) if args.keep_days is not None else None
            print(f"pruned the changes of {realtime.prune(conn, keep)} transaction(s)")
            return
        if not args.tables:
            raise PyfuncsError(f"name the tables to {args.action}: pyfuncs realtime {args.action} "
                               "schema.table [...]")  # fmt: skip
        for table in args.tables:
            (realtime.enable if args.action == "enable" else realtime.disable)(conn, table)
            print(f"{args.action}d  {table}")


def cmd_serve(args: argparse.Namespace) -> None:
    import os

    from .auth import JwtVerifier
    from .gateway.config import GatewayConfig
    from .gateway.server import serve

    dsn = resolve_dsn(args.dsn)
    GatewayConfig.from_env(dsn, JwtVerifier.from_env())  # fail here, not in every worker
    os.environ["PYFUNCS_DSN"] = dsn  # what the workers' create_app() reads
    serve(args.host, args.port, args.workers, args.log_level, args.access_log)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyfuncs", description=__doc__)
    parser.add_argument("--dsn", help="database to use (default: PYFUNCS_DSN, DATABASE_URL, "
                        "or the embedded cluster)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="the embedded PostgreSQL under .pgdata/")
    db.add_argument("action", choices=["up", "down", "url"])
    db.set_defaults(fn=cmd_db)

    sub.add_parser("install", help="install or upgrade the core schema").set_defaults(
        fn=cmd_install
    )

    dep = sub.add_parser("deploy", help="deploy every routine of a module or file")
    dep.add_argument("target", help="module name (pkg.mod) or file path (path/to/mod.py)")
    dep.add_argument("--label", help="a name for this deployment (e.g. a release)")
    dep.add_argument("--no-notify", action="store_true",
                     help="do not send NOTIFY pgrst, 'reload schema'")  # fmt: skip
    dep.set_defaults(fn=cmd_deploy)

    rb = sub.add_parser("rollback", help="undo the last deployment, or switch one routine")
    rb.add_argument("routine", nargs="?", help="schema.name of one routine to switch")
    rb.add_argument("--to", type=int, help="the version to make live (with a routine)")
    rb.add_argument("--label", help="undo the deployment with this label")
    rb.set_defaults(fn=cmd_rollback)

    sub.add_parser("status", help="routines and their live versions").set_defaults(fn=cmd_status)

    chk = sub.add_parser("check", help="validate a module's routines without deploying")
    chk.add_argument("target")
    chk.set_defaults(fn=cmd_check)

    rt = sub.add_parser("realtime", help="capture tables' changes for the change feed")
    rt.add_argument("action", choices=["enable", "disable", "prune"])
    rt.add_argument("tables", nargs="*", help="schema.table names (enable, disable)")
    rt.add_argument("--keep-days", type=float,
                    help="prune: keep this many days (default: the configured retention)")  # fmt: skip
    rt.set_defaults(fn=cmd_realtime)

    srv = sub.add_parser("serve", help="run the realtime gateway (WebSocket and SSE)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--workers", type=int, default=1,
                     help="gateway processes sharing the port (each follows the feed)")  # fmt: skip
    srv.add_argument("--log-level", default="info")
    srv.add_argument("--access-log", action="store_true",
                     help="log every request (query strings, which may hold tokens, left out)")  # fmt: skip
    srv.set_defaults(fn=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except PyfuncsError as exc:
        print(f"pyfuncs: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
