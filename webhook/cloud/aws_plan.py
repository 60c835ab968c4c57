"""AWS: from the observed account to the calls `install` makes, and the
checks `verify` makes. Pure functions; `webhook.cloud.aws` does the I/O.

What one AWS identity needs:
- an IAM OIDC identity provider for the issuer URL whose client IDs include
  the identity's audience (shared by every identity of the account);
- managed: the role named by `roleArn` whose trust policy pins that
  provider, the audience and `sub` `<identity>:*`, and the inline policy
  `workload-identity` holding `spec.permissions.policyDocument`;
- existing: a role with such a trust policy, made by someone else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from webhook.aws_trust import (
    account_of,
    provider_arn,
    provider_host,
    trust_admits,
    trust_policy,
)
from webhook.cloud.errors import aws_permission
from webhook.cloud.plan import Call, Finding, Plan, ReadDenied, ok, unknown, wrong
from webhook.cloud.spec import Permissions, ProviderSetup, RoleMode, parse_permissions
from webhook.identities import Identity

POLICY_NAME: Final = "workload-identity"
"""The inline role policy that holds spec.permissions.policyDocument."""
MANAGED_TAG: Final = {
    "Key": "workloadidentity.dev/managed-by",
    "Value": "workload-identity",
}


@dataclass(frozen=True, slots=True)
class OidcProvider:
    arn: str
    url: str
    client_ids: tuple[str, ...] = ()
    thumbprints: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Role:
    arn: str
    trust: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AwsObserved:
    """What `observe` found. None means "does not exist"."""

    account: str | None = None
    provider: OidcProvider | ReadDenied | None = None
    role: Role | ReadDenied | None = None
    policy: Mapping[str, Any] | ReadDenied | None = None
    """The role's inline policy `workload-identity`."""


def role_path_and_name(role_arn: str) -> tuple[str, str]:
    """`arn:aws:iam::1:role/team/app` -> (`/team/`, `app`)."""
    resource = role_arn.split(":role/", 1)[1]
    *path, name = resource.split("/")
    return ("/" + "/".join(path) + "/" if path else "/"), name


def _normal(value: Any) -> Any:
    """IAM treats a one-item list as its item and ignores list order."""
    if isinstance(value, Mapping):
        return {key: _normal(item) for key, item in value.items()}
    if isinstance(value, list):
        items = [_normal(item) for item in value]
        if len(items) == 1:
            return items[0]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    return value


def same_policy(left: Mapping[str, Any], right: Mapping[str, Any]) -> bool:
    return bool(_normal(dict(left)) == _normal(dict(right)))


def _policy_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"))


_TAGGING = {
    "CreateOpenIDConnectProvider": "TagOpenIDConnectProvider",
    "CreateRole": "TagRole",
}
"""Creating with tags needs the tagging permission as well."""


def _call(action: str, params: Mapping[str, Any], why: str) -> Call:
    needed = [aws_permission(action)]
    if "Tags" in params and action in _TAGGING:
        needed.append(aws_permission(_TAGGING[action]))
    return Call("iam", action, params, why, permission=", ".join(needed))


def _denied(subject: str, denied: ReadDenied) -> Finding:
    return unknown(
        subject,
        f"cannot read it: missing permission {denied.permission}",
        f"grant {denied.permission} so that this can be checked; "
        "this says nothing about whether the setup is right",
    )


def manual_provider_note(identity: Identity, issuer_url: str) -> str:
    assert identity.aws is not None
    audience = identity.aws.audience
    return "\n".join(
        [
            "provider setup is manual: create this IAM OIDC identity provider, then run verify",
            f"  provider URL:         {issuer_url}",
            f"  audience (client ID): {audience}",
            f"  its ARN will be:      {provider_arn(issuer_url, identity.aws.role_arn)}",
            f"  aws iam create-open-id-connect-provider --url {issuer_url} "
            f"--client-id-list {audience}",
        ]
    )


