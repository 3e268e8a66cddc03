"""The `pyfuncs` command line.

Every command takes `--dsn` (before or after its name), answers bad input, a database that
cannot be reached and a missing `pyfuncs install` with one line saying what to do, and never
shows a traceback (PYFUNCS_DEBUG=1 shows one for an unexpected error).
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import psycopg
from psycopg import sql

from . import capture, migrate, realtime
from . import deploy as deploying
from ._pg.backstop import ENTRY_LIBRARY
from ._pg.backstop import LIBRARY as BACKSTOP_LIBRARY
from .collect import collect
from .config import connect, resolve_dsn
from .definition import valid_name
from .embedded import PRELOAD, Cluster
from .errors import ConfigError, PyfuncsError, from_psycopg, one_line, printable
from .queries import query

Connection = psycopg.Connection[tuple[Any, ...]]


def _connect(args: argparse.Namespace, *, installed: bool = True) -> Connection:
    """A connection to the database the command names; checks that pyfuncs is installed
    there (at this version's schema) unless `installed` is False."""
    return _connect_to(resolve_dsn(args.dsn), installed=installed)


def _connect_to(dsn: str, *, installed: bool = True) -> Connection:
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
    for warning in result.warnings:
        print(f"pyfuncs: warning: {warning}", file=sys.stderr)


def cmd_db(args: argparse.Namespace) -> None:
    cluster = Cluster.default()
    try:
        if args.action == "up":
            print(cluster.up())
        elif args.action == "url":
            print(cluster.url())
        else:
            cluster.down()
            print("stopped")
    except OSError as exc:  # .pgdata is a file, or not ours to write, say
        where = f" ({printable(str(exc.filename))})" if exc.filename else ""
        raise ConfigError(
            f"the embedded cluster cannot be used: {exc.strerror or exc}{where}; it lives in "
            ".pgdata/ under the working directory, which must be a directory pyfuncs may write"
        ) from None


def cmd_install(args: argparse.Namespace) -> None:
    with _connect(args, installed=False) as conn:  # a clear answer if it cannot be reached
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if not (row.fetchone() or (False,))[0]:
            raise ConfigError(
                "pyfuncs install needs a superuser (it creates the untrusted plpython3u "
                "language and the functions routines load with); connect as one with --dsn"
            )
        libdir, found, entries, preloads = conn.execute(
            "SELECT setting, (pg_stat_file(setting || '/' || %s, true)).size IS NOT NULL,"
            " (pg_stat_file(setting || '/' || %s, true)).size IS NOT NULL,"
            " current_setting('shared_preload_libraries') FROM pg_config"
            " WHERE name = 'PKGLIBDIR'", [BACKSTOP_LIBRARY, ENTRY_LIBRARY],
        ).fetchone() or ("?", False, False, "")  # fmt: skip
    revision = migrate.install(resolve_dsn(args.dsn))
    print(f"pyfuncs core schema at revision {revision}, runtime installed")
    if not found:
        print(
            f"note: {BACKSTOP_LIBRARY} is not in {libdir} on the database server, so a routine "
            "stuck in one call of C code cannot be stopped; build it there with `make backstop` "
            '(README "Stopping routines")'
        )
    if not entries:
        print(
            f"note: {ENTRY_LIBRARY} is not in {libdir} on the database server, so each call's "
            "entry and each query of a routine's run in the runtime's Python (slower); build "
            'it there with `make entry` (README "The entry library")'
        )
    if not _preloaded(preloads):
        print(
            f"note: {PRELOAD} is not in shared_preload_libraries, so each new connection's "
            "first call starts Python itself (8-15 ms more); install it with `make preload` "
            'and list it there (README "The first call")'
        )


def _preloaded(setting: str) -> bool:
    """Whether shared_preload_libraries (its text) lists the preload library, by its name,
    under $libdir or with the file's suffix."""
    names = (name.strip().strip('"').removeprefix("$libdir/") for name in setting.split(","))
    return any(name in (PRELOAD, f"{PRELOAD}.so") for name in names)


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
    if args.action in ("mode", "status", "capture"):
        _capture_command(args)
        return
    if args.action == "prune":
        if args.tables:
            raise ConfigError("prune takes no table names: pyfuncs realtime prune [--keep-days N]")
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


def _capture_command(args: argparse.Namespace) -> None:
    """`realtime mode wal|trigger`, `realtime status`, `realtime capture [--follow]`."""
    if args.action == "mode":
        if len(args.tables) != 1 or args.tables[0] not in ("wal", "trigger"):
            raise ConfigError("say which mode: pyfuncs realtime mode wal|trigger")
    elif args.tables:
        raise ConfigError(f"pyfuncs realtime {args.action} takes no table names")
    if args.action == "capture" and args.follow:
        import asyncio
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        dsn = resolve_dsn(args.dsn)
        _connect_to(dsn).close()
        print("capturing from the WAL; stop with Ctrl-C", flush=True)
        asyncio.run(capture.Capture(dsn).run())
        return
    with _connect(args) as conn:
        conn.autocommit = True
        if args.action == "mode":
            capture.set_mode(conn, args.tables[0])
            print(f"realtime captures with {args.tables[0]}")
        elif args.action == "capture":
            # (in trigger mode: changes given their positions)
            print(f"captured {capture.capture(conn)} change(s)")
        else:
            st = capture.status(conn)
            print(f"mode            {st.mode}")
            print(f"tables          {st.tables}")
            if st.mode == "wal" or st.slot_exists:
                slot = f"{st.slot} ({st.wal_status})" if st.slot_exists else f"{st.slot}, missing"
                print(f"slot            {slot}")
                if st.retained_bytes is not None:
                    print(f"WAL held        {st.retained_bytes} bytes "
                          f"(max_slot_wal_keep_size = {st.max_slot_wal_keep_size})")  # fmt: skip
                    print(f"behind          {st.lag_bytes} bytes")
            else:
                print(f"no position yet {st.unpositioned} transaction(s)")
            alive = f"yes (backend {st.consumer_pid})" if st.consumer_pid else "no"
            print(f"consumer alive  {alive}")
            if st.wal_status == "lost":
                print("the slot was invalidated: the next capture makes a new one, and "
                      "consumers resync")  # fmt: skip


# what README "Deploying it" asks the role of the gateway's feed sessions for
_GATEWAY_GRANTS = (
    ("SELECT", "pyfuncs.realtime_state"),
    ("SELECT", "pyfuncs.realtime_commit"), ("SELECT", "pyfuncs.realtime_change"),
    ("INSERT", "pyfuncs.realtime_audit"),
)  # fmt: skip


def _check_gateway_role(conn: Connection) -> None:
    privileges, names = zip(*_GATEWAY_GRANTS, strict=True)
    params = {"privileges": list(privileges), "names": list(names)}
    missing = conn.execute(query("gateway_missing_grants"), params).fetchall()
    if missing:
        row = conn.execute("SELECT current_user").fetchone()
        role = sql.Identifier(row[0] if row else "role").as_string(conn)
        lacking: dict[str, list[str]] = {}
        for privilege, name in missing:
            lacking.setdefault(privilege, []).append(name)
        grants = "; ".join(f"GRANT {p} ON {', '.join(n)} TO {role}" for p, n in lacking.items())
        lacks = ", ".join(f"{p} on {', '.join(n)}" for p, n in lacking.items())
        raise ConfigError(
            f"the gateway's feed role {role} (PYFUNCS_GATEWAY_FEED_DSN, by default the --dsn "
            f"role) lacks {lacks}, which it needs to follow the change "
            f"feed; as a superuser, run: {grants} (README: Deploying it)"
        )


def _check_address(host: str, port: int) -> None:
    """The address the gateway will listen on: one line now rather than uvicorn's error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--host {printable(host)!r} is not an address to listen on "
                          f"({exc}); use an IP address or a host name") from None  # fmt: skip
    _, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {printable(host)}:{port} ({exc.strerror}); "
                              "choose another --host or --port") from None  # fmt: skip


def cmd_serve(args: argparse.Namespace) -> None:
    from .auth import JwtVerifier
    from .gateway.config import GatewayConfig
    from .gateway.server import serve

    dsn = resolve_dsn(args.dsn)
    if args.allowed_origin:  # what the workers' create_app() reads, like the DSN
        os.environ["PYFUNCS_GATEWAY_ALLOWED_ORIGINS"] = ",".join(args.allowed_origin)
    config = GatewayConfig.from_env(dsn, JwtVerifier.from_env())  # here, not in every worker
    _connect_to(dsn).close()
    with _connect_to(config.feed_dsn) as conn:  # the feed sessions' role reads the feed
        _check_gateway_role(conn)
    _check_address(args.host, args.port)
    os.environ["PYFUNCS_DSN"] = dsn  # what the workers' create_app() reads
    serve(args.host, args.port, args.workers, args.log_level, args.access_log)


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake on the command line is one line, not a usage screen."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _whole(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argument type: a whole number from `low` to `high` (no sign tricks, no floats, no
    nan or inf), or one line saying which numbers are."""

    def parse(text: str) -> int:
        stripped = text.strip()
        if stripped.isascii() and stripped.isdigit() and len(stripped) <= 12:
            value = int(stripped)
            if low <= value <= high:
                return value
        raise argparse.ArgumentTypeError(
            f"{printable(text)[:40]!r} is not {what}: give a whole number from {low} to {high}"
        )

    parse.__name__ = what  # what argparse names in its own messages
    return parse


_version = _whole(1, 2**31 - 1, "a version number")
_port = _whole(1, 65535, "a port number")
_workers = _whole(1, 64, "a number of workers")
_days = _whole(0, 36500, "a number of days")


def _label(text: str) -> str:
    if not text or len(text) > 200 or not text.isprintable():
        raise argparse.ArgumentTypeError(
            f"{printable(text)[:40]!r} is not a label: use up to 200 printable characters"
        )
    return text


def _routine(text: str) -> str:
    parts = text.split(".")
    if len(parts) > 2 or not all(valid_name(part) for part in parts):
        raise argparse.ArgumentTypeError(
            f"{printable(text)[:80]!r} is not a routine name: give schema.name, as "
            "`pyfuncs status` lists them"
        )
    return text


def _table(text: str) -> str:
    if not text or len(text) > 500 or not text.isprintable():  # lone surrogates are not
        raise argparse.ArgumentTypeError(
            f"{printable(text)[:80]!r} is not a table name: give schema.table"
        )
    return text


def _host(text: str) -> str:
    if not text or len(text) > 253 or not text.isprintable() or not text.isascii():
        raise argparse.ArgumentTypeError(f"{printable(text)[:40]!r} is not a host to listen on")
    return text


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
    dep.add_argument("--label", type=_label, help="a name for this deployment (e.g. a release)")
    dep.add_argument("--no-notify", action="store_true",
                     help="do not send NOTIFY pgrst, 'reload schema'")  # fmt: skip

    rb = command("rollback", cmd_rollback, "undo the last deployment, or switch one routine")
    rb.add_argument(
        "routine", nargs="?", type=_routine, help="schema.name of one routine to switch"
    )
    rb.add_argument("--to", type=_version, help="the version to make live (with a routine)")
    rb.add_argument("--label", type=_label, help="undo the deployment with this label")

    command("status", cmd_status, "routines and their live versions")

    chk = command("check", cmd_check, "validate a module's routines without deploying")
    chk.add_argument("target", help="module name (pkg.mod) or file path (path/to/mod.py)")

    rt = command("realtime", cmd_realtime, "capture tables' changes for the change feed")
    rt.add_argument("action", choices=["enable", "disable", "prune", "mode", "status", "capture"])
    rt.add_argument("tables", nargs="*", type=_table,
                    help="schema.table names (enable, disable); wal or trigger (mode)")  # fmt: skip
    rt.add_argument("--follow", action="store_true",
                    help="capture: keep capturing from the WAL (the gateway does too)")  # fmt: skip
    rt.add_argument("--keep-days", type=_days,
                    help="prune: keep this many days (default: the configured retention)")  # fmt: skip

    srv = command("serve", cmd_serve, "run the realtime gateway (WebSocket and SSE)")
    srv.add_argument("--host", type=_host, default="127.0.0.1")
    srv.add_argument("--port", type=_port, default=8000)
    srv.add_argument("--workers", type=_workers, default=1,
                     help="gateway processes sharing the port (each follows the feed)")  # fmt: skip
    srv.add_argument("--log-level", default="info",
                     choices=["critical", "error", "warning", "info", "debug", "trace"])  # fmt: skip
    srv.add_argument("--access-log", action="store_true",
                     help="log every request (query strings, which may hold tokens, left out)")  # fmt: skip
    srv.add_argument("--allowed-origin", action="append", metavar="ORIGIN",
                     help="an origin (https://app.example) whose pages may use the gateway: "
                          "CORS and WebSocket Origin; repeat for several, * for any (default: "
                          "PYFUNCS_GATEWAY_ALLOWED_ORIGINS)")  # fmt: skip
    return parser


MAX_MESSAGE = 64 << 10  # characters of an error report (a module's problems are listed)


def _bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE:
        return message
    return f"{message[:MAX_MESSAGE]}\n... (cut: {len(message) - MAX_MESSAGE} more characters)"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except PyfuncsError as exc:
        print(f"pyfuncs: {_bounded(str(exc))}", file=sys.stderr)
        return 1
    except RecursionError:  # whatever was given nests deeper than anything is checked to
        print("pyfuncs: the input nests too deeply to be processed; simplify it",
              file=sys.stderr)  # fmt: skip
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
