"""Deploy routines as immutable versions, and undo deploys.

A deploy runs in one transaction: every routine of a module is installed, or none is. Each
routine whose definition changed gets a new version row (the exact DDL, source and signature,
never updated afterwards); a definition equal to an older version switches back to that
version instead of creating a copy; an unchanged one is left alone. Every deploy that changes
something is recorded with the versions it switched from and to, which is what `rollback`
(and an Alembic downgrade) replays.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from . import ahead, ddl
from .collect import collect
from .definition import Definition, reserved_schema
from .errors import DeployError, from_psycopg, printable
from .queries import query

Conn = psycopg.Connection[Any]
P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("pyfuncs.deploy")

Action = Literal["created", "updated", "restored", "unchanged", "dropped"]


@dataclass(frozen=True)
class Change:
    routine: str
    action: Action
    version: int | None
    previous: int | None = None


@dataclass(frozen=True)
class DeployResult:
    deployment_id: int | None
    changes: tuple[Change, ...]
    warnings: tuple[str, ...] = ()  # what went otherwise than asked (a NOTIFY not sent)

    @property
    def changed(self) -> bool:
        return any(c.action != "unchanged" for c in self.changes)


@contextmanager
def _errors(what: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        err = from_psycopg(exc)
        raise DeployError(f"{what} failed, nothing was changed: {err}") from exc


def fingerprint(d: Definition, statement: str) -> str:
    """A version's identity: the exact DDL plus what is applied around it (grants, comment)."""
    h = hashlib.sha256(statement.encode())
    h.update(json.dumps({"roles": sorted(d.options.roles), "doc": d.doc}).encode())
    return h.hexdigest()


def _row(conn: psycopg.Connection[Any], query_name: str, /, **params: Any) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query(query_name), params).fetchone()


def _rows(conn: psycopg.Connection[Any], query_name: str, /, **params: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query(query_name), params).fetchall()


# what every statement a deploy runs begins with (ddl.py and _apply make no other kind)
_DDL = ("CREATE OR REPLACE FUNCTION ", "CREATE OR REPLACE PROCEDURE ", "CREATE SCHEMA IF NOT ",
        "DROP FUNCTION ", "DROP PROCEDURE ", "GRANT ", "REVOKE ", "COMMENT ON ")  # fmt: skip


def _execute_ddl(conn: psycopg.Connection[Any], statement: sql.Composed | str) -> None:
    """One DDL statement, in the deploy's transaction, and nothing else: it must be of a kind
    a deploy makes (never a transaction command such as COMMIT, which would end the deploy
    part way), and it goes through the extended protocol (`binary` asks for it), which takes
    exactly one statement, so nothing in its text can smuggle in a second one."""
    text = statement if isinstance(statement, str) else statement.as_string(conn)
    if not text.startswith(_DDL):
        raise DeployError(f"refusing to run {text[:60]!r}: not a statement a deploy makes")
    conn.execute(text, binary=True)
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
        raise DeployError("a DDL statement ended the deploy's transaction")


def _refuse_reserved(schema: str, routine: str) -> None:
    if reserved_schema(schema):
        raise DeployError(
            f"{routine}: the schema {schema!r} is reserved (pyfuncs' own and PostgreSQL's "
            "system schemas cannot hold routines); nothing was changed: deploy into a schema of "
            "your application's"
        )


def _refuse_foreign(
    conn: psycopg.Connection[Any], schema: str, name: str, identity_args: str, where: str
) -> None:
    """CREATE OR REPLACE would silently take over a routine pyfuncs did not make (and a
    rollback would then drop it): refuse if one of that signature exists."""
    row = _row(conn, "routine_maker", schema=schema, name=name, identity_args=identity_args)
    if row is not None:
        kind = "procedure" if row["kind"] == "p" else "function"
        raise DeployError(
            f"{where}{schema}.{name}({identity_args}): a {kind} with this signature already "
            "exists and pyfuncs did not deploy it; nothing was changed (deploying would replace "
            "it): give the routine another name (name=...) or schema, or drop the existing "
            "one first if it is really to be replaced"
        )


