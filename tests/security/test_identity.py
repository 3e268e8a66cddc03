"""JWT identities: the allow-list decides which roles a token may take, and the database
refuses, whatever the configuration says, a superuser, the login role and unknown roles (the
gateway's side is in tests/gateway/test_protocol.py)."""

from __future__ import annotations

import time

import jwt
import pytest

from pyfuncs.auth import JwtVerifier
from pyfuncs.client import Client
from pyfuncs.errors import AuthError, IdentityRefused

SECRET = "identity-test-secret-0123456789-0123456789"
# a careless allow-list: the database still refuses the last three
ROLES = ["student", "manager", "authenticator", "postgres", "ghost"]


def token(role: str, **claims: object) -> str:
    return jwt.encode({"role": role, "exp": time.time() + 60, **claims}, SECRET)


@pytest.mark.parametrize(
    ("role", "says"),
    [("authenticator", "may not act as"), ("postgres", "may not act as"),
     ("ghost", "does not exist")],
)  # fmt: skip
def test_the_database_refuses_roles_no_token_may_take(
    authenticator_dsn: str, role: str, says: str
) -> None:
    with Client(authenticator_dsn, jwt=JwtVerifier(secret=SECRET, roles=ROLES)) as client:
        with pytest.raises(IdentityRefused, match=says), client.as_user(token(role)).transaction():
            pass
        with client.as_user(token("student", sub="s")).transaction() as tx:  # the pool is fine
            assert tx.connection.execute("SELECT current_user").fetchone() == ("student",)
        with pytest.raises(AuthError, match="may not take"):
            client.as_user(token("none"))
