"""GCP: from the observed project to the calls `install` makes, and the
checks `verify` makes. Pure functions; `webhook.cloud.gcp` does the I/O.

What one GCP identity needs:
- a workload identity pool and its OIDC provider for the issuer (or the
  issuer's JWKS inline), with the attribute mapping below (shared by every
  identity of the pool);
- managed: the service account, a custom role with spec.permissions.permissions
  granted to it on the project, and roles/iam.workloadIdentityUser on the
  service account for this identity's principals only;
- existing: that binding on a service account made by someone else.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from webhook.cloud.plan import (
    Call,
    Check,
    Finding,
    Plan,
    ReadDenied,
    ok,
    unknown,
    wrong,
)
from webhook.cloud.spec import Permissions, ProviderSetup, RoleMode, parse_permissions
from webhook.identities import GcpSpec, Identity

IAM_API: Final = "iam.googleapis.com"
CRM_API: Final = "cloudresourcemanager.googleapis.com"
WORKLOAD_IDENTITY_USER: Final = "roles/iam.workloadIdentityUser"
ATTRIBUTE_MAPPING: Final = {
    "google.subject": "assertion.sub",
    "attribute.identity": "assertion['workloadidentity.dev/identity']",
    "attribute.project": "assertion['workloadidentity.dev/project']",
    "attribute.namespace": "assertion['kubernetes.io/namespace']",
}
"""What the token's claims become: `attribute.identity` is what the
workloadIdentityUser binding names, so each identity reaches only its own
service account."""
POOL_DISPLAY_NAME: Final = "Kubernetes workload identities"
PROVIDER_DISPLAY_NAME: Final = "workload-identity issuer"


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    state: str = "ACTIVE"
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class PoolProvider:
    name: str
    issuer_uri: str
    attribute_mapping: Mapping[str, str]
    allowed_audiences: tuple[str, ...] = ()
    jwks_json: str = ""
    state: str = "ACTIVE"
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    email: str
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class CustomRole:
    name: str
    permissions: tuple[str, ...]
    etag: str = ""
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class IamPolicy:
    etag: str = ""
    version: int = 1
    bindings: tuple[Mapping[str, Any], ...] = ()

    def members(self, role: str) -> set[str]:
        found: set[str] = set()
        for binding in self.bindings:
            if binding.get("role") == role and not binding.get("condition"):
                found.update(str(m) for m in binding.get("members", []))
        return found


@dataclass(frozen=True, slots=True)
class GcpObserved:
    """What `observe` found. None means "does not exist" (or was not needed)."""

    pool: Pool | ReadDenied | None = None
    provider: PoolProvider | ReadDenied | None = None
    service_account: ServiceAccount | ReadDenied | None = None
    sa_policy: IamPolicy | ReadDenied | None = None
    role: CustomRole | ReadDenied | None = None
    project_policy: IamPolicy | ReadDenied | None = None


# --- names ------------------------------------------------------------------


def pool_name(gcp: GcpSpec) -> str:
    return f"projects/{gcp.project_number}/locations/global/workloadIdentityPools/{gcp.pool_id}"


def provider_name(gcp: GcpSpec) -> str:
    return f"{pool_name(gcp)}/providers/{gcp.provider_id}"


def identity_principals(gcp: GcpSpec, identity: str) -> str:
    """Every token of this identity, whatever its project or namespace."""
    return f"principalSet://iam.googleapis.com/{pool_name(gcp)}/attribute.identity/{identity}"


def custom_role_id(identity: str) -> str:
    """Role IDs allow letters, digits, `_` and `.`, up to 64 characters."""
    role = "workloadIdentity_" + re.sub(r"[^A-Za-z0-9_.]", "_", identity)
    if len(role) <= 64:
        return role
    return role[:55] + "_" + hashlib.sha256(identity.encode()).hexdigest()[:8]


def project_id(gcp: GcpSpec) -> str:
    """The project that holds the service account and the custom role."""
    if gcp.service_account_email:
        return gcp.service_account_email.split("@", 1)[1].split(".", 1)[0]
    return gcp.project_id


def custom_role_name(gcp: GcpSpec, identity: str) -> str:
    return f"projects/{project_id(gcp)}/roles/{custom_role_id(identity)}"


def _from_pool(gcp: GcpSpec, member: str) -> bool:
    base = f"//iam.googleapis.com/{pool_name(gcp)}/"
    return member.startswith((f"principal:{base}", f"principalSet:{base}"))


def _same_jwks(left: str, right: str) -> bool:
    if not left or not right:
        return left == right
    try:
        return bool(json.loads(left) == json.loads(right))
    except ValueError:
        return False


def accepted_audiences(gcp: GcpSpec) -> tuple[str, str]:
    """With no allowedAudiences, Google accepts the provider's own name."""
    name = provider_name(gcp)
    return f"//iam.googleapis.com/{name}", f"https://iam.googleapis.com/{name}"