def _refuse_taken_over(
    conn: psycopg.Connection[Any], current: dict[str, Any], schema: str, name: str,
    where: str = "",
) -> None:  # fmt: skip
    """The routine pyfuncs' records say is live must still be the one it made: another role
    (the schema's owner) may have dropped it and created its own under the same signature,
    which CREATE OR REPLACE would take over, keeping that role as its owner, with its grants
    (and a DROP would drop theirs). pyfuncs' routines are plpython3u routines of a superuser;
    refuse anything else. A routine that is gone is simply made again."""
    identity_args = current["identity_args"]
    row = _row(conn, "routine_maker", schema=schema, name=name, identity_args=identity_args)
    if row is None:
        return
    kind = "p" if current["kind"] == "procedure" else "f"
    if row["superuser"] and row["language"] == "plpython3u" and row["kind"] == kind:
        return
    raise DeployError(
        f"{where}{schema}.{name}({identity_args}): the routine in the database is not the one "
        f"pyfuncs deployed (its owner is {printable(row['owner'])}, its language "
        f"{printable(row['language'])}): someone dropped pyfuncs' and made their own; "
        "nothing was changed: drop that one first if pyfuncs' is to replace it"
    )


def _needs_drop(current: dict[str, Any] | None, kind: str, signature: dict[str, Any]) -> bool:
    """CREATE OR REPLACE cannot change argument types, the result type or the routine kind."""
    if current is None or current["live_version"] is None:
        return False
    old = current["signature"]
    return bool(
        current["kind"] != kind
        or current["identity_args"] != signature["identity_args"]
        or old["returns"] != signature["returns"]
        or old["out"] != signature["out"]
    )


def _apply(
    conn: psycopg.Connection[Any],
    current: dict[str, Any] | None,
    target: dict[str, Any],
    where: str = "",
) -> None:
    """Make the database routine match a catalog version: DDL, grants, comment, live pointer.
    A routine pyfuncs' records do not say it made is never replaced, nor one in a reserved
    schema made (`where` prefixes what says so)."""
    sig = target["signature"]
    kind, schema, name = sig["kind"], target["schema_name"], target["name"]
    _refuse_reserved(schema, f"{where}{schema}.{name}")
    replacing = current is not None and current["live_version"] is not None
    if replacing:
        assert current is not None
        _refuse_taken_over(conn, current, schema, name, where)
    if _needs_drop(current, kind, sig):
        _drop(conn, current, schema, name)
        replacing = False
    if not replacing:  # what is there now, pyfuncs' records say it made
        _refuse_foreign(conn, schema, name, target["identity_args"], where)
    _execute_ddl(conn, sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    _execute_ddl(conn, target["ddl"])
    ref = ddl.routine_ref(kind, schema, name, target["identity_args"])
    _execute_ddl(conn, sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(ref))
    old_roles = (
        set(current["signature"].get("roles", [])) if current and current["signature"] else set()
    )
    for role in sorted(old_roles - set(sig["roles"])):
        _execute_ddl(conn, sql.SQL("REVOKE ALL ON {} FROM {}").format(ref, sql.Identifier(role)))
    for role in sig["roles"]:
        # EXECUTE is useless without USAGE on the schema; USAGE alone exposes nothing
        _execute_ddl(conn, sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(schema), sql.Identifier(role)))  # fmt: skip
        _execute_ddl(conn, sql.SQL("GRANT EXECUTE ON {} TO {}").format(ref, sql.Identifier(role)))
    _execute_ddl(conn, sql.SQL("COMMENT ON {} IS {}").format(ref, sql.Literal(sig.get("doc"))))
    conn.execute(
        query("set_live"),
        {"version": target["version"], "kind": kind, "routine_id": target["routine_id"]},
    )