def existing_role_note(identity: Identity, issuer_url: str) -> str:
    assert identity.aws is not None
    policy = json.dumps(trust_policy(identity, issuer_url), indent=2)
    return (
        f"role {identity.aws.role_arn} is managed elsewhere (permissions.mode: existing); "
        "its trust policy must contain:\n" + policy
    )


def _provider_calls(
    identity: Identity,
    issuer_url: str,
    found: OidcProvider | None,
    thumbprints: tuple[str, ...],
    account: str,
) -> list[Call]:
    assert identity.aws is not None
    audience = identity.aws.audience
    if found is None:
        params: dict[str, Any] = {
            "Url": issuer_url,
            "ClientIDList": [audience],
            "Tags": [MANAGED_TAG],
        }
        if thumbprints:
            params["ThumbprintList"] = list(thumbprints)
        return [
            _call(
                "CreateOpenIDConnectProvider",
                params,
                f"account {account} has no IAM OIDC provider for {issuer_url}",
            )
        ]
    calls = []
    if audience not in found.client_ids:
        calls.append(
            _call(
                "AddClientIDToOpenIDConnectProvider",
                {"OpenIDConnectProviderArn": found.arn, "ClientID": audience},
                f"the provider does not list the audience {audience} as a client ID",
            )
        )
    if thumbprints and set(thumbprints) != set(found.thumbprints):
        calls.append(
            _call(
                "UpdateOpenIDConnectProviderThumbprint",
                {
                    "OpenIDConnectProviderArn": found.arn,
                    "ThumbprintList": list(thumbprints),
                },
                "the provider's thumbprints differ from --thumbprint",
            )
        )
    return calls


def _managed_role_calls(
    identity: Identity,
    issuer_url: str,
    permissions: Permissions,
    observed: AwsObserved,
) -> tuple[list[Call], list[Finding]]:
    assert identity.aws is not None
    path, name = role_path_and_name(identity.aws.role_arn)
    desired = trust_policy(identity, issuer_url)
    document = permissions.policy_document
    role, policy = observed.role, observed.policy
    if isinstance(role, ReadDenied):
        return [], [_denied(f"role {name}", role)]
    calls: list[Call] = []
    if role is None:
        calls.append(
            _call(
                "CreateRole",
                {
                    "RoleName": name,
                    "Path": path,
                    "AssumeRolePolicyDocument": _policy_json(desired),
                    "Description": f"workload identity {identity.name}",
                    "Tags": [MANAGED_TAG],
                },
                f"role {identity.aws.role_arn} does not exist",
            )
        )
        policy = None
    elif not same_policy(role.trust, desired):
        calls.append(
            _call(
                "UpdateAssumeRolePolicy",
                {"RoleName": name, "PolicyDocument": _policy_json(desired)},
                "the trust policy differs from the one that pins this identity",
            )
        )
    if isinstance(policy, ReadDenied):
        return [], [_denied(f"inline policy {POLICY_NAME}", policy)]
    if document is not None and (policy is None or not same_policy(policy, document)):
        calls.append(
            _call(
                "PutRolePolicy",
                {
                    "RoleName": name,
                    "PolicyName": POLICY_NAME,
                    "PolicyDocument": _policy_json(document),
                },
                "spec.permissions.policyDocument is not applied yet"
                if policy is None
                else "spec.permissions.policyDocument changed",
            )
        )
    if document is None and policy is not None:
        calls.append(
            _call(
                "DeleteRolePolicy",
                {"RoleName": name, "PolicyName": POLICY_NAME},
                "spec.permissions has no policyDocument any more",
            )
        )
    return calls, []


def _account_blockers(identity: Identity, observed: AwsObserved) -> list[Finding]:
    assert identity.aws is not None
    wanted = account_of(identity.aws.role_arn)
    if observed.account is not None and observed.account != wanted:
        return [
            wrong(
                "account",
                f"the AWS credentials are for account {observed.account}, "
                f"the role is in account {wanted}",
                f"use credentials for account {wanted}",
            )
        ]
    return []


