"""Who is calling: the user, their facility and their role, from the token's claims only.

The facility and the role are Cognito groups (``facility:<id>``, ``role:<name>``); a user
belongs to exactly one of each. Nothing in a request body or query names them.

====================  ======  =====  ===========  ===========  =======
right                 clinic  radio  it           finance      route
====================  ======  =====  ===========  ===========  =======
upload (urgent)       yes     yes    no           no           POST /uploads
upload (backfill)     yes     yes    yes          no           POST /uploads
status                yes     yes    yes          no           GET /uploads/{id}, /studies
triage level, score   yes     yes    yes          no           GET /studies, /studies/{key}
findings, results     yes     yes    no           no           GET /studies/{key}
sign-off, audit       no      yes    no           no           POST .../signoff, GET .../audit
cost                  no      no     no           yes          (cost figures)
====================  ======  =====  ===========  ===========  =======
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ctfleet.contracts import Reason
from ctfleet.errors import Forbidden, Unauthenticated
from ctfleet.settings import FACILITY_GROUP, ROLE_GROUP, ROLES


class Role:
    CLINICIAN, RADIOLOGIST, IT, FINANCE = ROLES
    ALL = ROLES


class Right:
    UPLOAD = "upload"  # create and complete uploads (IT: backfill only)
    URGENT = "urgent"  # send urgent work
    STATUS = "status"  # upload and study status, the worklist
    TRIAGE = "triage"  # the triage level and score (IT's manifest maps them back to patients)
    FINDINGS = "findings"  # volumes, flags, alerts, sign-off, result images
    SIGNOFF = "signoff"
    AUDIT = "audit"
    COST = "cost"


RIGHTS: dict[str, frozenset[str]] = {
    Role.CLINICIAN: frozenset({Right.UPLOAD, Right.URGENT, Right.STATUS, Right.TRIAGE, Right.FINDINGS}),
    Role.RADIOLOGIST: frozenset({Right.UPLOAD, Right.URGENT, Right.STATUS, Right.TRIAGE, Right.FINDINGS,
                                 Right.SIGNOFF, Right.AUDIT}),
    Role.IT: frozenset({Right.UPLOAD, Right.STATUS, Right.TRIAGE}),
    Role.FINANCE: frozenset({Right.COST}),
}


def group_names(claims: dict[str, Any]) -> list[str]:
    """``cognito:groups`` as a list: a JSON list in the token, ``"[a b]"`` as API Gateway passes it on."""
    groups = claims.get("cognito:groups") or []
    if isinstance(groups, str):
        groups = groups.strip().removeprefix("[").removesuffix("]").split()
    return [str(g) for g in groups]


@dataclass(frozen=True)
class Principal:
    """A verified caller. ``user`` is the pool's stable user id (``sub``): what the audit trail records."""

    user: str
    facility: str
    role: str

    @classmethod
    def from_claims(cls, claims: dict[str, Any] | None, facilities: tuple[str, ...]) -> "Principal":
        """The caller the verified ``claims`` describe, of one of ``facilities``; 401 without claims, 403 if
        they name no single facility of this stack or no single role."""
        if not claims or not claims.get("sub"):
            raise Unauthenticated(Reason.NO_TOKEN, "sign in: this API needs a bearer token")
        groups = group_names(claims)
        named = {g[len(FACILITY_GROUP):] for g in groups if g.startswith(FACILITY_GROUP)}
        roles = {g[len(ROLE_GROUP):] for g in groups if g.startswith(ROLE_GROUP)} & set(Role.ALL)
        if len(named) != 1 or not named <= set(facilities):
            raise Forbidden(Reason.NO_FACILITY, "the account belongs to no single facility of this system")
        if len(roles) != 1:
            raise Forbidden(Reason.ROLE_NOT_ALLOWED, "the account has no single role")
        return cls(user=str(claims["sub"]), facility=named.pop(), role=roles.pop())

    def may(self, right: str) -> bool:
        return right in RIGHTS.get(self.role, frozenset())

    def require(self, right: str) -> None:
        if not self.may(right):
            raise Forbidden(Reason.ROLE_NOT_ALLOWED, f"the {self.role} role may not do this")

    @property
    def actor(self) -> str:
        """How the audit trail names this caller."""
        return f"user:{self.user}"
