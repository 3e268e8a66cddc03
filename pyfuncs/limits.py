"""Per-routine resource limits: defaults from the environment, overrides in the decorator.

Limits are resolved when a routine is collected for deploy and stored in its generated body,
so a deployed version carries the limits it was deployed with (changing a default deploys a
new version). `None` in the decorator means "the configured default"; 0 means "no limit",
also over a default, the way PostgreSQL's own `statement_timeout = 0` does.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Limits:
    """What one call may use; None is no limit."""

    timeout_ms: int | None = None  # wall-clock time of the call (SQLSTATE 57014)
    max_memory_mb: int | None = None  # growth of the backend's private memory (53200)
    max_db_ops: int | None = None  # queries, prepares and cursor fetches (54000)
    max_result_rows: int | None = None  # rows a set-returning routine returns (54000)
    max_result_bytes: int | None = None  # size of the returned values (54000)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """Defaults from PYFUNCS_TIMEOUT_MS, PYFUNCS_MAX_MEMORY_MB, PYFUNCS_MAX_DB_OPS,
        PYFUNCS_MAX_RESULT_ROWS and PYFUNCS_MAX_RESULT_BYTES (unset, empty or 0: no limit)."""
        env = os.environ if environ is None else environ
        values: dict[str, int | None] = {}
        for name in cls.names():
            variable = f"PYFUNCS_{name.upper()}"
            raw = env.get(variable, "").strip()
            if not raw:
                continue
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(
                    f"{variable}={raw!r} is not a whole number; set it to a limit such as "
                    f"{_EXAMPLES[name]}, or to 0 for no limit"
                ) from None
            if value < 0:
                raise ConfigError(f"{variable}={raw!r} is negative; use 0 for no limit")
            if value > MOST:
                raise ConfigError(f"{variable}={raw!r} is too large; at most {MOST}")
            values[name] = value or None
        return cls(**values)

    def overridden(self, overrides: Mapping[str, Any]) -> Limits:
        """These defaults with a decorator's values on top (None keeps, 0 removes)."""
        chosen = {k: (v or None) for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **chosen)

    def as_dict(self) -> dict[str, int | None]:
        return dataclasses.asdict(self)


_EXAMPLES = {
    "timeout_ms": 5000, "max_memory_mb": 256, "max_db_ops": 10000,
    "max_result_rows": 100000, "max_result_bytes": 10485760,
}  # fmt: skip


MOST = 2**31 - 1  # a limit is written into the routine's body; this is plenty for each


def problems(overrides: Mapping[str, Any]) -> list[str]:
    """What is wrong with a decorator's limit arguments."""
    return [
        f"{name}={value!r:.40}: use a whole number from 0 (no limit) to {MOST}, e.g. "
        f"{name}={_EXAMPLES[name]}"
        for name, value in overrides.items()
        if value is not None and (type(value) is not int or not 0 <= value <= MOST)
    ]
