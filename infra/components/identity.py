"""Who may sign in: the Cognito user pool, its groups and the web page's app client; the facilities' secrets.

* **User pool**: accounts are created by the hospital's administrators only (no self sign-up);
  MFA is required, by authenticator app (TOTP); passwords of 14 characters or more with upper and
  lower case, digits and symbols; advanced security enforced (compromised credentials and risky
  sign-ins blocked); recovery by verified e-mail; deletion protection on.
* **Groups**: ``facility:<id>`` per configured facility and ``role:<name>`` per role
  (``Settings.user_groups``): the API takes a caller's facility and role from these, never from
  the request.
* **App client** of the static web page: no client secret (a browser cannot keep one), password
  sign-in and refresh only, short-lived access tokens, revocable, no user-existence hints.
* **Facility secrets**: one Secrets Manager secret per facility (``Settings.facility_secret_name``),
  encrypted with a customer key of this component. Their values (the HMAC keys that turn patient
  identifiers into study keys) are never in the program or its state: an administrator puts them
  (``aws secretsmanager put-secret-value``) before the facility's first upload.

Imports pulumi, pulumi_aws, ``ctfleet.settings`` and ``infra.components.keys``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from ctfleet.settings import Settings
from infra.components.keys import customer_key

MIN_PASSWORD_LENGTH = 14
ACCESS_TOKEN_MINUTES = 60
REFRESH_TOKEN_HOURS = 12


@dataclass(frozen=True)
class IdentityArgs:
    """What :class:`Identity` declares.

    Attributes
    ----------
    pool_name, client_name
        The user pool's and the web app client's names.
    groups
        The pool's groups (``Settings.user_groups``).
    secret_names
        Facility id to the name of its secret (``Settings.facility_secret_name``).
    tags
        Tags on everything.
    """

    pool_name: str
    client_name: str
    groups: Sequence[str]
    secret_names: Mapping[str, str]
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.groups)) != len(self.groups):
            raise ValueError(f"user pool groups {list(self.groups)} repeat a name")
        if not self.secret_names:
            raise ValueError("no facility configured (CTFLEET_FACILITIES): nobody could upload")

    @classmethod
    def from_settings(cls, settings: Settings, *, tags: Mapping[str, str] | None = None) -> "IdentityArgs":
        """The pool, groups and secrets of ``settings``'s stack."""
        return cls(pool_name=f"{settings.stack}-users", client_name=f"{settings.stack}-web",
                   groups=settings.user_groups,
                   secret_names={f: settings.facility_secret_name(f) for f in settings.facilities},
                   tags=dict(tags or {}))


class Identity(pulumi.ComponentResource):
    """The user pool, its groups and app client, and the facility secrets.

    Attributes
    ----------
    pool, client
        The user pool and the web page's app client.
    secrets
        The facility secrets by facility id.
    key
        The customer key the secrets are encrypted with.
    """

    def __init__(self, name: str, args: IdentityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ctfleet:infra:Identity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        self.pool = aws.cognito.UserPool(
            f"{name}-pool", name=args.pool_name,
            admin_create_user_config=aws.cognito.UserPoolAdminCreateUserConfigArgs(allow_admin_create_user_only=True),
            mfa_configuration="ON",
            software_token_mfa_configuration=aws.cognito.UserPoolSoftwareTokenMfaConfigurationArgs(enabled=True),
            password_policy=aws.cognito.UserPoolPasswordPolicyArgs(
                minimum_length=MIN_PASSWORD_LENGTH, require_lowercase=True, require_uppercase=True,
                require_numbers=True, require_symbols=True, temporary_password_validity_days=3),
            user_pool_add_ons=aws.cognito.UserPoolUserPoolAddOnsArgs(advanced_security_mode="ENFORCED"),
            account_recovery_setting=aws.cognito.UserPoolAccountRecoverySettingArgs(
                recovery_mechanisms=[aws.cognito.UserPoolAccountRecoverySettingRecoveryMechanismArgs(
                    name="verified_email", priority=1)]),
            auto_verified_attributes=["email"], deletion_protection="ACTIVE", tags=tags, opts=child)
        for group in args.groups:
            aws.cognito.UserGroup(f"{name}-group-{group.replace(':', '-')}", name=group, user_pool_id=self.pool.id,
                                  opts=child)
        self.client = aws.cognito.UserPoolClient(
            f"{name}-web", name=args.client_name, user_pool_id=self.pool.id, generate_secret=False,
            explicit_auth_flows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
            prevent_user_existence_errors="ENABLED", enable_token_revocation=True,
            access_token_validity=ACCESS_TOKEN_MINUTES, id_token_validity=ACCESS_TOKEN_MINUTES,
            refresh_token_validity=REFRESH_TOKEN_HOURS,
            token_validity_units=aws.cognito.UserPoolClientTokenValidityUnitsArgs(
                access_token="minutes", id_token="minutes", refresh_token="hours"),
            opts=child)
        self.key = customer_key(name, description="ctfleet facility secrets (study-key HMAC keys)",
                                alias=f"alias/{args.pool_name}-secrets", tags=tags, opts=child)
        self.secrets: dict[str, aws.secretsmanager.Secret] = {
            facility: aws.secretsmanager.Secret(
                f"{name}-secret-{facility}", name=secret, kms_key_id=self.key.arn,
                description=f"ctfleet study-key HMAC key of facility {facility} (value put by an administrator)",
                recovery_window_in_days=30, tags={**tags, "ctfleet:facility": facility}, opts=child)
            for facility, secret in args.secret_names.items()
        }
        self.register_outputs({"user_pool_id": self.pool.id, "web_client_id": self.client.id})
