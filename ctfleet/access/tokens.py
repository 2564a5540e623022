"""Cognito access tokens, verified: the only thing the API trusts.

A token passes when, and only when:

- its header names ``alg: RS256`` (nothing else is accepted, so ``none`` and HS256 tokens
  signed with the public key as a shared secret fail before any key is looked at);
- its signature verifies with the key its ``kid`` names in the pool's JWKS (fetched over
  HTTPS, cached; an unknown ``kid`` refetches the set once, which is how a rotated key is
  picked up);
- ``iss`` is the pool, ``client_id`` is our app client, ``token_use`` is ``access``;
- ``exp``, ``nbf`` and ``iat`` hold within a small clock skew.

On AWS the HTTP API's JWT authorizer checks the same before the function runs; locally
:class:`ctfleet.local.api_server.ApiServer` runs this verifier in its place. PyJWT does the
cryptography; nothing here decodes a signature by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jwt

from ctfleet.contracts import Reason
from ctfleet.errors import Transient, Unauthenticated

ALGORITHM = "RS256"
CLOCK_SKEW_S = 30
JWKS_LIFESPAN_S = 3600  # how long a fetched key set is trusted before it is fetched again
REQUIRED_CLAIMS = ("exp", "iat", "iss", "sub", "token_use")  # client_id: checked after token_use

_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, Reason.TOKEN_EXPIRED),
    (jwt.ImmatureSignatureError, Reason.TOKEN_NOT_YET_VALID),
    (jwt.InvalidIssuerError, Reason.WRONG_ISSUER),
    (jwt.InvalidAudienceError, Reason.WRONG_AUDIENCE),
    (jwt.InvalidSignatureError, Reason.BAD_SIGNATURE),
    (jwt.InvalidAlgorithmError, Reason.ALG_NOT_ALLOWED),
    (jwt.MissingRequiredClaimError, Reason.TOKEN_MALFORMED),
)


def jwks_url(issuer: str) -> str:
    """Where a Cognito pool publishes its keys: ``{issuer}/.well-known/jwks.json``."""
    return issuer.rstrip("/") + "/.well-known/jwks.json"


@dataclass
class TokenVerifier:
    """Verifies the access tokens of one user pool and app client.

    Parameters
    ----------
    issuer : str
        ``https://cognito-idp.{region}.amazonaws.com/{pool_id}``.
    client_id : str
        The app client the tokens must be issued to.
    jwks : str, optional
        The JWKS URL; by default the issuer's (locally, the moto server's copy of it).
    refetch_after_s : float
        An unknown ``kid`` refetches the key set at most this often (a flood of forged kids
        cannot turn into a flood of fetches).
    """

    issuer: str
    client_id: str
    jwks: str | None = None
    refetch_after_s: float = 30.0
    _keys: jwt.PyJWKClient = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._keys = jwt.PyJWKClient(self.jwks or jwks_url(self.issuer), cache_keys=True,
                                     lifespan=JWKS_LIFESPAN_S, timeout=5, cooldown_duration=self.refetch_after_s)

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; :class:`Unauthenticated` with a reason code if it does not verify."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise Unauthenticated(Reason.TOKEN_MALFORMED, "not a JWT") from exc
        if header.get("alg") != ALGORITHM:
            raise Unauthenticated(Reason.ALG_NOT_ALLOWED, f"only {ALGORITHM} tokens are accepted")
        key = self._key(str(header.get("kid", "")))
        try:
            claims = jwt.decode(token, key, algorithms=[ALGORITHM], issuer=self.issuer, leeway=CLOCK_SKEW_S,
                                options={"require": list(REQUIRED_CLAIMS), "verify_aud": False})
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(_reason(exc), "the token does not verify") from exc
        if claims.get("token_use") != "access":
            raise Unauthenticated(Reason.WRONG_TOKEN_USE, "an access token is required")
        # Access tokens name their client in ``client_id``; an ``aud`` would be an ID token's.
        if claims.get("client_id") != self.client_id or "aud" in claims:
            raise Unauthenticated(Reason.WRONG_AUDIENCE, "the token was issued to another client")
        return claims

    def _key(self, kid: str) -> Any:
        try:
            return self._keys.get_signing_key(kid).key
        except jwt.PyJWKClientConnectionError as exc:
            raise Transient(Reason.SERVICE_BUSY, "the user pool's keys could not be fetched") from exc
        except jwt.PyJWKClientError as exc:  # no key of the pool has this kid, even after a refetch
            raise Unauthenticated(Reason.BAD_SIGNATURE, "the token is signed by a key the pool does not publish") \
                from exc


def _reason(exc: Exception) -> str:
    for kind, reason in _ERRORS:
        if isinstance(exc, kind):
            return reason
    return Reason.TOKEN_MALFORMED
