"""The local Cognito: a user pool in the moto server, its app client, groups and demo users.

moto serves Cognito's real API (``InitiateAuth``, groups, the pool's JWKS at
``{endpoint}/{pool_id}/.well-known/jwks.json``) and signs RS256 access tokens whose issuer is
the AWS-style ``https://cognito-idp.{region}.amazonaws.com/{pool_id}``. What it does not do:
MFA is not required of anyone (the AWS pool requires it; the page answers the challenge
there), its signing key is the one shipped inside moto (anyone could mint a token for a
local stack: it is for this machine only), and it never rotates it (the rotation path is
tested with keys of our own, ``tests/unit/test_tokens.py``).

Groups: ``facility:<id>`` for each facility and ``role:<name>`` for each role; a user is in
one of each. Demo users ``<facility>-<role>`` are created at start. Their passwords (random,
per start) and the pool's ids are kept in ``{CTFLEET_HOME}/local/<stack>.json`` (mode 600),
so ``ctfleet local token`` in another process can sign in as them.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ctfleet.access import Role
from ctfleet.access.principal import FACILITY_GROUP, ROLE_GROUP
from ctfleet.aws.failures import sorted_errors
from ctfleet.contracts import Reason
from ctfleet.errors import BadInput
from ctfleet.settings import Settings


@dataclass
class LocalPool:
    """Where the local stack's users sign in, and the passwords of the users created so far."""

    endpoint: str
    region: str
    user_pool_id: str
    client_id: str
    api: str = ""
    web: str = ""
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return f"https://cognito-idp.{self.region}.amazonaws.com/{self.user_pool_id}"

    @property
    def jwks_url(self) -> str:
        return f"{self.endpoint}/{self.user_pool_id}/.well-known/jwks.json"

    @cached_property
    def idp(self) -> Any:
        """The pool's boto3 client, built once (not a field: the state file holds only the fields)."""
        import boto3

        return boto3.client("cognito-idp", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    # -- the state file ---------------------------------------------------------------

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=1)

    @classmethod
    def load(cls, path: Path) -> "LocalPool":
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError as exc:
            raise BadInput(Reason.NOT_FOUND, f"no local stack is up ({path} is missing): run `ctfleet local up`") \
                from exc

    # -- users ----------------------------------------------------------------------------

    def user(self, facility: str, role: str, username: str | None = None) -> str:
        """Make sure ``username`` (default ``<facility>-<role>``) exists in exactly that facility and role."""
        if role not in Role.ALL:
            raise BadInput(Reason.BAD_REQUEST, f"role must be one of {', '.join(Role.ALL)}")
        name = username or f"{facility}-{role}"
        idp = self.idp
        groups = {g["GroupName"] for g in idp.list_groups(UserPoolId=self.user_pool_id)["Groups"]}
        if FACILITY_GROUP + facility not in groups:
            raise BadInput(Reason.UNKNOWN_FACILITY, f"{facility} is not a facility of this stack")
        with sorted_errors("cognito:user"):
            if name not in self.passwords:
                password = secrets.token_urlsafe(12) + "aA1!"
                try:
                    idp.admin_create_user(UserPoolId=self.user_pool_id, Username=name, MessageAction="SUPPRESS")
                except idp.exceptions.UsernameExistsException:
                    pass
                idp.admin_set_user_password(UserPoolId=self.user_pool_id, Username=name, Password=password,
                                            Permanent=True)
                self.passwords[name] = password
            for group in (FACILITY_GROUP + facility, ROLE_GROUP + role):
                idp.admin_add_user_to_group(UserPoolId=self.user_pool_id, Username=name, GroupName=group)
        return name

    def sign_in(self, username: str) -> dict[str, Any]:
        """``InitiateAuth`` as the page and the CLI do it: ``{"token", "expires_at", "user"}``."""
        with sorted_errors("cognito:sign-in"):
            got = self.idp.initiate_auth(ClientId=self.client_id, AuthFlow="USER_PASSWORD_AUTH",
                                              AuthParameters={"USERNAME": username,
                                                              "PASSWORD": self.passwords[username]})
        result = got["AuthenticationResult"]
        return {"token": result["AccessToken"], "expires_at": int(time.time()) + int(result["ExpiresIn"]),
                "user": username}

    def token(self, facility: str, role: str, username: str | None = None) -> str:
        """An access token of a user of ``facility`` with ``role`` (created if needed)."""
        return str(self.sign_in(self.user(facility, role, username))["token"])


def create_pool(idp: Any, settings: Settings, endpoint: str) -> LocalPool:
    """The stack's user pool, app client and groups, and one demo user per facility and role."""
    with sorted_errors("cognito:pool"):
        pool_id = idp.create_user_pool(
            PoolName=f"{settings.stack}-users",
            Policies={"PasswordPolicy": {"MinimumLength": 12, "RequireUppercase": True, "RequireLowercase": True,
                                         "RequireNumbers": True, "RequireSymbols": False}},
            AdminCreateUserConfig={"AllowAdminCreateUserOnly": True},
        )["UserPool"]["Id"]
        client_id = idp.create_user_pool_client(
            UserPoolId=pool_id, ClientName=f"{settings.stack}-web", GenerateSecret=False,
            ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
        )["UserPoolClient"]["ClientId"]
        for facility in settings.facilities:
            idp.create_group(UserPoolId=pool_id, GroupName=FACILITY_GROUP + facility)
        for role in Role.ALL:
            idp.create_group(UserPoolId=pool_id, GroupName=ROLE_GROUP + role)
    pool = LocalPool(endpoint=endpoint, region=settings.region, user_pool_id=pool_id, client_id=client_id)
    for facility in settings.facilities:
        for role in Role.ALL:
            pool.user(facility, role)
    return pool


def state_path(settings: Settings) -> Path:
    return Path(settings.home).expanduser() / "local" / f"{settings.stack}.json"
