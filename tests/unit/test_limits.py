"""Limit defaults come from the environment, strictly parsed; decorators override them."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyfuncs.collect import collect
from pyfuncs.errors import ConfigError, DefinitionError
from pyfuncs.limits import Limits


def test_defaults_from_the_environment() -> None:
    env = {"PYFUNCS_TIMEOUT_MS": "1500", "PYFUNCS_MAX_MEMORY_MB": " 256 ",
           "PYFUNCS_MAX_DB_OPS": "0", "PYFUNCS_MAX_RESULT_ROWS": ""}  # fmt: skip
    assert Limits.from_env(env) == Limits(timeout_ms=1500, max_memory_mb=256)
    assert Limits.from_env({}) == Limits()


@pytest.mark.parametrize(
    ("value", "says"),
    [("fast", "is not a whole number"), ("-5", "is negative"), ("1.5", "is not a whole number")],
)
def test_a_bad_default_names_the_variable(value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=f"PYFUNCS_MAX_DB_OPS='{value}' {says}"):
        Limits.from_env({"PYFUNCS_MAX_DB_OPS": value})


def write(tmp_path: Path, options: str) -> str:
    module = tmp_path / "limited.py"
    module.write_text(
        "from pyfuncs import stored_function\n\n"
        f"@stored_function({options})\ndef f(x: int) -> int:\n    return x\n"
    )
    return str(module)


def test_decorator_overrides_and_zero_lifts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYFUNCS_TIMEOUT_MS", "1000")
    monkeypatch.setenv("PYFUNCS_MAX_RESULT_ROWS", "100")
    monkeypatch.setenv("PYFUNCS_MAX_MEMORY_MB", "64")
    (d,) = collect(write(tmp_path, "timeout_ms=50, max_result_rows=0"))
    assert d.limits == Limits(timeout_ms=50, max_memory_mb=64)


@pytest.mark.parametrize("bad", ["-1", "1.5", "True", "'100'", "10**400"])
def test_bad_limit_in_the_decorator_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(DefinitionError, match=r"max_memory_mb=.*: use a whole number"):
        collect(write(tmp_path, f"max_memory_mb={bad}"))
