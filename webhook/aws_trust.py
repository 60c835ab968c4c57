"""IAM trust policies that let exactly one identity's tokens assume a role.

The policy pins the issuer (through the OIDC provider ARN), the audience and
the subject. The subject condition is `<identity>:*`: identity names cannot
contain `:`, so `s3-reader:*` never admits the identity `s3-reader-admin`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from webhook.identities import Identity


def provider_host(issuer_url: str) -> str:
    """The issuer as IAM names it: no scheme, no trailing slash."""
    return issuer_url.removeprefix("https://").rstrip("/")


def account_of(role_arn: str) -> str:
    return role_arn.split(":")[4]


def partition_of(role_arn: str) -> str:
    return role_arn.split(":")[1]


def provider_arn(issuer_url: str, role_arn: str) -> str:
    return (
        f"arn:{partition_of(role_arn)}:iam::{account_of(role_arn)}:"
        f"oidc-provider/{provider_host(issuer_url)}"
    )


def subject_pattern(identity: str, *, project: str = "*", namespace: str = "*") -> str:
    """`sub` is `<identity>:<project>:<namespace>:<serviceaccount>`."""
    if project == "*" and namespace == "*":
        return f"{identity}:*"
    return f"{identity}:{project}:{namespace}:*"


def _sid(name: str) -> str:
    """Statement IDs allow only letters and digits."""
    return "WorkloadIdentity" + "".join(p.title() for p in re.split(r"[-.]", name))


def trust_policy(identity: Identity, issuer_url: str) -> dict[str, Any]:
    assert identity.aws is not None
    host = provider_host(issuer_url)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": _sid(identity.name),
                "Effect": "Allow",
                "Principal": {
                    "Federated": provider_arn(issuer_url, identity.aws.role_arn)
                },
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {f"{host}:aud": identity.aws.audience},
                    "StringLike": {f"{host}:sub": subject_pattern(identity.name)},
                },
            }
        ],
    }


def _like(pattern: str, value: str) -> bool:
    """IAM StringLike: `*` any run of characters, `?` one character."""
    regex = "".join(
        ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern
    )
    return re.fullmatch(regex, value, flags=re.S) is not None


def _values(raw: Any) -> list[str]:
    return [str(v) for v in raw] if isinstance(raw, list) else [str(raw)]


def _condition_holds(
    operator: str, key: str, expected: Any, claims: Mapping[str, Any], host: str
) -> bool:
    if not key.startswith(f"{host}:"):
        return False
    claim = claims.get(key.rsplit(":", 1)[1])
    actual = _values(claim) if claim is not None else []
    wanted = _values(expected)
    if operator == "StringEquals":
        return any(a == w for a in actual for w in wanted)
    if operator == "StringLike":
        return any(_like(w, a) for a in actual for w in wanted)
    return False


def trust_admits(
    policy: Mapping[str, Any], claims: Mapping[str, Any], *, oidc_provider_arn: str
) -> bool:
    """Whether `policy` lets a token with `claims`, from the OIDC provider
    `oidc_provider_arn`, call AssumeRoleWithWebIdentity. Supports what trust
    policies for web identities use: Allow statements with Federated
    principals and StringEquals/StringLike conditions on `aud` and `sub`."""
    host = oidc_provider_arn.split("oidc-provider/", 1)[1]
    for statement in policy.get("Statement", []):
        if statement.get("Effect") != "Allow":
            continue
        actions = _values(statement.get("Action", []))
        if "sts:AssumeRoleWithWebIdentity" not in actions:
            continue
        federated = _values((statement.get("Principal") or {}).get("Federated", []))
        if oidc_provider_arn not in federated:
            continue
        conditions = statement.get("Condition") or {}
        if all(
            _condition_holds(operator, key, expected, claims, host)
            for operator, block in conditions.items()
            for key, expected in block.items()
        ):
            return True
    return False
