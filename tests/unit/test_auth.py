from __future__ import annotations

import time

import jwt
import pytest

from pyfuncs import AuthError
from pyfuncs.auth import JwtVerifier
from pyfuncs.errors import ConfigError

SECRET = "unit-test-secret-of-thirty-two-bytes"


def test_role_and_claims() -> None:
    token = jwt.encode({"sub": "u1", "role": "student", "exp": time.time() + 60}, SECRET)
    identity = JwtVerifier(secret=SECRET).verify(token)
    assert identity.role == "student" and identity.claims["sub"] == "u1"
    settings = identity.settings()
    assert settings["role"] == "student" and '"sub":"u1"' in settings["claims"]


def test_default_role_and_nested_claim() -> None:
    token = jwt.encode({"sub": "u1", "app_metadata": {"role": "manager"}}, SECRET)
    assert (
        JwtVerifier(secret=SECRET, role_claim="app_metadata.role").verify(token).role == "manager"
    )
    bare = jwt.encode({"sub": "u1"}, SECRET)
    assert JwtVerifier(secret=SECRET, default_role="anon").verify(bare).role == "anon"


def test_alg_none_is_refused() -> None:
    token = jwt.encode({"sub": "u1", "role": "admin"}, key=None, algorithm="none")
    with pytest.raises(AuthError):
        JwtVerifier(secret=SECRET).verify(token)


def test_exactly_one_key() -> None:
    with pytest.raises(ConfigError):
        JwtVerifier()
    with pytest.raises(ConfigError):
        JwtVerifier(secret="a", public_key="b")