# --- calls ------------------------------------------------------------------


def _iam(
    action: str, body: Mapping[str, Any], why: str, permission: str, **kw: Any
) -> Call:
    return Call(IAM_API, action, body, why, permission=permission, **kw)


def _denied(subject: str, denied: ReadDenied) -> Finding:
    return unknown(
        subject,
        f"cannot read it: missing permission {denied.permission}",
        f"grant {denied.permission} so that this can be checked; "
        "this says nothing about whether the setup is right",
    )


def _pool_findings(gcp: GcpSpec, pool: Pool | ReadDenied | None) -> list[Finding]:
    subject = "workload identity pool"
    if isinstance(pool, ReadDenied):
        return [_denied(subject, pool)]
    if pool is None:
        return [wrong(subject, f"{pool_name(gcp)} does not exist", "run install")]
    if pool.state == "DELETED":
        return [
            wrong(
                subject,
                f"{pool.name} was deleted; Google keeps its ID reserved for 30 days",
                f"undelete it (gcloud iam workload-identity-pools undelete {gcp.pool_id} "
                f"--location global --project {gcp.project_number}) or choose another "
                "spec.gcp.poolId",
            )
        ]
    if pool.disabled:
        return [
            wrong(
                subject,
                f"{pool.name} is disabled, so no token is exchanged",
                "enable it if that was not deliberate",
            )
        ]
    return [ok(subject, f"{pool.name} is active")]


def _provider_findings(
    gcp: GcpSpec,
    issuer_url: str,
    provider: PoolProvider | ReadDenied | None,
    jwks_json: str | None,
) -> list[Finding]:
    subject = "pool provider"
    if isinstance(provider, ReadDenied):
        return [_denied(subject, provider)]
    if provider is None:
        return [wrong(subject, f"{provider_name(gcp)} does not exist", "run install")]
    if provider.state == "DELETED":
        return [
            wrong(
                subject,
                f"{provider.name} was deleted; Google keeps its ID reserved for 30 days",
                f"undelete it (gcloud iam workload-identity-pools providers undelete "
                f"{gcp.provider_id} --workload-identity-pool {gcp.pool_id} --location global "
                f"--project {gcp.project_number}) or choose another spec.gcp.providerId",
            )
        ]
    problems = []
    if provider.disabled:
        problems.append("it is disabled")
    if provider.issuer_uri.rstrip("/") != issuer_url:
        problems.append(f"its issuer is {provider.issuer_uri}, not {issuer_url}")
    if jwks_json is not None and not _same_jwks(provider.jwks_json, jwks_json):
        problems.append("its inline JWKS differs from --jwks-file")
    mapping = dict(provider.attribute_mapping)
    missing = {k: v for k, v in ATTRIBUTE_MAPPING.items() if mapping.get(k) != v}
    if missing:
        problems.append(
            "its attribute mapping lacks "
            + ", ".join(f"{k}={v}" for k, v in sorted(missing.items()))
        )
    audiences = accepted_audiences(gcp)
    if provider.allowed_audiences and not set(audiences) & set(
        provider.allowed_audiences
    ):
        problems.append(f"its allowed audiences do not include {audiences[0]}")
    if problems:
        return [wrong(subject, "; ".join(problems), "run install, or fix it by hand")]
    return [ok(subject, f"{provider.name} trusts {issuer_url}")]