def _drop(
    conn: psycopg.Connection[Any], current: dict[str, Any] | None, schema: str, name: str
) -> None:
    if current is None or current["live_version"] is None:
        return
    _refuse_reserved(schema, f"{schema}.{name}")  # recorded by a pyfuncs that allowed it
    _refuse_taken_over(conn, current, schema, name)
    ref = ddl.routine_ref(current["kind"], schema, name, current["identity_args"])
    _execute_ddl(conn, sql.SQL("DROP {}").format(ref))


def _check_roles(conn: psycopg.Connection[Any], definitions: Sequence[Definition]) -> None:
    wanted = sorted({r for d in definitions for r in d.options.roles})
    missing = {row["role"] for row in _rows(conn, "missing_roles", roles=wanted)}
    if missing:
        lines = [
            f"  - {d.where}: {d.qualname} grants EXECUTE to "
            + ", ".join(sorted(set(d.options.roles) & missing))
            for d in definitions
            if set(d.options.roles) & missing
        ]
        raise DeployError(
            "these roles do not exist; create them first (CREATE ROLE name NOLOGIN) or fix "
            "roles=:\n" + "\n".join(lines)
        )


def _serialised(work: Callable[Concatenate[Conn, P], R]) -> Callable[Concatenate[Conn, P], R]:
    """A deploy, rollback or switch in the caller's transaction: under the deploy lock, so
    that they run one at a time, and with search_path pinned to pg_catalog while it runs (a
    database's or role's search_path could otherwise put other objects first), then given
    back to the caller's transaction as it was."""

    @functools.wraps(work)
    def serialised(conn: Conn, /, *args: P.args, **kwargs: P.kwargs) -> R:
        row = conn.execute(query("search_path")).fetchone()
        assert row is not None
        conn.execute(query("set_search_path"), {"path": "pg_catalog, pg_temp"})
        conn.execute(query("lock_deploys"))
        result = work(conn, *args, **kwargs)
        conn.execute(query("set_search_path"), {"path": row[0]})
        return result

    return serialised


@_serialised
def deploy_definitions(
    conn: psycopg.Connection[Any],
    definitions: Sequence[Definition],
    *,
    target: str,
    label: str | None = None,
    notify: bool = True,
) -> DeployResult:
    """Deploy inside the caller's transaction (no commit): the building block of `deploy`."""
    for d in definitions:
        _refuse_reserved(d.schema, f"{d.where}: {d.qualname}")
    _check_roles(conn, definitions)
    changes: list[Change] = []
    switched: list[tuple[int, int | None, int]] = []
    for d in definitions:
        statement = ddl.render(ddl.create_statement(d), conn)
        sha = fingerprint(d, statement)
        current = _row(conn, "live_routine", schema=d.schema, name=d.name)
        if current is not None and current["sha256"] == sha:
            changes.append(Change(d.qualname, "unchanged", current["live_version"]))
            continue
        if current is None:
            routine_id = _row(conn, "insert_routine", schema=d.schema, name=d.name, kind=d.kind)
            assert routine_id is not None
            current = {"id": routine_id["id"], "live_version": None, "kind": d.kind,
                       "identity_args": None, "signature": None, "sha256": None}  # fmt: skip
        signature = d.signature() | {
            "identity_args": d.identity_args,
            "roles": list(d.options.roles),
            "doc": d.doc,
        }
        existing = _row(conn, "version_by_sha", routine_id=current["id"], sha256=sha)
        action: Action
        if existing is not None:
            version, action = existing["version"], "restored"
        else:
            inserted = _row(
                conn, "insert_version",
                routine_id=current["id"], sha256=sha, identity_args=d.identity_args,
                signature=Jsonb(signature), source=d.source, source_file=d.file,
                source_line=d.line, ddl=statement,
            )  # fmt: skip
            assert inserted is not None
            version = inserted["version"]
            action = "created" if current["live_version"] is None else "updated"
        _apply(conn, current, {
            "routine_id": current["id"], "version": version, "schema_name": d.schema,
            "name": d.name, "identity_args": d.identity_args, "signature": signature,
            "ddl": statement,
        }, f"{d.where}: ")  # fmt: skip
        changes.append(Change(d.qualname, action, version, current["live_version"]))
        switched.append((current["id"], current["live_version"], version))
    _compile_ahead(conn, definitions)
    deployment_id = _record(conn, target, label, switched)
    warning = notify_schema_reload(conn) if switched and notify else None
    return DeployResult(deployment_id, tuple(changes), _warnings(warning))


