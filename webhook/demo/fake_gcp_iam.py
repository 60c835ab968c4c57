"""A local stand-in for Google's IAM admin and Resource Manager REST APIs.

It keeps state and checks requests the way the documented APIs do:
- resource names (`projects/N/locations/global/workloadIdentityPools/P`,
  `projects/ID/serviceAccounts/EMAIL`, `projects/ID/roles/R`) and the ID
  rules of pools, providers, service accounts and custom roles;
- pools and providers are made, changed and deleted through long-running
  operations, and a deleted one keeps its ID (state DELETED) until undeleted;
- a deleted custom role keeps its ID too (`deleted: true`);
- getIamPolicy/setIamPolicy with etags: a stale etag is refused (ABORTED);
  roles and service accounts named in a binding must exist;
- a bearer token from its OAuth endpoint is required, and permissions listed
  in `denied` are refused with Google's PERMISSION_DENIED error body;
- `quotas` caps resources per project (RESOURCE_EXHAUSTED).

The Resource Manager API is served under `/crm/v1/`, IAM under `/v1/`.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs

from aiohttp import web

WORKLOAD_IDENTITY_USER: Final = "roles/iam.workloadIdentityUser"
TOKEN_CREATOR: Final = "roles/iam.serviceAccountTokenCreator"
_POOL_ID = re.compile(r"^(?!gcp-)[a-z0-9-]{4,32}$")
_ACCOUNT_ID = re.compile(r"^[a-z]([-a-z0-9]{4,28})[a-z0-9]$")
_ROLE_ID = re.compile(r"^[a-zA-Z0-9_.]{3,64}$")
_PERMISSION = re.compile(r"^[a-z][a-zA-Z0-9]*(\.[a-zA-Z0-9]+){2,}$")
_MAPPING_KEY = re.compile(r"^(google\.(subject|groups)|attribute\.[a-z0-9_]{1,100})$")
_MEMBER = re.compile(
    r"^(user|serviceAccount|group|domain):.+$"
    r"|^principal://iam\.googleapis\.com/projects/\d+/locations/global/"
    r"workloadIdentityPools/[a-z0-9-]+/subject/.+$"
    r"|^principalSet://iam\.googleapis\.com/projects/\d+/locations/global/"
    r"workloadIdentityPools/[a-z0-9-]+/(\*|group/.+|attribute\.[a-z0-9_]+/.+)$"
)
_POOL_FIELDS = {"displayName", "description", "disabled"}
_PROVIDER_FIELDS = {
    "displayName",
    "description",
    "disabled",
    "attributeMapping",
    "attributeCondition",
    "oidc.issuerUri",
    "oidc.allowedAudiences",
    "oidc.jwksJson",
}


class ApiError(Exception):
    """An error answered with Google's JSON error body."""

    def __init__(
        self, status: int, state: str, message: str, permission: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.state = state
        self.message = message
        self.permission = permission

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": self.status,
            "message": self.message,
            "status": self.state,
        }
        if self.permission:
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "IAM_PERMISSION_DENIED",
                    "domain": "iam.googleapis.com",
                    "metadata": {"permission": self.permission},
                }
            ]
        return {"error": error}


def _invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message)


def _missing(name: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"Requested entity was not found: {name}")


def _etag() -> str:
    return base64.b64encode(secrets.token_bytes(8)).decode()


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any]


Handler = Callable[["FakeIam", Request, re.Match[str]], dict[str, Any]]