def _provider_body(issuer_url: str, jwks_json: str | None) -> dict[str, Any]:
    oidc: dict[str, Any] = {"issuerUri": issuer_url}
    if jwks_json is not None:
        oidc["jwksJson"] = jwks_json
    return {
        "displayName": PROVIDER_DISPLAY_NAME,
        "attributeMapping": dict(ATTRIBUTE_MAPPING),
        "oidc": oidc,
    }


def _provider_update(
    gcp: GcpSpec, issuer_url: str, found: PoolProvider, jwks_json: str | None
) -> Call | None:
    mask: list[str] = []
    oidc: dict[str, Any] = {}
    body: dict[str, Any] = {}
    if found.issuer_uri.rstrip("/") != issuer_url:
        mask.append("oidc.issuerUri")
        oidc["issuerUri"] = issuer_url
    wanted_jwks = jwks_json or ""
    if not _same_jwks(found.jwks_json, wanted_jwks):
        mask.append("oidc.jwksJson")
        oidc["jwksJson"] = wanted_jwks
    audiences = accepted_audiences(gcp)
    if found.allowed_audiences and not set(audiences) & set(found.allowed_audiences):
        mask.append("oidc.allowedAudiences")
        oidc["allowedAudiences"] = [*found.allowed_audiences, audiences[0]]
    if dict(found.attribute_mapping) != ATTRIBUTE_MAPPING:
        mask.append("attributeMapping")
        body["attributeMapping"] = dict(ATTRIBUTE_MAPPING)
    if not mask:
        return None
    if oidc:
        body["oidc"] = oidc
    return _iam(
        f"PATCH v1/{found.name}?updateMask={','.join(mask)}",
        body,
        f"the provider differs in {', '.join(mask)}",
        "iam.workloadIdentityPoolProviders.update",
        long_running=True,
    )


def _setup_calls(
    gcp: GcpSpec, issuer_url: str, observed: GcpObserved, jwks_json: str | None
) -> tuple[list[Call], list[Finding]]:
    pool, provider = observed.pool, observed.provider
    calls: list[Call] = []
    if pool is None:
        calls.append(
            _iam(
                f"POST v1/projects/{gcp.project_number}/locations/global/"
                f"workloadIdentityPools?workloadIdentityPoolId={gcp.pool_id}",
                {
                    "displayName": POOL_DISPLAY_NAME,
                    "description": "Pods of a Kubernetes cluster (workload-identity)",
                },
                f"pool {gcp.pool_id} does not exist",
                "iam.workloadIdentityPools.create",
                long_running=True,
            )
        )
        provider = None
    else:
        blockers = [f for f in _pool_findings(gcp, pool) if f.check is not Check.OK]
        if blockers:
            return [], blockers
    if isinstance(provider, ReadDenied):
        return [], [_denied("pool provider", provider)]
    if provider is None:
        calls.append(
            _iam(
                f"POST v1/{pool_name(gcp)}/providers?workloadIdentityPoolProviderId="
                f"{gcp.provider_id}",
                _provider_body(issuer_url, jwks_json),
                f"provider {gcp.provider_id} does not exist",
                "iam.workloadIdentityPoolProviders.create",
                long_running=True,
            )
        )
        return calls, []
    if provider.state == "DELETED" or provider.disabled:
        return [], _provider_findings(gcp, issuer_url, provider, jwks_json)[:1]
    update = _provider_update(gcp, issuer_url, provider, jwks_json)
    return calls + ([update] if update else []), []