def _compile_ahead(conn: psycopg.Connection[Any], definitions: Sequence[Definition]) -> None:
    """Store the routines' modules compiled for the runtime installed, when it is this
    pyfuncs' own (pyfuncs/ahead.py): their first call in a backend loads the code."""
    runtime = ahead.runtime_hashes()
    with conn.cursor() as cur:
        if dict(cur.execute(query("runtime_hashes")).fetchall()) != runtime:
            return  # (another runtime's backends would never read it)
        modules = sorted({(d.file, d.source) for d in definitions})
        for row in ahead.rows(modules, runtime):
            cur.execute(query("routine_code_put"), row)


def _warnings(*warnings: str | None) -> tuple[str, ...]:
    return tuple(w for w in warnings if w)


def _record(
    conn: psycopg.Connection[Any],
    target: str,
    label: str | None,
    switched: Sequence[tuple[int, int | None, int | None]],
) -> int | None:
    if not switched:
        return None
    row = _row(conn, "insert_deployment", label=label, target=target)
    assert row is not None
    for routine_id, from_version, to_version in switched:
        conn.execute(query("insert_change"), {
            "deployment_id": row["id"], "routine_id": routine_id,
            "from_version": from_version, "to_version": to_version,
        })  # fmt: skip
    return int(row["id"])


# Any role may LISTEN and then leave the NOTIFY queue unread (idle in a transaction) while
# it fills it, and a NOTIFY into a full queue fails the COMMIT: the deploy would fail with
# it. So, as the realtime wake-up, the reload notice is skipped when the queue is half full.
NOTIFY_QUEUE_LIMIT = 0.5


def _queue_usage(conn: psycopg.Connection[Any]) -> float:
    row = conn.execute("SELECT pg_catalog.pg_notification_queue_usage()").fetchone()
    return float(row[0]) if row else 0.0


def notify_schema_reload(conn: psycopg.Connection[Any]) -> str | None:
    """Tell PostgREST-style schema caches to reload (delivered when the transaction commits),
    unless the NOTIFY queue is half full: then the notice is not sent, so that the commit
    cannot fail for it, and the warning returned (and logged) says so."""
    usage = _queue_usage(conn)
    if usage >= NOTIFY_QUEUE_LIMIT:
        warning = (
            f"NOTIFY pgrst, 'reload schema' was not sent: the NOTIFY queue is {usage:.0%} "
            "full (a session that LISTENs without reading holds it; see pg_stat_activity), "
            "and a full one would fail this commit; reload PostgREST's schema cache by hand"
        )
        log.warning("%s", warning)
        return warning
    conn.execute("NOTIFY pgrst, 'reload schema'")
    return None


def deploy(
    conn: psycopg.Connection[Any],
    target: str | ModuleType,
    *,
    label: str | None = None,
    notify: bool = True,
) -> DeployResult:
    """Deploy every routine of a module (dotted name, file path or module), all or nothing.
    The module is collected first (pyfuncs.collect: never executed here), before the
    database is touched."""
    name = target if isinstance(target, str) else target.__name__
    return deploy_collected(conn, collect(target), target=name, label=label, notify=notify)


