"""What `install` applies for one identity, read from its raw `permissions`.

The webhook keeps `spec.permissions` as raw data; this module validates it
(naming the field in every error) and builds the *install snapshot*: the
parts of an identity that need `install` when they change. Scope, token
lifetime and description are not in it: they take effect without `install`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from webhook.identities import Identity, IdentityError, Provider


class RoleMode(StrEnum):
    MANAGED = "managed"
    """`install` creates the role or service account and its permissions."""
    EXISTING = "existing"
    """The role or service account is managed elsewhere; `install` only
    prints the trust it needs and `verify` checks it."""


class ProviderSetup(StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"


_GCP_PERMISSION = re.compile(r"^[a-z][a-zA-Z0-9]*(\.[a-zA-Z0-9]+){2,}$")


@dataclass(frozen=True, slots=True)
class Permissions:
    mode: RoleMode
    policy_document: Mapping[str, Any] | None = None
    """AWS, managed: the inline policy of the role."""
    permissions: tuple[str, ...] = ()
    """GCP, managed: the permissions of the identity's custom role."""


def parse_permissions(identity: Identity) -> Permissions:
    """`spec.permissions`, validated. Without a block the mode is `existing`:
    `install` never takes over a role nobody asked it to manage."""
    raw = identity.permissions
    path = "spec.permissions"

    def fail(field: str, message: str) -> IdentityError:
        return IdentityError(identity.name, field, message)

    unknown = set(raw) - {"mode", "policyDocument", "permissions"}
    if unknown:
        raise fail(
            path,
            f"unknown field(s) {sorted(unknown)}: expected mode, policyDocument, permissions",
        )
    document = raw.get("policyDocument")
    listed = raw.get("permissions")
    default = (
        RoleMode.MANAGED
        if document is not None or listed is not None
        else RoleMode.EXISTING
    )
    try:
        mode = RoleMode(str(raw.get("mode", default.value)))
    except ValueError:
        raise fail(
            f"{path}.mode", f"is {raw.get('mode')!r}: expected managed or existing"
        ) from None
    if identity.provider is Provider.AWS:
        if listed is not None:
            raise fail(
                f"{path}.permissions",
                "is for GCP identities; an AWS identity takes policyDocument",
            )
        if document is not None:
            _check_policy_document(identity.name, document)
        return Permissions(mode, policy_document=document)
    if document is not None:
        raise fail(
            f"{path}.policyDocument",
            "is for AWS identities; a GCP identity takes permissions: [...]",
        )
    if listed is not None and not isinstance(listed, list):
        raise fail(f"{path}.permissions", "must be a list of IAM permissions")
    names: list[str] = []
    for index, item in enumerate(listed or []):
        if not isinstance(item, str) or not _GCP_PERMISSION.fullmatch(item):
            raise fail(
                f"{path}.permissions[{index}]",
                f"{item!r} is not an IAM permission such as storage.objects.get",
            )
        names.append(item)
    return Permissions(mode, permissions=tuple(sorted(set(names))))


def _check_policy_document(name: str, document: Any) -> None:
    path = "spec.permissions.policyDocument"
    if not isinstance(document, Mapping):
        raise IdentityError(name, path, "must be an IAM policy document (a mapping)")
    statements = document.get("Statement")
    if not isinstance(statements, list | Mapping) or not statements:
        raise IdentityError(
            name, f"{path}.Statement", "is required: a list of statements"
        )
    if document.get("Version") not in (None, "2012-10-17", "2008-10-17"):
        raise IdentityError(name, f"{path}.Version", "must be 2012-10-17")


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def install_snapshot(
    identity: Identity, issuer_url: str, *, jwks_json: str | None = None
) -> dict[str, Any]:
    """Everything `install` applies for this identity, as plain data. How
    the provider was set up (automatic or manual) is recorded apart: it is
    how, not what."""
    permissions = parse_permissions(identity)
    body: dict[str, Any] = {
        "provider": identity.provider.value,
        "issuer": issuer_url,
        "permissions": {"mode": permissions.mode.value},
    }
    if identity.aws is not None:
        body["aws"] = {
            "roleArn": identity.aws.role_arn,
            "audience": identity.aws.audience,
        }
        if permissions.policy_document is not None:
            body["permissions"]["policyDocument"] = json.loads(
                canonical(permissions.policy_document)
            )
    if identity.gcp is not None:
        gcp = identity.gcp
        body["gcp"] = {
            "projectNumber": gcp.project_number,
            "poolId": gcp.pool_id,
            "providerId": gcp.provider_id,
            "serviceAccountEmail": gcp.service_account_email,
            "projectId": gcp.project_id,
        }
        if jwks_json is not None:
            body["inlineJwksSha256"] = hashlib.sha256(
                canonical(json.loads(jwks_json)).encode()
            ).hexdigest()
        if permissions.mode is RoleMode.MANAGED:
            body["permissions"]["permissions"] = list(permissions.permissions)
    return body


def snapshot_hash(snapshot: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical(snapshot).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class InstallOptions:
    """What install and verify need besides the identities themselves."""

    issuer_url: str
    setup: ProviderSetup = ProviderSetup.AUTOMATIC
    thumbprints: tuple[str, ...] = ()
    """AWS: certificate thumbprints for the OIDC provider; optional."""
    jwks_json: str | None = None
    """GCP: the issuer's JWKS, uploaded inline for an issuer Google cannot reach."""

    def snapshot(self, identity: Identity) -> dict[str, Any]:
        return install_snapshot(identity, self.issuer_url, jwks_json=self.jwks_json)