def _policy_with(
    policy: IamPolicy | None,
    role: str,
    member: str,
    drop: Callable[[str], bool] = lambda _: False,
) -> dict[str, Any] | None:
    """The policy with `member` in `role` and `drop`ped members removed from
    it; None when nothing changes. Other bindings are kept as they are."""
    current = policy or IamPolicy()
    bindings = [dict(b) for b in current.bindings]
    target = next(
        (b for b in bindings if b.get("role") == role and not b.get("condition")), None
    )
    if target is None:
        target = {"role": role, "members": []}
        bindings.append(target)
    before = list(target.get("members", []))
    after = sorted({m for m in before if m == member or not drop(m)} | {member})
    if sorted(before) == after:
        return None
    target["members"] = after
    body: dict[str, Any] = {"version": current.version, "bindings": bindings}
    if current.etag:
        body["etag"] = current.etag
    return body


def _managed_calls(
    identity: Identity, permissions: Permissions, observed: GcpObserved
) -> tuple[list[Call], list[Finding]]:
    assert identity.gcp is not None
    gcp = identity.gcp
    email = gcp.service_account_email
    project = project_id(gcp)
    calls: list[Call] = []
    blockers: list[Finding] = []
    for subject, seen in (
        ("service account", observed.service_account),
        ("service account policy", observed.sa_policy),
        ("custom role", observed.role),
        ("project policy", observed.project_policy),
    ):
        if isinstance(seen, ReadDenied):
            blockers.append(_denied(subject, seen))
    if blockers:
        return [], blockers
    account = observed.service_account
    if email:
        assert not isinstance(account, ReadDenied)
        if account is None:
            calls.append(
                _iam(
                    f"POST v1/projects/{project}/serviceAccounts",
                    {
                        "accountId": email.split("@", 1)[0],
                        "serviceAccount": {
                            "displayName": identity.name[:100],
                            "description": f"workload identity {identity.name}",
                        },
                    },
                    f"service account {email} does not exist",
                    "iam.serviceAccounts.create",
                )
            )
        elif account.disabled:
            return [], [
                wrong(
                    "service account",
                    f"{email} is disabled",
                    "enable it if that was not deliberate",
                )
            ]
        sa_policy = observed.sa_policy
        assert not isinstance(sa_policy, ReadDenied)
        member = identity_principals(gcp, identity.name)
        changed = _policy_with(
            None if account is None else sa_policy,
            WORKLOAD_IDENTITY_USER,
            member,
            drop=lambda m: _from_pool(gcp, m),
        )
        if changed is not None:
            calls.append(
                _iam(
                    f"POST v1/projects/-/serviceAccounts/{email}:setIamPolicy",
                    {"policy": changed},
                    f"{WORKLOAD_IDENTITY_USER} on {email} must name {identity.name}'s "
                    "principals and no other identity's",
                    "iam.serviceAccounts.setIamPolicy",
                    deferred=account is None,
                )
            )
    role = observed.role
    assert not isinstance(role, ReadDenied)
    wanted = permissions.permissions
    role_id = custom_role_id(identity.name)
    if wanted and not project:
        return [], [
            wrong(
                "custom role",
                "no project to hold it",
                "set spec.gcp.projectId or spec.gcp.serviceAccountEmail",
            )
        ]
    if role is not None and role.deleted:
        return [], [
            wrong(
                "custom role",
                f"{role.name} was deleted; Google keeps its ID reserved for 37 days",
                f"undelete it (gcloud iam roles undelete {role_id} --project {project}) "
                "and run install again",
            )
        ]
    if wanted and role is None:
        calls.append(
            _iam(
                f"POST v1/projects/{project}/roles",
                {
                    "roleId": role_id,
                    "role": {
                        "title": f"workload identity {identity.name}"[:100],
                        "description": "spec.permissions.permissions of the workload identity",
                        "includedPermissions": list(wanted),
                        "stage": "GA",
                    },
                },
                f"custom role {role_id} does not exist",
                "iam.roles.create",
            )
        )
    elif role is not None and tuple(sorted(role.permissions)) != wanted:
        calls.append(
            _iam(
                f"PATCH v1/{role.name}?updateMask=includedPermissions",
                {"includedPermissions": list(wanted), "etag": role.etag},
                "spec.permissions.permissions changed",
                "iam.roles.update",
            )
        )
    if wanted:
        grantee = (
            f"serviceAccount:{email}"
            if email
            else identity_principals(gcp, identity.name)
        )
        project_policy = observed.project_policy
        assert not isinstance(project_policy, ReadDenied)
        changed = _policy_with(
            project_policy, custom_role_name(gcp, identity.name), grantee
        )
        if changed is not None:
            calls.append(
                Call(
                    CRM_API,
                    f"POST v1/projects/{project}:setIamPolicy",
                    {"policy": changed},
                    f"the project does not grant {role_id} to {grantee}",
                    permission="resourcemanager.projects.setIamPolicy",
                )
            )
    return calls, []


