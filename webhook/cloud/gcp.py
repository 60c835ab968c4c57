"""GCP I/O for install and verify: the IAM and Resource Manager REST APIs
through google-auth's authorized session.

Everything that decides lives in `gcp_plan`; this module reads what exists,
makes the calls a plan lists, waits for long-running operations, and turns
Google's error bodies into `CloudError`s that say what to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import google.auth.exceptions
import requests

from webhook.cloud.errors import CloudError, ErrorKind, explain_gcp
from webhook.cloud.gcp_plan import (
    CRM_API,
    IAM_API,
    CustomRole,
    GcpObserved,
    IamPolicy,
    Pool,
    PoolProvider,
    ServiceAccount,
    custom_role_name,
    plan_gcp,
    pool_name,
    project_id,
    provider_name,
    reads_needed,
    verify_gcp,
)
from webhook.cloud.plan import Call, Finding, Plan, ReadDenied
from webhook.cloud.spec import InstallOptions
from webhook.identities import Identity

DEFAULT_IAM_URL: Final = "https://iam.googleapis.com"
DEFAULT_RESOURCE_MANAGER_URL: Final = "https://cloudresourcemanager.googleapis.com"
CLOUD_PLATFORM_SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"

_GRPC = {
    3: (400, "INVALID_ARGUMENT"),
    5: (404, "NOT_FOUND"),
    6: (409, "ALREADY_EXISTS"),
    7: (403, "PERMISSION_DENIED"),
    8: (429, "RESOURCE_EXHAUSTED"),
    9: (400, "FAILED_PRECONDITION"),
    10: (409, "ABORTED"),
    16: (401, "UNAUTHENTICATED"),
}


class HttpSession(Protocol):
    """What install needs of google-auth's AuthorizedSession."""

    def request(
        self, method: str, url: str, *, json: Any = ..., timeout: Any = ...
    ) -> requests.Response: ...


class GcpCloud:
    """Reads and changes IAM for install and verify, through one session."""

    def __init__(
        self,
        session: HttpSession,
        *,
        iam_url: str = DEFAULT_IAM_URL,
        resource_manager_url: str = DEFAULT_RESOURCE_MANAGER_URL,
        poll_seconds: float = 1.0,
        operation_timeout: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._session = session
        self._bases = {
            IAM_API: iam_url.rstrip("/"),
            CRM_API: resource_manager_url.rstrip("/"),
        }
        self._poll_seconds = poll_seconds
        self._operation_timeout = operation_timeout
        self._sleep = sleep

    def _send(
        self, method: str, api: str, path: str, body: Any, *, permission: str
    ) -> tuple[int, dict[str, Any]]:
        url = f"{self._bases[api]}/{path.lstrip('/')}"
        try:
            response = self._session.request(method, url, json=body, timeout=30)
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
        ) as exc:
            raise CloudError(
                f"cannot reach {self._bases[api]}",
                "check the network, or --gcp-iam-url / --gcp-resource-manager-url",
                kind=ErrorKind.UNREACHABLE,
            ) from exc
        except google.auth.exceptions.GoogleAuthError as exc:
            raise CloudError(
                f"the Google credentials could not be used: {exc}",
                "run `gcloud auth application-default login` or set "
                "GOOGLE_APPLICATION_CREDENTIALS",
                kind=ErrorKind.CREDENTIALS,
            ) from exc
        try:
            payload = response.json() if response.content else {}
        except ValueError:
            payload = {"error": {"message": response.text[:300]}}
        if not isinstance(payload, dict):
            payload = {}
        return response.status_code, payload

    def _request(
        self, method: str, api: str, path: str, body: Any = None, *, permission: str
    ) -> dict[str, Any]:
        status, payload = self._send(method, api, path, body, permission=permission)
        if status >= 400:
            raise explain_gcp(
                f"{method} {path}", status, payload, permission=permission
            )
        return payload

    def _read(
        self, method: str, api: str, path: str, body: Any = None, *, permission: str
    ) -> dict[str, Any] | ReadDenied | None:
        status, payload = self._send(method, api, path, body, permission=permission)
        if status == 404:
            return None
        if status == 403:
            error = explain_gcp(
                f"{method} {path}", status, payload, permission=permission
            )
            if error.kind is ErrorKind.PERMISSION and error.permission:
                return ReadDenied(error.permission, str(error))
            raise error
        if status >= 400:
            raise explain_gcp(
                f"{method} {path}", status, payload, permission=permission
            )
        return payload

    # --- observe ------------------------------------------------------------

    def observe(self, identity: Identity) -> GcpObserved:
        assert identity.gcp is not None
        gcp = identity.gcp
        needed = reads_needed(identity)
        pool = self._read(
            "GET",
            IAM_API,
            f"v1/{pool_name(gcp)}",
            permission="iam.workloadIdentityPools.get",
        )
        provider: Any = None
        if pool is not None:
            provider = self._read(
                "GET",
                IAM_API,
                f"v1/{provider_name(gcp)}",
                permission="iam.workloadIdentityPoolProviders.get",
            )
        account: Any = None
        sa_policy: Any = None
        email = gcp.service_account_email
        if "service_account" in needed:
            account = self._read(
                "GET",
                IAM_API,
                f"v1/projects/{project_id(gcp)}/serviceAccounts/{email}",
                permission="iam.serviceAccounts.get",
            )
            if account is not None:
                sa_policy = self._read(
                    "POST",
                    IAM_API,
                    f"v1/projects/-/serviceAccounts/{email}:getIamPolicy"
                    "?options.requestedPolicyVersion=3",
                    permission="iam.serviceAccounts.getIamPolicy",
                )
        role: Any = None
        if "role" in needed:
            role = self._read(
                "GET",
                IAM_API,
                f"v1/{custom_role_name(gcp, identity.name)}",
                permission="iam.roles.get",
            )
        project_policy: Any = None
        if "project_policy" in needed:
            project_policy = self._read(
                "POST",
                CRM_API,
                f"v1/projects/{project_id(gcp)}:getIamPolicy",
                {"options": {"requestedPolicyVersion": 3}},
                permission="resourcemanager.projects.getIamPolicy",
            )
        return GcpObserved(
            pool=_convert(pool, _pool),
            provider=_convert(provider, _provider),
            service_account=_convert(account, _account),
            sa_policy=_convert(sa_policy, _policy),
            role=_convert(role, _role),
            project_policy=_convert(project_policy, _policy),
        )

    # --- the three things install and verify need ----------------------------

    def plan(self, identity: Identity, options: InstallOptions) -> Plan:
        return plan_gcp(
            identity,
            options.issuer_url,
            self.observe(identity),
            setup=options.setup,
            jwks_json=options.jwks_json,
        )

    def verify(self, identity: Identity, options: InstallOptions) -> list[Finding]:
        return verify_gcp(
            identity,
            options.issuer_url,
            self.observe(identity),
            jwks_json=options.jwks_json,
        )

    def apply(self, identity: Identity, call: Call) -> None:
        method, path = call.action.split(" ", 1)
        result = self._request(
            method, call.api, path, dict(call.params), permission=call.permission
        )
        if call.long_running:
            self._wait(result, call)

    def _wait(self, operation: Mapping[str, Any], call: Call) -> None:
        deadline = time.monotonic() + self._operation_timeout
        while not operation.get("done"):
            if time.monotonic() > deadline:
                raise CloudError(
                    f"{call.action} did not finish within {self._operation_timeout:.0f} s "
                    f"(operation {operation.get('name')})",
                    "run the command again later: it picks up where this one stopped",
                    kind=ErrorKind.OTHER,
                )
            self._sleep(self._poll_seconds)
            operation = self._request(
                "GET", IAM_API, f"v1/{operation['name']}", permission=call.permission
            )
        error = operation.get("error")
        if isinstance(error, Mapping):
            status, state = _GRPC.get(int(error.get("code", 2)), (500, "UNKNOWN"))
            raise explain_gcp(
                call.action,
                status,
                {"error": {**error, "status": state}},
                permission=call.permission,
            )


