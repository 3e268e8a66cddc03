"""The `pyfuncs` command line.

Every command takes `--dsn` (before or after its name), answers bad input, a database that
cannot be reached and a missing `pyfuncs install` with one line saying what to do, and never
shows a traceback (PYFUNCS_DEBUG=1 shows one for an unexpected error).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

import psycopg

from . import deploy as deploying
from . import migrate, realtime
from .collect import collect
from .config import connect, resolve_dsn
from .embedded import Cluster
from .errors import ConfigError, PyfuncsError, from_psycopg, one_line

Connection = psycopg.Connection[tuple[Any, ...]]


def _connect(args: argparse.Namespace, *, installed: bool = True) -> Connection:
    """A connection to the database the command names; checks that pyfuncs is installed
    there (at this version's schema) unless `installed` is False."""
    dsn = resolve_dsn(args.dsn)
    try:
        conn = connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise PyfuncsError(
            f"cannot connect to the database ({one_line(str(exc))}); check --dsn, "
            "PYFUNCS_DSN or DATABASE_URL, or start the embedded one with `pyfuncs db up`"
        ) from None
    if installed:
        try:
            _require_installed(conn)
        except BaseException:
            conn.close()
            raise
    return conn


def _require_installed(conn: Connection) -> None:
    row = conn.execute(
        "SELECT pg_catalog.to_regclass('pyfuncs.routine') IS NOT NULL, "
        "pg_catalog.to_regclass('public.pyfuncs_alembic_version') IS NOT NULL"
    ).fetchone()
    if not (row and row[0] and row[1]):
        raise PyfuncsError("pyfuncs is not installed in this database; run `pyfuncs install`")
    try:
        cur = conn.execute("SELECT version_num FROM public.pyfuncs_alembic_version")
    except psycopg.errors.InsufficientPrivilege:
        return  # a login role that may not read it (the gateway's, say): installed is enough
    revision = cur.fetchone()
    if revision is None:
        raise PyfuncsError("pyfuncs is not installed in this database; run `pyfuncs install`")
    if revision[0] != migrate.head_revision():
        raise PyfuncsError(
            f"this database has the pyfuncs schema {revision[0]}, this pyfuncs needs "
            f"{migrate.head_revision()}; run `pyfuncs install` to upgrade it"
        )


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
    with _connect(args, installed=False) as conn:  # a clear answer if it cannot be reached
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if not (row.fetchone() or (False,))[0]:
            raise ConfigError(
                "pyfuncs install needs a superuser (it creates the untrusted plpython3u "
                "language and the functions routines load with); connect as one with --dsn"
            )
    revision = migrate.install(resolve_dsn(args.dsn))
    print(f"pyfuncs core schema at revision {revision}, runtime installed")


def cmd_deploy(args: argparse.Namespace) -> None:
    definitions = collect(args.target)  # the module is checked before the database is asked
    with _connect(args) as conn:
        result = deploying.deploy_collected(
            conn, definitions, target=args.target, label=args.label, notify=not args.no_notify
        )
    _print_result(result)


def cmd_rollback(args: argparse.Namespace) -> None:
    if args.routine and args.to is None:
        raise ConfigError(f"say which version: pyfuncs rollback {args.routine} --to VERSION")
    if args.to is not None and not args.routine:
        raise ConfigError("--to needs a routine: pyfuncs rollback schema.name --to VERSION")
    with _connect(args) as conn:
        if args.routine:
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
    if args.action == "prune":
        if args.tables:
            raise ConfigError("prune takes no table names: pyfuncs realtime prune [--keep-days N]")
        if args.keep_days is not None and args.keep_days < 0:
            raise ConfigError("--keep-days must be 0 or more")
    elif not args.tables:
        raise ConfigError(f"name the tables to {args.action}: pyfuncs realtime {args.action} "
                          "schema.table [...]")  # fmt: skip
    with _connect(args) as conn:
        if args.action == "prune":
            keep = datetime.timedelta(days=args.keep_days) if args.keep_days is not None else None
            print(f"pruned the changes of {realtime.prune(conn, keep)} transaction(s)")
            return
        for table in args.tables:
            # the command's session searches pg_catalog only (config.connect)
            qualified = table if "." in table else f"public.{table}"
            (realtime.enable if args.action == "enable" else realtime.disable)(conn, qualified)
            print(f"{args.action}d  {table}")


def cmd_serve(args: argparse.Namespace) -> None:
    from .auth import JwtVerifier
    from .gateway.config import GatewayConfig
    from .gateway.server import serve

    dsn = resolve_dsn(args.dsn)
    GatewayConfig.from_env(dsn, JwtVerifier.from_env())  # fail here, not in every worker
    _connect(args).close()
    os.environ["PYFUNCS_DSN"] = dsn  # what the workers' create_app() reads
    serve(args.host, args.port, args.workers, args.log_level, args.access_log)


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake on the command line is one line, not a usage screen."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyfuncs", description=__doc__)
    dsn_help = "database to use (default: PYFUNCS_DSN, DATABASE_URL, or the embedded cluster)"
    parser.add_argument("--dsn", help=dsn_help)
    # --dsn after the command too; SUPPRESS keeps one given before the command
    common = _Parser(add_help=False)
    common.add_argument("--dsn", default=argparse.SUPPRESS, help=dsn_help)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, parents=[common])
        p.set_defaults(fn=fn)
        return p

    db = command("db", cmd_db, "the embedded PostgreSQL under .pgdata/")
    db.add_argument("action", choices=["up", "down", "url"])

    command("install", cmd_install, "install or upgrade the core schema")

    dep = command("deploy", cmd_deploy, "deploy every routine of a module or file")
    dep.add_argument("target", help="module name (pkg.mod) or file path (path/to/mod.py)")
    dep.add_argument("--label", help="a name for this deployment (e.g. a release)")
    dep.add_argument("--no-notify", action="store_true",
                     help="do not send NOTIFY pgrst, 'reload schema'")  # fmt: skip

    rb = command("rollback", cmd_rollback, "undo the last deployment, or switch one routine")
    rb.add_argument("routine", nargs="?", help="schema.name of one routine to switch")
    rb.add_argument("--to", type=_positive, help="the version to make live (with a routine)")
    rb.add_argument("--label", help="undo the deployment with this label")

    command("status", cmd_status, "routines and their live versions")

    chk = command("check", cmd_check, "validate a module's routines without deploying")
    chk.add_argument("target", help="module name (pkg.mod) or file path (path/to/mod.py)")

    rt = command("realtime", cmd_realtime, "capture tables' changes for the change feed")
    rt.add_argument("action", choices=["enable", "disable", "prune"])
    rt.add_argument("tables", nargs="*", help="schema.table names (enable, disable)")
    rt.add_argument("--keep-days", type=float,
                    help="prune: keep this many days (default: the configured retention)")  # fmt: skip

    srv = command("serve", cmd_serve, "run the realtime gateway (WebSocket and SSE)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=_positive, default=8000)
    srv.add_argument("--workers", type=_positive, default=1,
                     help="gateway processes sharing the port (each follows the feed)")  # fmt: skip
    srv.add_argument("--log-level", default="info",
                     choices=["critical", "error", "warning", "info", "debug", "trace"])  # fmt: skip
    srv.add_argument("--access-log", action="store_true",
                     help="log every request (query strings, which may hold tokens, left out)")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except PyfuncsError as exc:
        print(f"pyfuncs: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:  # what no command turned into a PyfuncsError
        print(f"pyfuncs: {one_line(str(from_psycopg(exc)))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("PYFUNCS_DEBUG"):
            traceback.print_exc()
        print(f"pyfuncs: unexpected error: {type(exc).__name__}: {one_line(str(exc))} "
              "(PYFUNCS_DEBUG=1 shows where)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