def manual_provider_note(gcp: GcpSpec, issuer_url: str, jwks_json: str | None) -> str:
    mapping = ",".join(f"{k}={v}" for k, v in ATTRIBUTE_MAPPING.items())
    create = [
        "gcloud iam workload-identity-pools providers create-oidc",
        gcp.provider_id,
        f"--project={gcp.project_number}",
        "--location=global",
        f"--workload-identity-pool={gcp.pool_id}",
        f"--issuer-uri={issuer_url}",
        f"--attribute-mapping={shlex.quote(mapping)}",
    ]
    if jwks_json is not None:
        create.append("--jwk-json-path=JWKS_FILE")
    return "\n".join(
        [
            "provider setup is manual: create this pool and provider, then run verify",
            f"  pool:              {pool_name(gcp)}",
            f"  provider:          {provider_name(gcp)}",
            f"  issuer URI:        {issuer_url}"
            + (
                "  (with the JWKS of --jwks-file inline)"
                if jwks_json is not None
                else ""
            ),
            f"  token audience:    {accepted_audiences(gcp)[0]}  (no allowed audiences needed)",
            "  attribute mapping: "
            + "\n                     ".join(
                f"{k}={v}" for k, v in ATTRIBUTE_MAPPING.items()
            ),
            f"  gcloud iam workload-identity-pools create {gcp.pool_id} "
            f"--project={gcp.project_number} --location=global",
            "  " + " ".join(create),
        ]
    )


def existing_account_note(identity: Identity) -> str:
    assert identity.gcp is not None
    gcp = identity.gcp
    member = identity_principals(gcp, identity.name)
    if not gcp.service_account_email:
        return (
            "no serviceAccountEmail (permissions.mode: existing): grant roles on the "
            f"resources to {member}"
        )
    return (
        f"service account {gcp.service_account_email} is managed elsewhere "
        "(permissions.mode: existing); it needs this binding:\n"
        f"gcloud iam service-accounts add-iam-policy-binding {gcp.service_account_email} "
        f"--role={WORKLOAD_IDENTITY_USER} --member={member}"
    )


def plan_gcp(
    identity: Identity,
    issuer_url: str,
    observed: GcpObserved,
    *,
    setup: ProviderSetup = ProviderSetup.AUTOMATIC,
    jwks_json: str | None = None,
) -> Plan:
    """The calls that make the project match the identity, or the blockers
    that stop `install` before any call."""
    assert identity.gcp is not None
    gcp = identity.gcp
    permissions = parse_permissions(identity)
    calls: list[Call] = []
    notes: list[str] = []
    blockers: list[Finding] = []
    if setup is ProviderSetup.MANUAL:
        notes.append(manual_provider_note(gcp, issuer_url, jwks_json))
    else:
        setup_calls, setup_blockers = _setup_calls(gcp, issuer_url, observed, jwks_json)
        calls += setup_calls
        blockers += setup_blockers
    if permissions.mode is RoleMode.MANAGED:
        role_calls, role_blockers = _managed_calls(identity, permissions, observed)
        calls += role_calls
        blockers += role_blockers
    else:
        notes.append(existing_account_note(identity))
        blockers += [
            f for f in _account_findings(identity, observed) if f.check is Check.WRONG
        ]
    return Plan(
        identity=identity.name,
        provider="gcp",
        calls=tuple(sorted(calls, key=lambda call: call.deferred)),
        notes=tuple(notes),
        blockers=tuple(blockers),
        setup={"mode": setup.value, "poolProvider": provider_name(gcp)},
    )


