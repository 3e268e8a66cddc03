"""Where to connect, resolved the same way by every command and API.

Order: an explicit `--dsn`, then `PYFUNCS_DSN`, then `DATABASE_URL`, then the embedded
cluster under `.pgdata/` if it has been started (`pyfuncs db up`).
"""

from __future__ import annotations

import os

from .embedded import Cluster
from .errors import ClusterError, ConfigError


def resolve_dsn(explicit: str | None = None) -> str:
    for candidate in (explicit, os.environ.get("PYFUNCS_DSN"), os.environ.get("DATABASE_URL")):
        if candidate:
            return candidate
    try:
        return Cluster.default().url()
    except ClusterError as exc:
        raise ConfigError(
            "no database given: pass --dsn, set PYFUNCS_DSN or DATABASE_URL, "
            "or start the embedded one with `pyfuncs db up`"
        ) from exc