def _convert(raw: Any, build: Callable[[Mapping[str, Any]], Any]) -> Any:
    if isinstance(raw, Mapping):
        return build(raw)
    return raw if isinstance(raw, ReadDenied) else None


def _pool(raw: Mapping[str, Any]) -> Pool:
    return Pool(
        name=str(raw.get("name", "")),
        state=str(raw.get("state", "ACTIVE")),
        disabled=bool(raw.get("disabled", False)),
    )


def _provider(raw: Mapping[str, Any]) -> PoolProvider:
    oidc = raw.get("oidc") or {}
    return PoolProvider(
        name=str(raw.get("name", "")),
        issuer_uri=str(oidc.get("issuerUri", "")),
        attribute_mapping=dict(raw.get("attributeMapping") or {}),
        allowed_audiences=tuple(oidc.get("allowedAudiences") or ()),
        jwks_json=str(oidc.get("jwksJson", "")),
        state=str(raw.get("state", "ACTIVE")),
        disabled=bool(raw.get("disabled", False)),
    )


def _account(raw: Mapping[str, Any]) -> ServiceAccount:
    return ServiceAccount(
        email=str(raw.get("email", "")), disabled=bool(raw.get("disabled"))
    )


def _role(raw: Mapping[str, Any]) -> CustomRole:
    return CustomRole(
        name=str(raw.get("name", "")),
        permissions=tuple(raw.get("includedPermissions") or ()),
        etag=str(raw.get("etag", "")),
        deleted=bool(raw.get("deleted", False)),
    )


def _policy(raw: Mapping[str, Any]) -> IamPolicy:
    return IamPolicy(
        etag=str(raw.get("etag", "")),
        version=int(raw.get("version", 1) or 1),
        bindings=tuple(raw.get("bindings") or ()),
    )


def authorized_session() -> HttpSession:
    """Application default credentials in google-auth's authorized session."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    try:
        credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise CloudError(
            "no Google credentials found",
            "run `gcloud auth application-default login` or set "
            "GOOGLE_APPLICATION_CREDENTIALS to a credentials file",
            kind=ErrorKind.CREDENTIALS,
        ) from exc
    session: HttpSession = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
    return session
