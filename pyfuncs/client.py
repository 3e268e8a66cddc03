"""Typed clients over psycopg 3: call routines by their Python object or by name.

```python
pf = Client(dsn, jwt=JwtVerifier(secret=...))
rows = pf.call(sales_leaderboard, limit=5)              # -> list[LeaderRow]
me = pf.as_user(token)                                  # verified now; RLS applies
stats = me.call("api.dashboard_stats")
pf.options(isolation="serializable", retries=5).call(create_student, ...)
with pf.transaction() as tx:                            # several calls, one transaction
    tx.call(...)
pf.run(lambda tx: ..., isolation="serializable")        # retried as a whole
```

Every call runs in its own transaction unless it is made on a `Session` from `transaction()`.
Serialization failures and deadlocks are retried with exponential backoff and jitter when
`retries` allows; every other error is raised as a pyfuncs exception (`errors.from_psycopg`).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Self, TypeVar

import psycopg
from psycopg import IsolationLevel
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from .auth import Identity, JwtVerifier
from .callplan import Signature, plan, signature_of
from .config import resolve_dsn
from .errors import (
    RETRYABLE_SQLSTATES,
    ArgumentError,
    ConfigError,
    PyfuncsError,
    UndefinedRoutine,
    from_psycopg,
)
from .queries import query

T = TypeVar("T")
Isolation = Literal["read committed", "repeatable read", "serializable"]
Routine = Callable[..., Any] | str

_ISOLATION = {
    "read committed": IsolationLevel.READ_COMMITTED,
    "repeatable read": IsolationLevel.REPEATABLE_READ,
    "serializable": IsolationLevel.SERIALIZABLE,
}


@dataclass(frozen=True)
class CallOptions:
    isolation: Isolation | None = None
    retries: int = 0
    backoff: float = 0.05
    identity: Identity | None = None

    def __post_init__(self) -> None:
        if self.isolation is not None and self.isolation not in _ISOLATION:
            raise ConfigError(f"isolation={self.isolation!r}: use one of {sorted(_ISOLATION)}")
        if self.retries < 0:
            raise ConfigError("retries must be >= 0")

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter, capped at two seconds."""
        return float(random.uniform(0, min(2.0, self.backoff * 2**attempt)))


def _split(name: str) -> tuple[str, str]:
    schema, _, routine = name.rpartition(".")
    return schema or "public", routine


def _by_name(name: str) -> dict[str, str]:
    schema, routine = _split(name)
    return {"schema": schema, "name": routine}


def _call_error(exc: psycopg.Error, routine: Routine, signatures: _Signatures) -> PyfuncsError:
    err = from_psycopg(exc)
    if isinstance(err, UndefinedRoutine) and isinstance(routine, str):
        signatures.forget(routine)  # redeployed with another signature: read it again next time
    return err


class _Signatures:
    """Signatures of routines called by name, read from the catalog once per client."""

    def __init__(self) -> None:
        self._cache: dict[str, Signature] = {}

    def of_object(self, routine: Callable[..., Any]) -> Signature:
        key = f"{routine.__module__}.{routine.__qualname__}"
        sig = self._cache.get(key)
        if sig is None:
            sig = self._cache[key] = signature_of(routine)
        return sig

    def cached(self, name: str) -> Signature | None:
        return self._cache.get(name)

    def store(self, name: str, row: tuple[Any, ...] | None) -> Signature:
        if row is None:
            raise ArgumentError(f"no routine named {name!r} is deployed; see `pyfuncs status`")
        sig = self._cache[name] = Signature.from_json(*_split(name), row[0])
        return sig

    def forget(self, name: str) -> None:
        self._cache.pop(name, None)


# --- sync -------------------------------------------------------------------------------


class Session:
    """Calls on one connection inside one transaction (from `Client.transaction()`)."""

    def __init__(self, conn: psycopg.Connection[Any], signatures: _Signatures) -> None:
        self.connection = conn
        self._signatures = signatures

    def _signature(self, routine: Routine) -> Signature:
        if not isinstance(routine, str):
            return self._signatures.of_object(routine)
        return self._signatures.cached(routine) or self._signatures.store(
            routine, self.connection.execute(query("live_signature"), _by_name(routine)).fetchone()
        )

    def call(self, routine: Routine, /, *args: Any, **kwargs: Any) -> Any:
        """Call a routine; returns its typed result. Raises pyfuncs errors."""
        p = plan(self._signature(routine), args, kwargs)
        try:
            with self.connection.cursor(row_factory=dict_row) as cur:
                cur.execute(p.statement, p.params)
                rows = cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise _call_error(exc, routine, self._signatures) from exc
        return p.read(rows)