@dataclass(slots=True)
class FakeIam:
    projects: dict[str, str] = field(default_factory=dict)
    """Project ID -> project number."""
    refresh_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    """What the OAuth endpoint exchanges for an admin access token."""
    denied: set[str] = field(default_factory=set)
    """Permissions the admin lacks: calls that need them get PERMISSION_DENIED."""
    quotas: dict[str, int] = field(default_factory=dict)
    """Per project: `workloadIdentityPools`, `serviceAccounts`, `roles`."""
    admin_tokens: set[str] = field(default_factory=set)
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    service_accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Resource name (`projects/ID` or `projects/ID/serviceAccounts/EMAIL`) -> policy."""
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    """`METHOD path` of every admin request, in order."""

    # --- names --------------------------------------------------------------

    def _number(self, project: str) -> str:
        if project in self.projects.values():
            return project
        if project in self.projects:
            return self.projects[project]
        raise _missing(f"projects/{project}")

    def _project_id(self, project: str) -> str:
        if project in self.projects:
            return project
        for project_id, number in self.projects.items():
            if number == project:
                return project_id
        raise _missing(f"projects/{project}")

    def _quota(self, kind: str, project: str, count: int) -> None:
        limit = self.quotas.get(kind)
        if limit is not None and count >= limit:
            raise ApiError(
                429,
                "RESOURCE_EXHAUSTED",
                f"Quota exceeded for {kind} in project {project} (limit {limit}).",
            )

    def _operation(self, resource: str, result: dict[str, Any]) -> dict[str, Any]:
        name = f"{resource}/operations/{uuid.uuid4().hex}"
        self.operations[name] = {"name": name, "done": True, "response": result}
        return {"name": name, "done": False}

    # --- pools and providers -------------------------------------------------

    def _pool(self, project: str, pool: str) -> tuple[str, dict[str, Any] | None]:
        name = f"projects/{self._number(project)}/locations/global/workloadIdentityPools/{pool}"
        return name, self.pools.get(name)

    def get_pool(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        name, pool = self._pool(match["project"], match["pool"])
        if pool is None:
            raise _missing(name)
        return pool

    def create_pool(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        pool_id = request.query.get("workloadIdentityPoolId", "")
        if not _POOL_ID.fullmatch(pool_id):
            raise _invalid(
                "workloadIdentityPoolId must be 4 to 32 of [a-z0-9-] and not start with gcp-"
            )
        name, existing = self._pool(match["project"], pool_id)
        if existing is not None:
            raise ApiError(
                409, "ALREADY_EXISTS", f"Requested entity already exists: {name}"
            )
        unknown = set(request.body) - _POOL_FIELDS
        if unknown:
            raise _invalid(
                f"Unknown field(s) in WorkloadIdentityPool: {sorted(unknown)}"
            )
        if len(str(request.body.get("displayName", ""))) > 32:
            raise _invalid("displayName must be at most 32 characters")
        project = self._number(match["project"])
        self._quota(
            "workloadIdentityPools",
            project,
            sum(1 for p in self.pools if p.startswith(f"projects/{project}/")),
        )
        pool = {
            "name": name,
            "displayName": request.body.get("displayName", ""),
            "description": request.body.get("description", ""),
            "disabled": bool(request.body.get("disabled", False)),
            "state": "ACTIVE",
        }
        self.pools[name] = pool
        return self._operation(name, pool)

    def delete_pool(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        pool = self.get_pool(request, match)
        pool["state"] = "DELETED"
        return self._operation(pool["name"], pool)

    def undelete_pool(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        pool = self.get_pool(request, match)
        pool["state"] = "ACTIVE"
        return self._operation(pool["name"], pool)

    def _provider(self, match: re.Match[str]) -> tuple[str, dict[str, Any] | None]:
        pool_name, pool = self._pool(match["project"], match["pool"])
        if pool is None:
            raise _missing(pool_name)
        name = f"{pool_name}/providers/{match['provider']}"
        return name, self.providers.get(name)

    def get_provider(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        name, provider = self._provider(match)
        if provider is None:
            raise _missing(name)
        return provider

    @staticmethod
    def _check_provider(body: dict[str, Any]) -> None:
        oidc = body.get("oidc")
        if not isinstance(oidc, dict):
            raise _invalid("An OIDC provider needs oidc.issuerUri")
        issuer = str(oidc.get("issuerUri", ""))
        if not issuer.startswith("https://"):
            raise _invalid(f"The issuer URI {issuer!r} must be an https URL")
        jwks = oidc.get("jwksJson")
        if jwks:
            try:
                keys = json.loads(jwks).get("keys")
            except (ValueError, AttributeError):
                keys = None
            if not isinstance(keys, list) or not keys:
                raise _invalid("oidc.jwksJson must be a JWKS with at least one key")
        audiences = oidc.get("allowedAudiences") or []
        if not isinstance(audiences, list) or len(audiences) > 10:
            raise _invalid("oidc.allowedAudiences takes at most 10 audiences")
        mapping = body.get("attributeMapping")
        if not isinstance(mapping, dict) or "google.subject" not in mapping:
            raise _invalid("attributeMapping must map google.subject")
        for key, value in mapping.items():
            if not _MAPPING_KEY.fullmatch(key) or not str(value).strip():
                raise _invalid(f"Invalid attribute mapping {key}={value!r}")
        if len(str(body.get("displayName", ""))) > 32:
            raise _invalid("displayName must be at most 32 characters")

    def create_provider(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        provider_id = request.query.get("workloadIdentityPoolProviderId", "")
        if not _POOL_ID.fullmatch(provider_id):
            raise _invalid(
                "workloadIdentityPoolProviderId must be 4 to 32 of [a-z0-9-] "
                "and not start with gcp-"
            )
        pool_name, pool = self._pool(match["project"], match["pool"])
        if pool is None:
            raise _missing(pool_name)
        if pool["state"] != "ACTIVE":
            raise ApiError(
                400, "FAILED_PRECONDITION", f"The pool {pool_name} is deleted"
            )
        name = f"{pool_name}/providers/{provider_id}"
        if name in self.providers:
            raise ApiError(
                409, "ALREADY_EXISTS", f"Requested entity already exists: {name}"
            )
        self._check_provider(request.body)
        provider = {
            **json.loads(json.dumps(request.body)),
            "name": name,
            "state": "ACTIVE",
            "disabled": bool(request.body.get("disabled", False)),
        }
        self.providers[name] = provider
        return self._operation(name, provider)

    def update_provider(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        provider = self.get_provider(request, match)
        mask = [m for m in request.query.get("updateMask", "").split(",") if m]
        if not mask:
            raise _invalid("updateMask is required")
        unknown = set(mask) - _PROVIDER_FIELDS
        if unknown:
            raise _invalid(f"Invalid update mask field(s): {sorted(unknown)}")
        updated = json.loads(json.dumps(provider))
        for path in mask:
            head, _, tail = path.partition(".")
            source = request.body.get(head, {} if tail else None)
            if tail:
                updated.setdefault(head, {})
                value = source.get(tail) if isinstance(source, dict) else None
                if value in (None, "", []):
                    updated[head].pop(tail, None)
                else:
                    updated[head][tail] = value
            elif source is None:
                updated.pop(head, None)
            else:
                updated[head] = source
        self._check_provider(updated)
        provider.clear()
        provider.update(updated)
        return self._operation(provider["name"], provider)

    def delete_provider(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        provider = self.get_provider(request, match)
        provider["state"] = "DELETED"
        return self._operation(provider["name"], provider)

    def get_operation(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        name = request.path.removeprefix("/v1/")
        operation = self.operations.get(name)
        if operation is None:
            raise _missing(name)
        return operation

    # --- service accounts -----------------------------------------------------

    def _account(self, match: re.Match[str]) -> dict[str, Any]:
        project, email = match["project"], match["email"]
        account = self.service_accounts.get(email)
        if account is None or (project != "-" and account["projectId"] != project):
            raise _missing(f"projects/{project}/serviceAccounts/{email}")
        return account

    def get_account(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        return self._account(match)

    def create_account(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        project = self._project_id(match["project"])
        if project != match["project"]:
            raise _invalid("Service accounts are created under projects/PROJECT_ID")
        account_id = str(request.body.get("accountId", ""))
        if not _ACCOUNT_ID.fullmatch(account_id):
            raise _invalid(
                f"accountId {account_id!r} must be 6 to 30 of [a-z0-9-], start with a "
                "letter and not end with -"
            )
        email = f"{account_id}@{project}.iam.gserviceaccount.com"
        if email in self.service_accounts:
            raise ApiError(
                409,
                "ALREADY_EXISTS",
                f"Service account {account_id} already exists within project projects/{project}.",
            )
        self._quota(
            "serviceAccounts",
            project,
            sum(1 for a in self.service_accounts.values() if a["projectId"] == project),
        )
        details = request.body.get("serviceAccount") or {}
        if len(str(details.get("displayName", ""))) > 100:
            raise _invalid("displayName must be at most 100 characters")
        account = {
            "name": f"projects/{project}/serviceAccounts/{email}",
            "projectId": project,
            "uniqueId": str(secrets.randbelow(10**20)),
            "email": email,
            "displayName": details.get("displayName", ""),
            "description": details.get("description", ""),
            "etag": _etag(),
            "oauth2ClientId": str(secrets.randbelow(10**20)),
            "disabled": False,
        }
        self.service_accounts[email] = account
        self.policies[account["name"]] = {"version": 1, "etag": "ACAB"}
        return account

    def delete_account(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        account = self._account(match)
        del self.service_accounts[account["email"]]
        self.policies.pop(account["name"], None)
        return {}

    # --- custom roles ---------------------------------------------------------

    def _role_name(self, match: re.Match[str]) -> str:
        return f"projects/{self._project_id(match['project'])}/roles/{match['role']}"

    def get_role(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        name = self._role_name(match)
        role = self.roles.get(name)
        if role is None:
            raise _missing(name)
        return role

    @staticmethod
    def _check_permissions(permissions: Any) -> list[str]:
        if not isinstance(permissions, list):
            raise _invalid("includedPermissions must be a list")
        for permission in permissions:
            if not isinstance(permission, str) or not _PERMISSION.fullmatch(permission):
                raise _invalid(f"Permission {permission} is not valid.")
        return sorted(set(permissions))

    def create_role(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        project = self._project_id(match["project"])
        role_id = str(request.body.get("roleId", ""))
        if not _ROLE_ID.fullmatch(role_id):
            raise _invalid(f"roleId {role_id!r} must be 3 to 64 of [a-zA-Z0-9_.]")
        name = f"projects/{project}/roles/{role_id}"
        existing = self.roles.get(name)
        if existing is not None:
            state = (
                " and is deleted; undelete it or use another ID"
                if existing["deleted"]
                else ""
            )
            raise ApiError(
                409,
                "ALREADY_EXISTS",
                f"A role named {role_id} in {project} already exists{state}.",
            )
        self._quota(
            "roles",
            project,
            sum(1 for r in self.roles if r.startswith(f"projects/{project}/")),
        )
        body = request.body.get("role") or {}
        if len(str(body.get("title", ""))) > 100:
            raise _invalid("title must be at most 100 characters")
        if body.get("stage", "GA") not in (
            "ALPHA",
            "BETA",
            "GA",
            "DEPRECATED",
            "DISABLED",
            "EAP",
        ):
            raise _invalid(f"Invalid stage {body.get('stage')!r}")
        role = {
            "name": name,
            "title": body.get("title", ""),
            "description": body.get("description", ""),
            "includedPermissions": self._check_permissions(
                body.get("includedPermissions", [])
            ),
            "stage": body.get("stage", "GA"),
            "etag": _etag(),
            "deleted": False,
        }
        self.roles[name] = role
        return role

    def update_role(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        role = self.get_role(request, match)
        if role["deleted"]:
            raise ApiError(
                400, "FAILED_PRECONDITION", f"Role {role['name']} is deleted."
            )
        etag = request.body.get("etag")
        if etag and etag != role["etag"]:
            raise ApiError(
                409,
                "ABORTED",
                "There were concurrent policy changes. Please retry the whole "
                "read-modify-write with exponential backoff.",
            )
        mask = [m for m in request.query.get("updateMask", "").split(",") if m]
        allowed = {"title", "description", "includedPermissions", "stage"}
        if not mask or set(mask) - allowed:
            raise _invalid(f"updateMask must name some of {sorted(allowed)}")
        for key in mask:
            value = request.body.get(key)
            if key == "includedPermissions":
                value = self._check_permissions(value or [])
            role[key] = value
        role["etag"] = _etag()
        return role

    def delete_role(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        role = self.get_role(request, match)
        role["deleted"] = True
        role["etag"] = _etag()
        return role

    def undelete_role(self, request: Request, match: re.Match[str]) -> dict[str, Any]:
        role = self.get_role(request, match)
        role["deleted"] = False
        role["etag"] = _etag()
        return role

    # --- IAM policies ---------------------------------------------------------

    def _policy(self, resource: str) -> dict[str, Any]:
        return self.policies.setdefault(resource, {"version": 1, "etag": "ACAB"})

    def _check_binding(self, binding: Any) -> None:
        if not isinstance(binding, dict) or not binding.get("role"):
            raise _invalid("Every binding needs a role")
        role = str(binding["role"])
        if role.startswith("projects/"):
            custom = self.roles.get(role)
            if custom is None or custom["deleted"]:
                raise _invalid(
                    f"Role ({role}) does not exist in the resource's hierarchy."
                )
        elif not role.startswith("roles/"):
            raise _invalid(f"Role {role} is not a valid role name.")
        for member in binding.get("members", []):
            if not isinstance(member, str) or not _MEMBER.fullmatch(member):
                raise _invalid(f"Invalid member {member!r}.")
            email = member.removeprefix("serviceAccount:")
            if email != member and email not in self.service_accounts:
                raise _invalid(f"Service account {email} does not exist.")

    def _set_policy(self, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        policy = body.get("policy")
        if not isinstance(policy, dict):
            raise _invalid("setIamPolicy needs a policy")
        current = self._policy(resource)
        if policy.get("etag") and policy["etag"] != current["etag"]:
            raise ApiError(
                409,
                "ABORTED",
                "There were concurrent policy changes. Please retry the whole "
                "read-modify-write with exponential backoff.",
            )
        bindings = [b for b in policy.get("bindings", []) if b.get("members")]
        for binding in bindings:
            self._check_binding(binding)
            if binding.get("condition") and policy.get("version") != 3:
                raise _invalid("Conditional bindings need policy version 3")
        updated = {
            "version": policy.get("version", 1),
            "etag": _etag(),
            "bindings": bindings,
        }
        self.policies[resource] = updated
        return updated

    def account_get_policy(
        self, request: Request, match: re.Match[str]
    ) -> dict[str, Any]:
        return self._policy(self._account(match)["name"])

    def account_set_policy(
        self, request: Request, match: re.Match[str]
    ) -> dict[str, Any]:
        return self._set_policy(self._account(match)["name"], request.body)

    def project_get_policy(
        self, request: Request, match: re.Match[str]
    ) -> dict[str, Any]:
        return self._policy(f"projects/{self._project_id(match['project'])}")

    def project_set_policy(
        self, request: Request, match: re.Match[str]
    ) -> dict[str, Any]:
        return self._set_policy(
            f"projects/{self._project_id(match['project'])}", request.body
        )

    # --- dispatch -------------------------------------------------------------

    def members_of(self, email: str, *roles: str) -> set[str]:
        """Members of `roles` on a service account: who may impersonate it."""
        account = self.service_accounts.get(email)
        if account is None or account["disabled"]:
            return set()
        policy = self._policy(account["name"])
        return {
            member
            for binding in policy.get("bindings", [])
            if binding["role"] in roles and not binding.get("condition")
            for member in binding["members"]
        }

    def handle(self, request: Request, bearer: str) -> tuple[int, dict[str, Any]]:
        self.requests.append(f"{request.method} {request.path}")
        if bearer not in self.admin_tokens:
            return 401, ApiError(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials.",
            ).body()
        for method, pattern, handler, permission in _ROUTES:
            match = pattern.fullmatch(request.path)
            if match is None or method != request.method:
                continue
            if permission in self.denied:
                resource = request.path.split("/v1/", 1)[1].split(":", 1)[0]
                return 403, ApiError(
                    403,
                    "PERMISSION_DENIED",
                    f"Permission '{permission}' denied on resource "
                    f"'//iam.googleapis.com/{resource}' (or it may not exist).",
                    permission,
                ).body()
            try:
                return 200, handler(self, request, match)
            except ApiError as exc:
                return exc.status, exc.body()
        return 404, ApiError(
            404, "NOT_FOUND", f"No method {request.method} {request.path}"
        ).body()


_PROJECT = r"projects/(?P<project>[^/:]+)"
_POOLS = rf"/v1/{_PROJECT}/locations/global/workloadIdentityPools"
_POOL = rf"{_POOLS}/(?P<pool>[a-z0-9-]+)"
_PROVIDER = rf"{_POOL}/providers/(?P<provider>[a-z0-9-]+)"
_ACCOUNT = rf"/v1/{_PROJECT}/serviceAccounts/(?P<email>[^/:]+)"
_ROLE = rf"/v1/{_PROJECT}/roles/(?P<role>[^/:]+)"
_IAM = "iam.workloadIdentityPools"
_PROVIDERS = "iam.workloadIdentityPoolProviders"
_ROUTES: list[tuple[str, re.Pattern[str], Handler, str]] = [
    (m, re.compile(p), h, perm)
    for m, p, h, perm in [
        ("GET", _POOL, FakeIam.get_pool, f"{_IAM}.get"),
        ("POST", _POOLS, FakeIam.create_pool, f"{_IAM}.create"),
        ("DELETE", _POOL, FakeIam.delete_pool, f"{_IAM}.delete"),
        ("POST", rf"{_POOL}:undelete", FakeIam.undelete_pool, f"{_IAM}.undelete"),
        ("GET", rf"{_POOL}(/providers/[a-z0-9-]+)?/operations/[^/]+", FakeIam.get_operation,
         f"{_IAM}.get"),
        ("GET", _PROVIDER, FakeIam.get_provider, f"{_PROVIDERS}.get"),
        ("POST", rf"{_POOL}/providers", FakeIam.create_provider, f"{_PROVIDERS}.create"),
        ("PATCH", _PROVIDER, FakeIam.update_provider, f"{_PROVIDERS}.update"),
        ("DELETE", _PROVIDER, FakeIam.delete_provider, f"{_PROVIDERS}.delete"),
        ("GET", _ACCOUNT, FakeIam.get_account, "iam.serviceAccounts.get"),
        ("POST", rf"/v1/{_PROJECT}/serviceAccounts", FakeIam.create_account,
         "iam.serviceAccounts.create"),
        ("DELETE", _ACCOUNT, FakeIam.delete_account, "iam.serviceAccounts.delete"),
        ("POST", rf"{_ACCOUNT}:getIamPolicy", FakeIam.account_get_policy,
         "iam.serviceAccounts.getIamPolicy"),
        ("POST", rf"{_ACCOUNT}:setIamPolicy", FakeIam.account_set_policy,
         "iam.serviceAccounts.setIamPolicy"),
        ("GET", _ROLE, FakeIam.get_role, "iam.roles.get"),
        ("POST", rf"/v1/{_PROJECT}/roles", FakeIam.create_role, "iam.roles.create"),
        ("PATCH", _ROLE, FakeIam.update_role, "iam.roles.update"),
        ("DELETE", _ROLE, FakeIam.delete_role, "iam.roles.delete"),
        ("POST", rf"{_ROLE}:undelete", FakeIam.undelete_role, "iam.roles.undelete"),
        ("POST", rf"/crm/v1/{_PROJECT}:getIamPolicy", FakeIam.project_get_policy,
         "resourcemanager.projects.getIamPolicy"),
        ("POST", rf"/crm/v1/{_PROJECT}:setIamPolicy", FakeIam.project_set_policy,
         "resourcemanager.projects.setIamPolicy"),
    ]
]  # fmt: skip


async def _handle_admin(fake: FakeIam, request: web.Request) -> web.Response:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        return web.json_response(_invalid("The body is not JSON").body(), status=400)
    if not isinstance(body, dict):
        body = {}
    query = {k: v[-1] for k, v in parse_qs(request.query_string).items()}
    bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
    status, answer = fake.handle(
        Request(request.method, request.path, query, body), bearer
    )
    return web.json_response(answer, status=status)


async def _handle_oauth(fake: FakeIam, request: web.Request) -> web.Response:
    form = await request.post()
    if (
        form.get("grant_type") != "refresh_token"
        or form.get("refresh_token") != fake.refresh_token
    ):
        return web.json_response(
            {"error": "invalid_grant", "error_description": "Bad refresh token"},
            status=400,
        )
    token = f"admin-{secrets.token_urlsafe(24)}"
    fake.admin_tokens.add(token)
    return web.json_response(
        {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}
    )


def add_routes(app: web.Application, fake: FakeIam) -> None:
    """IAM under /v1/, Resource Manager under /crm/v1/, OAuth at /oauth2/token."""

    async def admin(request: web.Request) -> web.Response:
        return await _handle_admin(fake, request)

    async def oauth(request: web.Request) -> web.Response:
        return await _handle_oauth(fake, request)

    app.router.add_post("/oauth2/token", oauth)
    app.router.add_route("*", "/v1/{tail:.*}", admin)
    app.router.add_route("*", "/crm/v1/{tail:.*}", admin)


def admin_credentials(fake: FakeIam, base_url: str) -> Any:
    """google-auth user credentials that refresh at the fake's OAuth endpoint.

    Built directly: google-auth ignores `token_uri` in an authorized_user
    file and would refresh at Google's real endpoint.
    """
    from google.oauth2.credentials import Credentials

    token_uri = f"{base_url.rstrip('/')}/oauth2/token"
    credentials = Credentials(  # type: ignore[no-untyped-call]
        token=None,
        refresh_token=fake.refresh_token,
        token_uri=token_uri,
        client_id="workload-identity-fake",
        client_secret="fake-secret",  # noqa: S106 - the fake accepts any client
    )
    if credentials.token_uri != token_uri:
        raise RuntimeError(
            "google-auth replaced the fake's token URI; refusing to go on"
        )
    return credentials
