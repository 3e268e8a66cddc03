"""JWT verification and the PostgREST-style request settings derived from a token.

A verified token becomes an `Identity`: the database role to switch to (from a configurable
claim, PostgREST's `jwt-role-claim-key`, and only one of an allow-list) and the claims, which
the client sets for one transaction as `role` and `request.jwt.claims` (through
`pyfuncs.set_identity`, which also refuses superusers and the login role): the settings
PostgREST and Supabase use, so RLS policies written for them
(`current_setting('request.jwt.claims', true)::jsonb ->> 'sub'`) work unchanged. The
connecting login role must be a member of every role a token may name (PostgREST's
"authenticator" pattern).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.algorithms import RSAAlgorithm
from jwt.exceptions import InvalidKeyError

from .errors import AuthError, ConfigError


@dataclass(frozen=True)
class Identity:
    """Who a call runs as."""

    role: str
    claims: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, str]:
        """Parameters of the `set_identity` query."""
        return {"role": self.role, "claims": json.dumps(self.claims, separators=(",", ":"))}


# What a role claim must never be, whatever the allow-list says: `none` (and the empty name)
# make `SET ROLE` fall back to the login role itself.
_NOT_ROLES = frozenset({"", "none"})


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def bearer(value: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if that is what it holds."""
    if value and value.lower().startswith("bearer "):
        return value[7:].strip() or None
    return None


def env_text(variable: str, default: str | None = None, environ: Any = None) -> str | None:
    """A setting from the environment, which must be text (UTF-8): a variable holding other
    bytes (Python sees them as lone surrogates) is refused in one line here, not later by
    whatever first encodes it."""
    value = (os.environ if environ is None else environ).get(variable, default)
    if value is not None and not _encodes(value):
        raise ConfigError(f"{variable} is not UTF-8 text (it holds other bytes); set it to text")
    return value


