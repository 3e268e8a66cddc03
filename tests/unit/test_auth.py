from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from pyfuncs import AuthError
from pyfuncs.auth import JwtVerifier
from pyfuncs.errors import ConfigError

SECRET = "unit-test-secret-of-thirty-two-bytes"
ROLES = ("student", "manager")


def sign(**claims: Any) -> str:
    return jwt.encode({"exp": time.time() + 60} | claims, SECRET)


def test_role_and_claims() -> None:
    identity = JwtVerifier(secret=SECRET, roles=ROLES).verify(sign(sub="u1", role="student"))
    assert identity.role == "student" and identity.claims["sub"] == "u1"
    settings = identity.settings()
    assert settings["role"] == "student" and '"sub":"u1"' in settings["claims"]


def test_default_role_and_nested_claim() -> None:
    token = sign(sub="u1", app_metadata={"role": "manager"})
    verifier = JwtVerifier(secret=SECRET, roles=ROLES, role_claim="app_metadata.role")
    assert verifier.verify(token).role == "manager"
    bare = sign(sub="u1")
    assert JwtVerifier(secret=SECRET, roles=ROLES, default_role="student").verify(bare).role == (
        "student"
    )


@pytest.mark.parametrize(
    "role",
    ["none", "NONE", "", "postgres", "authenticator", "Student", "student ", ["student"],
     {"x": 1}, 1, True],
)  # fmt: skip
def test_only_roles_of_the_allow_list_are_accepted(role: Any) -> None:
    with pytest.raises(AuthError, match="names a role tokens may not take"):
        JwtVerifier(secret=SECRET, roles=ROLES).verify(sign(sub="u1", role=role))


def test_exp_is_required_unless_configured_otherwise() -> None:
    forever = jwt.encode({"sub": "u1", "role": "student"}, SECRET)
    with pytest.raises(AuthError, match="no exp claim"):
        JwtVerifier(secret=SECRET, roles=ROLES).verify(forever)
    assert JwtVerifier(secret=SECRET, roles=ROLES, require_exp=False).verify(forever).role == (
        "student"
    )


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYFUNCS_JWT_SECRET", SECRET)
    monkeypatch.delenv("PYFUNCS_JWT_ROLES", raising=False)
    with pytest.raises(ConfigError, match="PYFUNCS_JWT_ROLES"):
        JwtVerifier.from_env()
    monkeypatch.setenv("PYFUNCS_JWT_ROLES", " student, manager ")
    monkeypatch.setenv("PYFUNCS_JWT_REQUIRE_EXP", "maybe")
    with pytest.raises(ConfigError, match="PYFUNCS_JWT_REQUIRE_EXP"):
        JwtVerifier.from_env()
    monkeypatch.setenv("PYFUNCS_JWT_REQUIRE_EXP", "false")
    verifier = JwtVerifier.from_env()
    assert verifier.roles == {"student", "manager"} and not verifier.require_exp


def test_alg_none_is_refused() -> None:
    token = jwt.encode({"sub": "u1", "role": "student"}, key=None, algorithm="none")
    with pytest.raises(AuthError):
        JwtVerifier(secret=SECRET, roles=ROLES).verify(token)


def test_configuration_mistakes() -> None:
    with pytest.raises(ConfigError):
        JwtVerifier(roles=ROLES)
    with pytest.raises(ConfigError):
        JwtVerifier(secret="a", public_key="b", roles=ROLES)
    with pytest.raises(ConfigError, match="roles="):
        JwtVerifier(secret=SECRET)
    with pytest.raises(ConfigError, match="roles="):
        JwtVerifier(secret=SECRET, roles="student")  # a string is not a list of roles
    with pytest.raises(ConfigError, match="not roles a token may take"):
        JwtVerifier(secret=SECRET, roles=["student", "none"])
    with pytest.raises(ConfigError, match="default_role"):
        JwtVerifier(secret=SECRET, roles=ROLES, default_role="admin")


@pytest.mark.parametrize("secret", ["", "a", "x" * 31, "é" * 15])
def test_a_secret_too_short_to_resist_guessing_is_refused(secret: str) -> None:
    with pytest.raises(ConfigError, match="shorter than 32 bytes"):
        JwtVerifier(secret=secret, roles=ROLES)


@pytest.mark.parametrize(
    "key", ["notapem", "", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", SECRET]
)
def test_a_public_key_that_is_not_one_is_refused(key: str) -> None:
    with pytest.raises(ConfigError, match="not an RSA public key"):
        JwtVerifier(public_key=key, roles=ROLES)


@pytest.mark.parametrize(
    "bad", ["\ud800", sign(role="student") + "\ud800", "é.é.é", "\x00", "a.b.c", "", "...."]
)
def test_every_malformed_token_is_an_auth_error(bad: str) -> None:
    """A lone surrogate (which no encoding takes) or any other non-JWT text: AuthError, never
    UnicodeEncodeError or another exception an application does not expect."""
    with pytest.raises(AuthError, match=r"malformed|signature"):
        JwtVerifier(secret=SECRET, roles=ROLES).verify(bad)