def plan_aws(
    identity: Identity,
    issuer_url: str,
    observed: AwsObserved,
    *,
    setup: ProviderSetup = ProviderSetup.AUTOMATIC,
    thumbprints: tuple[str, ...] = (),
) -> Plan:
    """The calls that make the account match the identity, or the blockers
    that stop `install` before any call."""
    assert identity.aws is not None
    permissions = parse_permissions(identity)
    oidc_arn = provider_arn(issuer_url, identity.aws.role_arn)
    blockers = _account_blockers(identity, observed)
    calls: list[Call] = []
    notes: list[str] = []
    if setup is ProviderSetup.MANUAL:
        notes.append(manual_provider_note(identity, issuer_url))
    elif isinstance(observed.provider, ReadDenied):
        blockers.append(_denied("OIDC provider", observed.provider))
    else:
        calls += _provider_calls(
            identity,
            issuer_url,
            observed.provider,
            thumbprints,
            account_of(identity.aws.role_arn),
        )
    if permissions.mode is RoleMode.MANAGED:
        role_calls, role_blockers = _managed_role_calls(
            identity, issuer_url, permissions, observed
        )
        calls += role_calls
        blockers += role_blockers
    else:
        notes.append(existing_role_note(identity, issuer_url))
        blockers += [
            finding
            for finding in _role_findings(identity, issuer_url, observed)
            if finding.check.value == "wrong"
        ]
    return Plan(
        identity=identity.name,
        provider="aws",
        calls=tuple(calls),
        notes=tuple(notes),
        blockers=tuple(blockers),
        setup={"mode": setup.value, "oidcProviderArn": oidc_arn},
    )


# --- verify -----------------------------------------------------------------


def _relevant_statements(
    policy: Mapping[str, Any], oidc_arn: str
) -> list[Mapping[str, Any]]:
    statements = policy.get("Statement", [])
    if isinstance(statements, Mapping):
        statements = [statements]
    found = []
    for statement in statements:
        if not isinstance(statement, Mapping) or statement.get("Effect") != "Allow":
            continue
        actions = statement.get("Action", [])
        actions = [actions] if isinstance(actions, str) else list(actions)
        if not {"sts:AssumeRoleWithWebIdentity", "sts:*", "*"} & set(actions):
            continue
        federated = (statement.get("Principal") or {}).get("Federated", [])
        federated = [federated] if isinstance(federated, str) else list(federated)
        if oidc_arn in federated:
            found.append(statement)
    return found


def _sub_patterns(statement: Mapping[str, Any], host: str) -> list[tuple[str, str]]:
    patterns = []
    for operator, block in (statement.get("Condition") or {}).items():
        if not isinstance(block, Mapping):
            continue
        for key, values in block.items():
            if key == f"{host}:sub":
                listed = values if isinstance(values, list) else [values]
                patterns += [(str(operator), str(value)) for value in listed]
    return patterns


def _literal_prefix(operator: str, pattern: str) -> str:
    if operator != "StringLike":
        return pattern
    cut = min((i for i, c in enumerate(pattern) if c in "*?"), default=len(pattern))
    return pattern[:cut]


