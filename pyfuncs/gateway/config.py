"""The gateway's settings: typed, with defaults, read from PYFUNCS_GATEWAY_* variables."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..auth import JwtVerifier, env_text
from ..errors import ConfigError


@dataclass(frozen=True)
class GatewayConfig:
    """`dsn` is the check connection's: a login role that can take every role tokens name
    and that runs as subscribers (README "Deploying it"); `feed_dsn` (default: `dsn`) is the
    connection that reads the change log and writes the audit, and never runs as anyone
    else. Two login roles let the check role go without any grant on pyfuncs' tables."""

    dsn: str
    verifier: JwtVerifier
    outbox_size: int = 1000  # messages waiting for one client before it is disconnected
    outbox_bytes: int = 16 * 2**20  # characters waiting for one client: past it, the same
    max_snapshot_bytes: int = 8 * 2**20  # characters of a snapshot's rows (too_many_rows)
    heartbeat: float = 15.0  # seconds between heartbeats (they carry positions)
    auth_timeout: float = 3.0  # for the first message's token, when no header has one
    max_pending: int = 256  # WebSockets not yet authenticated, in all (more: HTTP 503)
    max_pending_per_peer: int = 32  # ... from one IP address (more: HTTP 503)
    # a connection has this long to send a request's headers (then it is closed), and one IP
    # address this many connections that have not yet (more are closed at once): uvicorn
    # gives neither bound, and counts them all toward its limit (server.HttpProtocol)
    header_timeout: float = 10.0
    max_unsent_per_peer: int = 64
    auth_failures_audited: float = 1.0  # auth_failed audit rows per second (bursts of 30x)
    catch_up_wait: float = 60.0  # seconds a resuming subscription waits for a client to read
    shutdown_grace: float = 3.0  # seconds a stalled stream is given to end on SIGTERM
    expiry_grace: float = 60.0  # to send a refreshed token after one expired
    max_connections_per_user: int = 20
    max_subscriptions_per_user: int = 100
    # filter values (one per eq/lt/... filter, one per item of an `in`) in all of a user's
    # subscriptions: each is converted for every row of every batch of its table, in the
    # query every subscriber's delivery waits for
    max_filter_values_per_user: int = 1000
    messages_per_second: float = 20.0  # from one user's clients; bursts of twice that
    max_snapshot_rows: int = 10_000  # rows a subscription may start with
    batch: int = 500  # changes read from the feed at once
    poll: float = 5.0  # look at the feed this often even without a NOTIFY
    retry: float = 0.5  # wait before reconnecting to the database
    prune_every: float = 3600.0  # seconds between prunes of the change feed
    pool_size: int = 10  # database connections for snapshots and delivery checks
    # /metrics answers requests from this host's loopback, or bearing this token
    metrics_token: str | None = None
    feed_dsn: str = ""  # PYFUNCS_GATEWAY_FEED_DSN; empty: `dsn`
    max_message: int = 65_536  # bytes of a message from a client; past it: closed, 1009
    max_resume_keys: int = 1000  # keys a resuming subscription may name (`keys`)
    # origins (scheme://host[:port]) whose pages may use the gateway across origins: CORS
    # for /realtime.js and /realtime/sse, and the Origin a browser's WebSocket may come
    # from; ("*",): any. Empty: same-origin pages only for CORS, WebSockets from anywhere
    allowed_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.feed_dsn:
            object.__setattr__(self, "feed_dsn", self.dsn)

    @classmethod
    def from_env(
        cls, dsn: str, verifier: JwtVerifier, environ: Mapping[str, str] | None = None
    ) -> GatewayConfig:
        """Defaults overridden by PYFUNCS_GATEWAY_<FIELD> (PYFUNCS_GATEWAY_OUTBOX_SIZE...),
        PYFUNCS_GATEWAY_METRICS_TOKEN and PYFUNCS_GATEWAY_FEED_DSN."""
        env = os.environ if environ is None else environ
        values = numbers_from_env(env)
        token = (env_text("PYFUNCS_GATEWAY_METRICS_TOKEN", "", env) or "").strip() or None
        feed = (env_text("PYFUNCS_GATEWAY_FEED_DSN", "", env) or "").strip()
        origins = origins_from(env_text("PYFUNCS_GATEWAY_ALLOWED_ORIGINS", "", env) or "")
        return cls(dsn, verifier, metrics_token=token, feed_dsn=feed, allowed_origins=origins,
                   **values)  # type: ignore[arg-type]  # fmt: skip


def numbers_from_env(env: Mapping[str, str]) -> dict[str, int | float]:
    """The number settings PYFUNCS_GATEWAY_<FIELD> sets, checked, by field name."""
    values: dict[str, int | float] = {}
    for f in dataclasses.fields(GatewayConfig):
        variable = f"PYFUNCS_GATEWAY_{f.name.upper()}"
        raw = env.get(variable, "").strip()
        if f.type not in ("int", "float") or not raw:
            continue
        kind = int if f.type == "int" else float
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(
                f"{variable}={raw!r} is not a {'whole ' if kind is int else ''}number"
            ) from None
        if not 0 < value < math.inf:  # nan and inf too
            raise ConfigError(f"{variable}={raw!r} must be a positive, finite number")
        values[f.name] = value
    return values


_ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)


def origins_from(text: str) -> tuple[str, ...]:
    """PYFUNCS_GATEWAY_ALLOWED_ORIGINS (or `--allowed-origin`s joined): origins separated
    by commas or spaces, each `scheme://host[:port]` as browsers send it in `Origin`, or
    `*` alone for any; ConfigError for anything else (a path, a trailing slash)."""
    origins = tuple(o for o in re.split(r"[,\s]+", text.strip()) if o)
    if origins == ("*",):
        return origins
    for origin in origins:
        if not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                f"PYFUNCS_GATEWAY_ALLOWED_ORIGINS: {origin[:80]!r} is not an origin: give "
                "scheme://host[:port] (no path, no trailing slash), or * alone for any"
            )
    return tuple(o.lower() for o in origins)