def deploy_collected(
    conn: psycopg.Connection[Any],
    definitions: Sequence[Definition],
    *,
    target: str,
    label: str | None = None,
    notify: bool = True,
) -> DeployResult:
    """Deploy collected definitions in a transaction of their own, all or nothing."""
    with _errors(f"deploy of {target}"), conn.transaction():
        return deploy_definitions(conn, definitions, target=target, label=label, notify=notify)


@_serialised
def rollback_deployment(
    conn: psycopg.Connection[Any],
    *,
    label: str | None = None,
    notify: bool = True,
    missing_ok: bool = False,
) -> DeployResult:
    """Undo the newest deployment still in effect (or the one labelled `label`), in the
    caller's transaction: every routine it switched goes back to its previous version."""
    deployment = _row(conn, "deployment_to_undo", label=label)
    if deployment is None and missing_ok:
        return DeployResult(None, ())
    if deployment is None:
        what = f"labelled {label!r}" if label else "in effect"
        raise DeployError(f"there is no deployment {what} to roll back")
    changes: list[Change] = []
    for ch in _rows(conn, "deployment_changes", deployment_id=deployment["id"]):
        qualname = f"{ch['schema_name']}.{ch['name']}"
        if ch["live_version"] != ch["to_version"]:
            raise DeployError(
                f"{qualname} is at version {ch['live_version']}, not {ch['to_version']} as "
                f"deployment {deployment['id']} left it; roll back the later deployments first"
            )
        _switch(conn, ch["routine_id"], ch["from_version"])
        action: Action = "dropped" if ch["from_version"] is None else "restored"
        changes.append(Change(qualname, action, ch["from_version"], ch["to_version"]))
    conn.execute(query("mark_rolled_back"), {"deployment_id": deployment["id"]})
    warning = notify_schema_reload(conn) if notify else None
    return DeployResult(int(deployment["id"]), tuple(changes), _warnings(warning))


def _switch(conn: psycopg.Connection[Any], routine_id: int, version: int | None) -> None:
    live = _row(conn, "routine_by_id", routine_id=routine_id)
    assert live is not None
    if version is None:
        _drop(conn, live, live["schema_name"], live["name"])
        conn.execute(query("set_live"), {"version": None, "kind": None, "routine_id": routine_id})
        return
    target = _row(conn, "get_version", routine_id=routine_id, version=version)
    assert target is not None
    _apply(conn, live, target | {"routine_id": routine_id})


def rollback(
    conn: psycopg.Connection[Any], *, label: str | None = None, notify: bool = True
) -> DeployResult:
    """`rollback_deployment` in its own transaction."""
    with _errors("rollback"), conn.transaction():
        return rollback_deployment(conn, label=label, notify=notify)


def switch_version(
    conn: psycopg.Connection[Any], routine: str, version: int, *, notify: bool = True
) -> DeployResult:
    """Make an existing version of one routine live again (instant rollback of one routine)."""
    with _errors(f"switch of {routine}"), conn.transaction():
        return _switch_version(conn, routine, version, notify=notify)


@_serialised
def _switch_version(
    conn: psycopg.Connection[Any], routine: str, version: int, *, notify: bool
) -> DeployResult:
    schema, _, name = routine.rpartition(".")
    current = _row(conn, "live_routine", schema=schema or "public", name=name)
    if current is None:
        raise DeployError(f"no routine {routine} in the catalog; see `pyfuncs status`")
    if _row(conn, "get_version", routine_id=current["id"], version=version) is None:
        raise DeployError(f"{routine} has no version {version}; see `pyfuncs status`")
    _switch(conn, current["id"], version)
    deployment_id = _record(conn, routine, f"switch to v{version}",
                            [(current["id"], current["live_version"], version)])  # fmt: skip
    warning = notify_schema_reload(conn) if notify else None
    return DeployResult(
        deployment_id,
        (Change(routine, "restored", version, current["live_version"]),),
        _warnings(warning),
    )


def status(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return _rows(conn, "status")