def analyse_trust(
    policy: Mapping[str, Any], identity: Identity, issuer_url: str
) -> list[Finding]:
    """Whether a trust policy admits this identity's tokens, and only its."""
    assert identity.aws is not None
    oidc_arn = provider_arn(issuer_url, identity.aws.role_arn)
    host = provider_host(issuer_url)
    audience = identity.aws.audience
    own = f"{identity.name}:"
    statements = _relevant_statements(policy, oidc_arn)
    if not statements:
        return [
            wrong(
                "trust policy",
                f"no statement lets {oidc_arn} call sts:AssumeRoleWithWebIdentity",
                "give the role the trust policy shown by `install`",
            )
        ]
    admitted = False
    broad: list[str] = []
    for statement in statements:
        patterns = _sub_patterns(statement, host)
        if not patterns:
            broad.append(
                "a statement has no condition on sub, so it admits every identity"
            )
        for operator, pattern in patterns:
            if not _literal_prefix(operator, pattern).startswith(own):
                broad.append(f"sub {pattern!r} admits tokens of other identities")
                continue
            probe = pattern.replace("*", "x").replace("?", "x")
            if trust_admits(
                policy, {"sub": probe, "aud": audience}, oidc_provider_arn=oidc_arn
            ):
                admitted = True
    findings = [
        ok("trust policy", f"admits {identity.name}'s tokens (aud {audience})")
        if admitted
        else wrong(
            "trust policy",
            f"does not admit tokens with aud {audience} and sub "
            f"{identity.name}:<project>:<namespace>:<serviceaccount>",
            "give the role the trust policy shown by `install`",
        )
    ]
    if broad:
        findings.append(
            wrong(
                "trust policy",
                "; ".join(dict.fromkeys(broad)),
                f"pin sub to '{identity.name}:*' so that no other identity can assume the role",
            )
        )
    return findings


def _role_findings(
    identity: Identity, issuer_url: str, observed: AwsObserved
) -> list[Finding]:
    assert identity.aws is not None
    role = observed.role
    if isinstance(role, ReadDenied):
        return [_denied("role", role)]
    if role is None:
        return [
            wrong(
                "role",
                f"{identity.aws.role_arn} does not exist",
                "run install with permissions.mode: managed, or create it with the trust "
                "policy shown by `install`",
            )
        ]
    return [
        ok("role", f"{role.arn} exists"),
        *analyse_trust(role.trust, identity, issuer_url),
    ]


def _provider_findings(
    identity: Identity, issuer_url: str, observed: AwsObserved
) -> list[Finding]:
    assert identity.aws is not None
    found = observed.provider
    oidc_arn = provider_arn(issuer_url, identity.aws.role_arn)
    if isinstance(found, ReadDenied):
        return [_denied("OIDC provider", found)]
    if found is None:
        return [
            wrong(
                "OIDC provider",
                f"{oidc_arn} does not exist",
                "run install, or create it as `install --provider-setup manual` prints",
            )
        ]
    if identity.aws.audience not in found.client_ids:
        return [
            wrong(
                "OIDC provider",
                f"client IDs {list(found.client_ids)} do not include {identity.aws.audience}",
                f"add the client ID: aws iam add-client-id-to-open-id-connect-provider "
                f"--open-id-connect-provider-arn {oidc_arn} --client-id {identity.aws.audience}",
            )
        ]
    return [ok("OIDC provider", f"{oidc_arn} accepts audience {identity.aws.audience}")]


def verify_aws(
    identity: Identity, issuer_url: str, observed: AwsObserved
) -> list[Finding]:
    """What is right, wrong or unreadable about this identity's AWS setup."""
    permissions = parse_permissions(identity)
    findings = _account_blockers(identity, observed)
    findings += _provider_findings(identity, issuer_url, observed)
    findings += _role_findings(identity, issuer_url, observed)
    document = permissions.policy_document
    if permissions.mode is RoleMode.MANAGED and document is not None:
        subject = f"inline policy {POLICY_NAME}"
        policy = observed.policy
        if isinstance(policy, ReadDenied):
            findings.append(_denied(subject, policy))
        elif policy is None:
            findings.append(wrong(subject, "is missing", "run install"))
        elif not same_policy(policy, document):
            findings.append(
                wrong(
                    subject,
                    "differs from spec.permissions.policyDocument",
                    "run install",
                )
            )
        else:
            findings.append(ok(subject, "matches spec.permissions.policyDocument"))
    return findings
