"""Token verification with real RS256 keys made here, the JWKS served over real HTTP on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from http.server import BaseHTTPRequestHandler

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from ctfleet.access import TokenVerifier
from ctfleet.contracts import Reason
from ctfleet.errors import Unauthenticated
from ctfleet.local.httpd import LoopbackServer

ISSUER = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_TestPool"
CLIENT = "test-client-id"


def new_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Jwks:
    """A user pool's JWKS endpoint: the keys it publishes can change (rotation); fetches are counted."""

    def __init__(self) -> None:
        self.keys: dict[str, object] = {}
        self.fetches = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                jwks.fetches += 1
                body = json.dumps({"keys": [{**RSAAlgorithm.to_jwk(k.public_key(), as_dict=True), "kid": kid,
                                             "alg": "RS256", "use": "sig"} for kid, k in jwks.keys.items()]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

        self.server = LoopbackServer(Handler, name="jwks").start()
        self.url = self.server.url + "/eu-west-1_TestPool/.well-known/jwks.json"


@pytest.fixture(scope="module")
def pool():
    jwks = Jwks()
    jwks.keys["key-1"] = new_key()
    yield jwks
    jwks.server.stop()


@pytest.fixture
def verifier(pool):
    return TokenVerifier(ISSUER, CLIENT, pool.url)


def claims(**over) -> dict:
    now = int(time.time())
    out = {"iss": ISSUER, "sub": "7d1e-user", "client_id": CLIENT, "token_use": "access", "iat": now,
           "exp": now + 3600, "cognito:groups": ["facility:demo", "role:clinician"]}
    out.update(over)
    return {k: v for k, v in out.items() if v is not None}


def sign(key, body: dict, kid: str = "key-1", alg: str = "RS256") -> str:
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_good_token_passes(pool, verifier):
    got = verifier.verify(sign(pool.keys["key-1"], claims()))
    assert got["sub"] == "7d1e-user" and got["cognito:groups"] == ["facility:demo", "role:clinician"]


# Times relative to when each test runs (a test may run minutes after collection).
@pytest.mark.parametrize("over, reason", [
    ({"exp": -120}, Reason.TOKEN_EXPIRED),
    ({"nbf": 600}, Reason.TOKEN_NOT_YET_VALID),
    ({"iat": 600}, Reason.TOKEN_NOT_YET_VALID),
    ({"iss": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Other"}, Reason.WRONG_ISSUER),
    ({"client_id": "another-client"}, Reason.WRONG_AUDIENCE),
    ({"token_use": "id", "client_id": None, "aud": CLIENT}, Reason.WRONG_TOKEN_USE),
    ({"token_use": "refresh"}, Reason.WRONG_TOKEN_USE),
    ({"exp": None}, Reason.TOKEN_MALFORMED),
    ({"sub": None}, Reason.TOKEN_MALFORMED),
])
def test_a_token_with_a_bad_claim_fails_with_its_reason(pool, verifier, over, reason):
    now = int(time.time())
    body = claims(**{k: now + v if k in ("exp", "nbf", "iat") and v is not None else v for k, v in over.items()})
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(sign(pool.keys["key-1"], body))
    assert caught.value.reason == reason


def test_a_small_clock_skew_is_allowed(pool, verifier):
    verifier.verify(sign(pool.keys["key-1"], claims(exp=int(time.time()) - 5, iat=int(time.time()) + 5)))


def test_a_token_signed_by_another_key_fails(pool, verifier):
    with pytest.raises(Unauthenticated) as caught:  # claims to be key-1, signed by a stranger's key
        verifier.verify(sign(new_key(), claims()))
    assert caught.value.reason == Reason.BAD_SIGNATURE
    with pytest.raises(Unauthenticated) as caught:  # a kid the pool never published
        verifier.verify(sign(new_key(), claims(), kid="key-unknown"))
    assert caught.value.reason == Reason.BAD_SIGNATURE


def test_alg_none_fails(pool, verifier):
    header = b64(json.dumps({"alg": "none", "kid": "key-1", "typ": "JWT"}).encode())
    token = f"{header}.{b64(json.dumps(claims()).encode())}."
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    assert caught.value.reason == Reason.ALG_NOT_ALLOWED


def test_hs256_signed_with_the_public_key_fails(pool, verifier):
    # The classic confusion attack: the public key (which anyone can fetch) used as an HMAC secret.
    public_pem = pool.keys["key-1"].public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64(json.dumps({"alg": "HS256", "kid": "key-1", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    signature = b64(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(f"{header}.{payload}.{signature}")
    assert caught.value.reason == Reason.ALG_NOT_ALLOWED


def test_not_a_jwt_fails(verifier):
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify("not-a-token")
    assert caught.value.reason == Reason.TOKEN_MALFORMED


def test_keys_are_cached_and_a_rotated_key_is_fetched_once(pool):
    verifier = TokenVerifier(ISSUER, CLIENT, pool.url, refetch_after_s=0.5)
    before = pool.fetches
    for _ in range(3):
        verifier.verify(sign(pool.keys["key-1"], claims()))
    assert pool.fetches == before + 1, "the key set is fetched once, then cached"
    pool.keys["key-2"] = new_key()  # the pool rotates: a new key is published beside the old one
    time.sleep(0.6)  # unknown kids refetch at most every refetch_after_s
    verifier.verify(sign(pool.keys["key-2"], claims(), kid="key-2"))
    assert pool.fetches == before + 2, "an unknown kid refetches the set once"
    verifier.verify(sign(pool.keys["key-1"], claims()))
    assert pool.fetches == before + 2
