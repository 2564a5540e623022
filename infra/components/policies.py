"""IAM policy documents for the components' key, bucket and queue policies.

A policy argument takes a JSON string whose ARNs are often still
``pulumi.Output``s; :func:`policy_document` builds that string from
:func:`statement` dicts, so each component states only its statements.
Imports pulumi only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pulumi

# The current IAM policy language version; the older 2008 one lacks policy variables.
POLICY_VERSION = "2012-10-17"


def statement(
    sid: str,
    effect: str,
    principal: str | Mapping[str, pulumi.Input[str]],
    action: str | Sequence[str],
    resource: pulumi.Input[str] | Sequence[pulumi.Input[str]],
    condition: Mapping[str, Mapping[str, pulumi.Input[str]]] | None = None,
) -> dict[str, Any]:
    """One policy statement, its keys in a fixed order (no spurious policy diffs).

    Parameters
    ----------
    sid
        The statement's id.
    effect
        ``Allow`` or ``Deny``.
    principal
        ``"*"`` or a principal mapping such as ``{"Service": "s3.amazonaws.com"}``.
    action
        One action or a list of them.
    resource
        One resource ARN or a list of them (plain or ``pulumi.Output``).
    condition
        The statement's ``Condition`` block; ``None`` leaves the key out.

    Returns
    -------
    dict
        The statement, ready for :func:`policy_document`.
    """
    declared: dict[str, Any] = {
        "Sid": sid,
        "Effect": effect,
        "Principal": principal,
        "Action": action,
        "Resource": resource,
    }
    if condition is not None:
        declared["Condition"] = condition
    return declared


def policy_document(*statements: Mapping[str, Any]) -> pulumi.Output[str]:
    """The JSON policy document holding ``statements``, in order.

    Parameters
    ----------
    *statements
        Statements from :func:`statement`.

    Returns
    -------
    pulumi.Output of str
        The document, resolved once every ``Output`` inside it is.
    """
    return pulumi.Output.json_dumps({"Version": POLICY_VERSION, "Statement": list(statements)})


def allow(
    sid: str,
    action: Sequence[str],
    resource: Sequence[pulumi.Input[str]],
    condition: Mapping[str, Mapping[str, pulumi.Input[str]]] | None = None,
) -> dict[str, Any]:
    """One ``Allow`` statement of an identity policy (a role's: it names no principal).

    Parameters
    ----------
    sid
        The statement's id.
    action
        The actions, each named in full (never a wildcard).
    resource
        The resource ARNs (plain or ``pulumi.Output``).
    condition
        The statement's ``Condition`` block; ``None`` leaves the key out.

    Returns
    -------
    dict
        The statement, ready for :func:`policy_document`.
    """
    declared: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": list(action), "Resource": list(resource)}
    if condition is not None:
        declared["Condition"] = condition
    return declared


def assumed_by(service: str) -> pulumi.Output[str]:
    """A role's trust policy: only ``service`` (e.g. ``ec2.amazonaws.com``) may assume it."""
    return policy_document({"Sid": "Assume", "Effect": "Allow", "Principal": {"Service": service},
                            "Action": "sts:AssumeRole"})


def account_administers(partition: pulumi.Input[str], account_id: pulumi.Input[str]) -> dict[str, Any]:
    """The default key policy's statement: the account administers the key, IAM decides who else uses it."""
    return statement("AccountAdministers", "Allow",
                     {"AWS": pulumi.Output.format("arn:{0}:iam::{1}:root", partition, account_id)}, "kms:*", "*")
