"""Customer KMS keys: the rotated key and its alias a component encrypts with.

Storage and alerts each declare one (``{name}-key`` and ``{name}-key-alias``)
through :func:`customer_key`, so every key gets the same rotation and deletion
window. Imports pulumi and pulumi_aws only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_aws as aws

# The longest window AWS allows: a key deleted by mistake makes everything it
# encrypted unreadable, so leave the most time to cancel.
DELETION_WINDOW_DAYS = 30


def customer_key(
    name: str,
    *,
    description: str,
    alias: str,
    tags: Mapping[str, str],
    opts: pulumi.ResourceOptions,
    policy: pulumi.Input[str] | None = None,
) -> aws.kms.Key:
    """Declare a customer KMS key, rotated yearly, and its alias.

    Parameters
    ----------
    name
        The owning component's Pulumi name; the resources are ``{name}-key``
        and ``{name}-key-alias``.
    description
        The key's description.
    alias
        The alias (``alias/...``), so people find the key in the console.
    tags
        Tags put on the key.
    opts
        Pulumi options for both resources (the component as parent).
    policy
        The key policy; ``None`` declares none, leaving AWS's default (grants
        decided by IAM in this account).

    Returns
    -------
    aws.kms.Key
        The key (its alias is not returned: nothing refers to it).
    """
    # Left out rather than passed as None, so a key without a policy is
    # declared exactly as before this helper existed.
    policy_args: dict[str, Any] = {} if policy is None else {"policy": policy}
    key = aws.kms.Key(
        f"{name}-key",
        description=description,
        enable_key_rotation=True,
        deletion_window_in_days=DELETION_WINDOW_DAYS,
        tags=dict(tags),
        opts=opts,
        **policy_args,
    )
    aws.kms.Alias(f"{name}-key-alias", name=alias, target_key_id=key.key_id, opts=opts)
    return key