class _ClientBase:
    """What both clients share: the pool, the JWT verifier, call options, known signatures."""

    def __init__(
        self, pool: Any, jwt: JwtVerifier | None, options: CallOptions | None = None
    ) -> None:
        self.pool = pool
        self.jwt = jwt
        self._options = options or CallOptions()
        self._signatures = _Signatures()

    def options(self, **changes: Any) -> Self:
        """A client sharing this pool with other options (isolation, retries, backoff)."""
        derived = copy.copy(self)
        derived._options = dataclasses.replace(self._options, **changes)
        return derived

    def as_user(self, token: str) -> Self:
        """A client whose calls run as the token's role with its claims. Verified here."""
        if self.jwt is None:
            raise ConfigError("as_user needs a JwtVerifier: Client(..., jwt=JwtVerifier(...))")
        return self.options(identity=self.jwt.verify(token))

    def as_identity(self, identity: Identity) -> Self:
        return self.options(identity=identity)

    def _retry_delay(self, exc: Exception, attempt: int) -> float | None:
        """Seconds to wait before retrying after `exc`, or None to give up."""
        cause = exc.__cause__
        retryable = isinstance(cause, psycopg.Error) and cause.sqlstate in RETRYABLE_SQLSTATES
        if not retryable or attempt >= self._options.retries:
            return None
        return self._options.delay(attempt)


class Client(_ClientBase):
    """A pool of connections and the options calls run with. Cheap to derive (`options`)."""

    def __init__(
        self,
        conninfo: str | None = None,
        *,
        pool: ConnectionPool | None = None,
        jwt: JwtVerifier | None = None,
        min_size: int = 1,
        max_size: int = 10,
    ) -> None:
        if pool is None:
            pool = ConnectionPool(resolve_dsn(conninfo), min_size=min_size, max_size=max_size,
                                  open=True)  # fmt: skip
        super().__init__(pool, jwt)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction with this client's isolation level and identity."""
        with self.pool.connection() as conn:
            conn.isolation_level = _ISOLATION.get(self._options.isolation or "")
            try:
                with conn.transaction():
                    if self._options.identity is not None:
                        conn.execute(query("set_identity"), self._options.identity.settings())
                    yield Session(conn, self._signatures)
            except psycopg.Error as exc:
                raise from_psycopg(exc) from exc

    def run(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in a transaction, retrying it whole on serialization failures/deadlocks."""
        attempt = 0
        while True:
            try:
                with self.transaction() as tx:
                    return fn(tx)
            except Exception as exc:
                delay = self._retry_delay(exc, attempt)
                if delay is None:
                    raise
                time.sleep(delay)
                attempt += 1

    def call(self, routine: Routine, /, *args: Any, **kwargs: Any) -> Any:
        """Call a routine in its own transaction; returns its typed result."""
        return self.run(lambda tx: tx.call(routine, *args, **kwargs))

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- async ------------------------------------------------------------------------------


class AsyncSession:
    """The async twin of `Session`."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], signatures: _Signatures) -> None:
        self.connection = conn
        self._signatures = signatures

    async def _signature(self, routine: Routine) -> Signature:
        if not isinstance(routine, str):
            return self._signatures.of_object(routine)
        cached = self._signatures.cached(routine)
        if cached is not None:
            return cached
        cur = await self.connection.execute(query("live_signature"), _by_name(routine))
        return self._signatures.store(routine, await cur.fetchone())

    async def call(self, routine: Routine, /, *args: Any, **kwargs: Any) -> Any:
        p = plan(await self._signature(routine), args, kwargs)
        try:
            async with self.connection.cursor(row_factory=dict_row) as cur:
                await cur.execute(p.statement, p.params)
                rows = await cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise _call_error(exc, routine, self._signatures) from exc
        return p.read(rows)


class AsyncClient(_ClientBase):
    """The async twin of `Client`, over psycopg_pool.AsyncConnectionPool.

    Create it inside a running event loop, then `await client.open()` (or `async with`).
    """

    def __init__(
        self,
        conninfo: str | None = None,
        *,
        pool: AsyncConnectionPool | None = None,
        jwt: JwtVerifier | None = None,
        min_size: int = 1,
        max_size: int = 10,
    ) -> None:
        if pool is None:
            pool = AsyncConnectionPool(resolve_dsn(conninfo), min_size=min_size,
                                       max_size=max_size, open=False)  # fmt: skip
        super().__init__(pool, jwt)

    async def open(self) -> AsyncClient:
        await self.pool.open()
        return self

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.pool.connection() as conn:
            await conn.set_isolation_level(_ISOLATION.get(self._options.isolation or ""))
            try:
                async with conn.transaction():
                    if self._options.identity is not None:
                        await conn.execute(query("set_identity"), self._options.identity.settings())
                    yield AsyncSession(conn, self._signatures)
            except psycopg.Error as exc:
                raise from_psycopg(exc) from exc

    async def run(self, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                async with self.transaction() as tx:
                    return await fn(tx)
            except Exception as exc:
                delay = self._retry_delay(exc, attempt)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                attempt += 1

    async def call(self, routine: Routine, /, *args: Any, **kwargs: Any) -> Any:
        return await self.run(lambda tx: tx.call(routine, *args, **kwargs))

    async def close(self) -> None:
        await self.pool.close()

    async def __aenter__(self) -> AsyncClient:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