def _flag(variable: str, default: bool) -> bool:
    raw = (env_text(variable) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{variable}={raw!r}: use true or false")


@dataclass(frozen=True)
class JwtVerifier:
    """Verifies tokens: HS256 with `secret`, or RS256 with `public_key` (PEM).

    `roles` is the allow-list of database roles a token may act as: a token naming any other
    role is refused (the login role may be a member of more roles than tokens should reach).
    `exp` is required unless `require_exp=False`; `nbf` is checked when present, `aud`
    against `audience` and `iss` against `issuer` when configured. `role_claim` is a dotted
    path into the claims (`"role"`, or `"app_metadata.role"`); `default_role` (one of
    `roles`) is used when a token has none.
    """

    secret: str | None = None
    public_key: str | None = None
    roles: Collection[str] = ()
    audience: str | Sequence[str] | None = None
    issuer: str | None = None
    role_claim: str = "role"
    default_role: str | None = None
    require_exp: bool = True
    leeway: float = 0.0

    def __post_init__(self) -> None:
        if (self.secret is None) == (self.public_key is None):
            raise ConfigError(
                "JwtVerifier needs exactly one of secret (HS256) or public_key (RS256)"
            )
        for what, value in (("secret", self.secret), ("public key", self.public_key)):
            if isinstance(value, str) and not _encodes(value):
                raise ConfigError(f"the JWT {what} is not UTF-8 text (it holds lone surrogates)")
        if self.secret is not None and len(self.secret.encode()) < 32:
            raise ConfigError(
                "the JWT secret (PYFUNCS_JWT_SECRET) is shorter than 32 bytes, which HS256 "
                "needs to resist guessing; use a random one, e.g. `openssl rand -hex 32`"
            )
        if self.public_key is not None:
            try:
                RSAAlgorithm(RSAAlgorithm.SHA256).prepare_key(self.public_key)
            except (InvalidKeyError, ValueError, TypeError):
                raise ConfigError(
                    "the JWT public key (PYFUNCS_JWT_PUBLIC_KEY) is not an RSA public key: "
                    "give its PEM text, from -----BEGIN PUBLIC KEY----- to the END line"
                ) from None
        if isinstance(self.roles, str) or not self.roles:
            raise ConfigError(
                "JwtVerifier needs roles=[...] (PYFUNCS_JWT_ROLES=a,b): the database roles "
                "tokens may act as; a token naming any other role is refused"
            )
        object.__setattr__(self, "roles", frozenset(self.roles))
        bad = sorted(r for r in self.roles if not isinstance(r, str) or r.lower() in _NOT_ROLES)
        if bad:
            raise ConfigError(f"roles={bad!r}: these are not roles a token may take")
        if self.default_role is not None and self.default_role not in self.roles:
            raise ConfigError(f"default_role={self.default_role!r} is not one of roles")

    @classmethod
    def from_env(cls) -> JwtVerifier:
        """From PYFUNCS_JWT_SECRET or PYFUNCS_JWT_PUBLIC_KEY, PYFUNCS_JWT_ROLES (comma
        separated), PYFUNCS_JWT_AUDIENCE, PYFUNCS_JWT_ISSUER, PYFUNCS_JWT_ROLE_CLAIM,
        PYFUNCS_JWT_DEFAULT_ROLE and PYFUNCS_JWT_REQUIRE_EXP (true by default)."""
        env = env_text
        return cls(
            secret=env("PYFUNCS_JWT_SECRET"),
            public_key=env("PYFUNCS_JWT_PUBLIC_KEY"),
            roles=[r.strip() for r in (env("PYFUNCS_JWT_ROLES") or "").split(",") if r.strip()],
            audience=env("PYFUNCS_JWT_AUDIENCE"),
            issuer=env("PYFUNCS_JWT_ISSUER"),
            role_claim=env("PYFUNCS_JWT_ROLE_CLAIM") or "role",
            default_role=env("PYFUNCS_JWT_DEFAULT_ROLE"),
            require_exp=_flag("PYFUNCS_JWT_REQUIRE_EXP", True),
        )

    @property
    def algorithm(self) -> str:
        return "HS256" if self.secret is not None else "RS256"

    def verify(self, token: str) -> Identity:
        """Check signature, time claims and role; raise AuthError saying what is wrong."""
        key = self.secret if self.secret is not None else self.public_key
        assert key is not None
        if not isinstance(token, str) or not token.isascii():
            # a JWT is base64url and dots: anything else (a lone surrogate, which no
            # encoding takes, included) is malformed, not a reason to fail otherwise
            raise AuthError("the token is malformed: a JWT is ASCII text (base64url and dots)")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "verify_aud": self.audience is not None,
                    "require": ["exp"] if self.require_exp else [],
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(
                "the token has no exp claim; tokens must expire (issue it with an exp)"
            ) from exc
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("the token has expired (exp is in the past); get a new one") from exc
        except jwt.ImmatureSignatureError as exc:
            raise AuthError("the token is not valid yet (nbf or iat is in the future)") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError(
                f"the token is for another audience; expected {self.audience!r}"
            ) from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError(f"the token has another issuer; expected {self.issuer!r}") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError(
                "the token's signature does not verify with the configured key"
            ) from exc
        except jwt.InvalidAlgorithmError as exc:
            raise AuthError(f"the token is not signed with {self.algorithm}") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"the token is malformed: {exc}") from exc
        except (ValueError, TypeError) as exc:  # whatever else a malformed token raises
            raise AuthError(f"the token is malformed ({type(exc).__name__})") from None
        return Identity(self._role(claims), claims)

    def _role(self, claims: dict[str, Any]) -> str:
        value: Any = claims
        for part in self.role_claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            if self.default_role is None:
                raise AuthError(
                    f"the token has no {self.role_claim!r} claim and no default role is configured"
                )
            return self.default_role
        # exact str, compared with the configured names (a claim is JSON: no subclasses)
        if type(value) is not str or value not in self.roles:
            raise AuthError(
                f"the token's {self.role_claim!r} claim names a role tokens may not take here"
            )
        return value
