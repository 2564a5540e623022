"""Identity: the Cognito user pool (MFA required), its facility and role groups, the web client, the facility secrets."""

from __future__ import annotations

from infra.preview import PLACEHOLDER_CODE

import pytest
from pulumi_mocks import Program, run_program

from ctfleet.access import Role
from ctfleet.access.principal import FACILITY_GROUP, ROLE_GROUP
from ctfleet.settings import Settings

pytestmark = pytest.mark.filterwarnings(r"ignore:.*deprecated in favor of:DeprecationWarning:pulumi_aws\..*")

POOL = "aws:cognito/userPool:UserPool"
SETTINGS = Settings(stack="ctfleet-u1", region="eu-north-1", facilities=("north", "south"))


@pytest.fixture(scope="module")
def program() -> Program:
    from infra.__main__ import build

    return run_program(lambda: build(SETTINGS, code=PLACEHOLDER_CODE, zones=("eu-north-1a", "eu-north-1b")))


def test_pool_requires_mfa_by_app_strong_passwords_and_admin_created_accounts(program: Program) -> None:
    [pool] = program.mocks.of_type(POOL)
    p = pool.inputs
    assert p["name"] == "ctfleet-u1-users"
    assert p["mfaConfiguration"] == "ON" and p["softwareTokenMfaConfiguration"] == {"enabled": True}
    pw = p["passwordPolicy"]
    assert pw["minimumLength"] >= 14 and all(pw[k] for k in ("requireLowercase", "requireUppercase",
                                                             "requireNumbers", "requireSymbols"))
    assert p["userPoolAddOns"] == {"advancedSecurityMode": "ENFORCED"}
    assert p["adminCreateUserConfig"]["allowAdminCreateUserOnly"] is True, "no self sign-up"
    assert p["deletionProtection"] == "ACTIVE"


def test_groups_are_the_facilities_and_roles_the_api_reads(program: Program) -> None:
    groups = sorted(r.inputs["name"] for r in program.mocks.of_type("aws:cognito/userGroup:UserGroup"))
    expected = sorted([f"{FACILITY_GROUP}north", f"{FACILITY_GROUP}south", *(f"{ROLE_GROUP}{r}" for r in Role.ALL)])
    assert groups == expected == sorted(SETTINGS.user_groups)


def test_web_client_has_no_secret_and_short_revocable_tokens(program: Program) -> None:
    [client] = program.mocks.of_type("aws:cognito/userPoolClient:UserPoolClient")
    c = client.inputs
    assert c["generateSecret"] is False and c["enableTokenRevocation"] is True
    assert sorted(c["explicitAuthFlows"]) == ["ALLOW_REFRESH_TOKEN_AUTH", "ALLOW_USER_PASSWORD_AUTH"]
    assert c["accessTokenValidity"] <= 60 and c["tokenValidityUnits"]["accessToken"] == "minutes"
    assert c["preventUserExistenceErrors"] == "ENABLED"
    assert program.outputs["auth_issuer"] == "https://cognito-idp.eu-north-1.amazonaws.com/identity-pool-id"


def test_each_facility_has_a_kms_encrypted_secret_without_a_value_in_the_program(program: Program) -> None:
    m = program.mocks
    secrets = {r.inputs["name"]: r.inputs for r in m.of_type("aws:secretsmanager/secret:Secret")}
    assert set(secrets) == {SETTINGS.facility_secret_name(f) for f in SETTINGS.facilities}
    keys = {r.state["arn"] for r in m.of_type("aws:kms/key:Key") if r.name == "identity-key"}
    assert {s["kmsKeyId"] for s in secrets.values()} == keys
    assert m.of_type("aws:secretsmanager/secretVersion:SecretVersion") == [], "HMAC keys never in the state"


def test_identity_args_need_a_facility() -> None:
    from infra.components.identity import IdentityArgs

    with pytest.raises(ValueError, match="no facility"):
        IdentityArgs(pool_name="p", client_name="c", groups=("role:it",), secret_names={})
