"""Cloud errors translated into what went wrong and what to do about it.

`explain_aws` and `explain_gcp` are pure: they take the error code and
message a cloud returned and give a `CloudError` whose text names the
missing permission, the quota, the reserved name or the unreachable issuer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class ErrorKind(StrEnum):
    PERMISSION = "permission"
    QUOTA = "quota"
    RESERVED = "reserved"
    ISSUER = "issuer-unreachable"
    CONFLICT = "conflict"
    NOT_FOUND = "not-found"
    INVALID = "invalid"
    CREDENTIALS = "credentials"
    UNREACHABLE = "endpoint-unreachable"
    OTHER = "other"


class CloudError(Exception):
    """A cloud call that failed: `what` happened, `hint` says what to do."""

    def __init__(
        self, what: str, hint: str, *, kind: ErrorKind, permission: str = ""
    ) -> None:
        self.what = what
        self.hint = hint
        self.kind = kind
        self.permission = permission
        super().__init__(f"{what}; {hint}" if hint else what)


_AWS_PERMISSION = re.compile(r"not authorized to perform:? ([\w-]+:[\w*]+)")
_AWS_ISSUER = re.compile(
    r"(?i)thumbprint|could ?n[o']t (retrieve|fetch|connect|reach)"
    r"|unable to (retrieve|fetch|connect)|verification key|openid.configuration"
)


def aws_permission(operation: str) -> str:
    """The IAM action an API operation needs: CreateRole needs iam:CreateRole."""
    service = "sts" if operation in ("GetCallerIdentity",) else "iam"
    return f"{service}:{operation}"


def explain_aws(operation: str, code: str, message: str) -> CloudError:
    """An AWS error code and message as a CloudError that says what to do."""
    said = f"AWS refused {operation}: {code}: {message}".rstrip(": ")
    if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
        found = _AWS_PERMISSION.search(message)
        permission = found.group(1) if found else aws_permission(operation)
        return CloudError(
            f"missing permission {permission} ({operation} was denied)",
            f"grant {permission} to the AWS credentials that run this command",
            kind=ErrorKind.PERMISSION,
            permission=permission,
        )
    if code == "LimitExceeded":
        return CloudError(
            said,
            "an IAM quota is reached (roles, OIDC providers or policy size per account): "
            "delete unused ones or request an increase in Service Quotas",
            kind=ErrorKind.QUOTA,
        )
    if code in ("InvalidIdentityToken", "IDPCommunicationError") or (
        code == "InvalidInput" and _AWS_ISSUER.search(message)
    ):
        return CloudError(
            said,
            "AWS could not fetch the issuer's discovery document or JWKS: serve them on a "
            "public HTTPS URL with a publicly trusted certificate "
            "(`python -m webhook issuer discovery|jwks` prints them for hosting)",
            kind=ErrorKind.ISSUER,
        )
    if code == "EntityAlreadyExists":
        return CloudError(
            said,
            "someone created it at the same time: run the command again",
            kind=ErrorKind.CONFLICT,
        )
    if code in ("ConcurrentModification", "Throttling", "ServiceFailure"):
        return CloudError(
            said,
            "a temporary condition: run the command again",
            kind=ErrorKind.CONFLICT,
        )
    if code == "MalformedPolicyDocument":
        return CloudError(
            said,
            "fix spec.permissions.policyDocument (AWS names the problem above)",
            kind=ErrorKind.INVALID,
        )
    if code in (
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "UnrecognizedClientException",
    ):
        return CloudError(
            said,
            "the AWS credentials are not valid: refresh them (AWS_PROFILE, "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an SSO login)",
            kind=ErrorKind.CREDENTIALS,
        )
    if code == "NoSuchEntity":
        return CloudError(
            said, "check the name in the identity", kind=ErrorKind.NOT_FOUND
        )
    return CloudError(said, "", kind=ErrorKind.OTHER)


def _gcp_permission(error: Mapping[str, Any]) -> str:
    for detail in error.get("details") or []:
        if isinstance(detail, Mapping):
            metadata = detail.get("metadata")
            if isinstance(metadata, Mapping) and metadata.get("permission"):
                return str(metadata["permission"])
    found = re.search(r"Permission '([^']+)'", str(error.get("message", "")))
    return found.group(1) if found else ""


def _gcp_reason(error: Mapping[str, Any]) -> str:
    for detail in error.get("details") or []:
        if isinstance(detail, Mapping) and detail.get("reason"):
            return str(detail["reason"])
    return ""


def explain_gcp(
    call: str, status: int, body: Mapping[str, Any], *, permission: str = ""
) -> CloudError:
    """A Google API error body (`{"error": {...}}`) as a CloudError.

    `permission` is what the call needs, for errors that do not name it.
    """
    error = body.get("error") if isinstance(body.get("error"), Mapping) else {}
    assert isinstance(error, Mapping)
    state = str(error.get("status", ""))
    message = str(error.get("message", "")) or f"HTTP {status}"
    said = f"Google refused {call}: {state or status}: {message}"
    reason = _gcp_reason(error)
    if status == 403 and reason == "SERVICE_DISABLED":
        return CloudError(
            said,
            "enable the API in the project (`gcloud services enable iam.googleapis.com "
            "cloudresourcemanager.googleapis.com iamcredentials.googleapis.com "
            "sts.googleapis.com`)",
            kind=ErrorKind.PERMISSION,
        )
    if status == 403 or state == "PERMISSION_DENIED":
        needed = _gcp_permission(error) or permission
        return CloudError(
            f"missing permission {needed or '(not named)'} ({call} was denied)",
            f"grant a role that includes {needed or 'it'} to the account that runs this "
            "command",
            kind=ErrorKind.PERMISSION,
            permission=needed,
        )
    if status == 429 or state == "RESOURCE_EXHAUSTED":
        return CloudError(
            said,
            "a quota is reached (pools, providers, service accounts or custom roles per "
            "project): delete unused ones or request more quota in the console",
            kind=ErrorKind.QUOTA,
        )
    if "deleted" in message.lower() and state in (
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
    ):
        return CloudError(
            said,
            "the ID belongs to a deleted resource and stays reserved (30 days for pools "
            "and providers, 37 for custom roles): undelete it or choose another ID",
            kind=ErrorKind.RESERVED,
        )
    if state == "ABORTED" or status == 409:
        return CloudError(
            said,
            "it changed at the same time: run the command again",
            kind=ErrorKind.CONFLICT,
        )
    if status == 401 or state == "UNAUTHENTICATED":
        return CloudError(
            said,
            "the Google credentials are not valid: run `gcloud auth application-default "
            "login` or set GOOGLE_APPLICATION_CREDENTIALS",
            kind=ErrorKind.CREDENTIALS,
        )
    if state == "INVALID_ARGUMENT" and re.search(r"(?i)issuer|jwks|discovery", message):
        return CloudError(
            said,
            "Google could not use the issuer: its URL must be public HTTPS with a "
            "publicly trusted certificate, or pass --jwks-file to upload the JWKS inline",
            kind=ErrorKind.ISSUER,
        )
    if status == 404 or state == "NOT_FOUND":
        return CloudError(
            said,
            "check the project number or ID in the identity",
            kind=ErrorKind.NOT_FOUND,
        )
    return CloudError(
        said, "", kind=ErrorKind.INVALID if status == 400 else ErrorKind.OTHER
    )