# --- verify -----------------------------------------------------------------


def _account_findings(identity: Identity, observed: GcpObserved) -> list[Finding]:
    assert identity.gcp is not None
    gcp = identity.gcp
    email = gcp.service_account_email
    if not email:
        return []
    account = observed.service_account
    if isinstance(account, ReadDenied):
        return [_denied("service account", account)]
    if account is None:
        return [
            wrong(
                "service account",
                f"{email} does not exist",
                "run install with permissions.mode: managed, or create it",
            )
        ]
    findings = [
        wrong("service account", f"{email} is disabled", "enable it")
        if account.disabled
        else ok("service account", f"{email} exists")
    ]
    policy = observed.sa_policy
    subject = f"{WORKLOAD_IDENTITY_USER} on {email}"
    if isinstance(policy, ReadDenied):
        return [*findings, _denied(subject, policy)]
    members = (policy or IamPolicy()).members(WORKLOAD_IDENTITY_USER)
    member = identity_principals(gcp, identity.name)
    others = sorted(m for m in members if _from_pool(gcp, m) and m != member)
    if member not in members:
        findings.append(
            wrong(
                subject,
                f"does not name {member}",
                "run install, or add the binding shown by `install`",
            )
        )
    else:
        findings.append(ok(subject, f"names {identity.name}'s principals"))
    if others:
        findings.append(
            wrong(
                subject,
                f"also lets {', '.join(others)} impersonate it",
                "remove those members so that only this identity's pods can",
            )
        )
    return findings


def _role_findings(
    identity: Identity, wanted: tuple[str, ...], observed: GcpObserved
) -> list[Finding]:
    assert identity.gcp is not None
    gcp = identity.gcp
    name = custom_role_name(gcp, identity.name)
    role = observed.role
    if isinstance(role, ReadDenied):
        return [_denied("custom role", role)]
    if role is None or role.deleted:
        state = "does not exist" if role is None else "was deleted"
        return [wrong("custom role", f"{name} {state}", "run install")]
    if tuple(sorted(role.permissions)) != wanted:
        return [
            wrong(
                "custom role",
                "differs from spec.permissions.permissions",
                "run install",
            )
        ]
    findings = [
        ok("custom role", f"{name} has the {len(wanted)} permissions of the spec")
    ]
    email = gcp.service_account_email
    grantee = (
        f"serviceAccount:{email}" if email else identity_principals(gcp, identity.name)
    )
    policy = observed.project_policy
    subject = "project policy"
    if isinstance(policy, ReadDenied):
        findings.append(_denied(subject, policy))
    elif grantee not in (policy or IamPolicy()).members(name):
        findings.append(
            wrong(subject, f"does not grant {name} to {grantee}", "run install")
        )
    else:
        findings.append(ok(subject, f"grants {name} to {grantee}"))
    return findings


def verify_gcp(
    identity: Identity,
    issuer_url: str,
    observed: GcpObserved,
    *,
    jwks_json: str | None = None,
) -> list[Finding]:
    """What is right, wrong or unreadable about this identity's GCP setup."""
    assert identity.gcp is not None
    gcp = identity.gcp
    permissions = parse_permissions(identity)
    findings = _pool_findings(gcp, observed.pool)
    findings += _provider_findings(gcp, issuer_url, observed.provider, jwks_json)
    findings += _account_findings(identity, observed)
    if permissions.mode is RoleMode.MANAGED and permissions.permissions:
        findings += _role_findings(identity, permissions.permissions, observed)
    return findings


def reads_needed(identity: Identity) -> set[str]:
    """Which GcpObserved fields `observe` must fill for this identity."""
    assert identity.gcp is not None
    needed = {"pool", "provider"}
    if identity.gcp.service_account_email:
        needed |= {"service_account", "sa_policy"}
    permissions = parse_permissions(identity)
    if permissions.mode is RoleMode.MANAGED and project_id(identity.gcp):
        needed |= {"role"}
        if permissions.permissions:
            needed |= {"project_policy"}
    return needed
