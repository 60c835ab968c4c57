"""Local stand-ins for Google's STS and IAM Credentials endpoints.

They check what Google checks: the exchange's audience names a registered
workload identity pool provider, the token's issuer is that provider's
issuer, its signature verifies against the issuer's JWKS, its `aud` is an
allowed audience (by default the provider's own resource name, with or
without `https:`), and impersonation needs a binding for the principal the
attribute mapping derives from the token.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from webhook.demo.verifier import TokenRejected, TokenVerifier


@dataclass(slots=True)
class Provider:
    issuer: str
    attribute_mapping: dict[str, str]
    allowed_audiences: list[str] = field(default_factory=list)


@dataclass(slots=True)
class FakeGcp:
    ca_file: str | None
    providers: dict[str, Provider] = field(default_factory=dict)
    """Keyed by `projects/N/locations/global/workloadIdentityPools/P/providers/X`."""
    bindings: dict[str, set[str]] = field(default_factory=dict)
    """Service account email -> members with roles/iam.workloadIdentityUser."""
    federated: dict[str, set[str]] = field(default_factory=dict)
    """Federated access token -> principals it stands for."""
    exchanges: list[dict[str, Any]] = field(default_factory=list)
    impersonations: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    def _principals(
        self, name: str, provider: Provider, claims: dict[str, Any]
    ) -> set[str]:
        pool = name.split("/providers/", 1)[0]
        base = f"//iam.googleapis.com/{pool}"
        members: set[str] = set()
        for target, expression in provider.attribute_mapping.items():
            match = re.fullmatch(
                r"""assertion(?:\.([\w]+)|\[['"]([^'"]+)['"]\])""", expression
            )
            if not match:
                continue
            value = claims.get(match.group(1) or match.group(2))
            if value is None:
                continue
            if target == "google.subject":
                members.add(f"principal:{base}/subject/{value}")
            elif target.startswith("attribute."):
                members.add(f"principalSet:{base}/{target}/{value}")
        return members

    def exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        audience = form.get("audience", "")
        name = audience.removeprefix("//iam.googleapis.com/")
        provider = self.providers.get(name)
        if provider is None:
            return 400, {
                "error": "invalid_target",
                "error_description": f"unknown provider {audience}",
            }
        if form.get("subject_token_type") != "urn:ietf:params:oauth:token-type:jwt":
            return 400, {
                "error": "invalid_request",
                "error_description": "subject_token_type must be jwt",
            }
        allowed = provider.allowed_audiences or [
            f"//iam.googleapis.com/{name}",
            f"https://iam.googleapis.com/{name}",
        ]
        verifier = TokenVerifier({provider.issuer}, ca_file=self.ca_file)
        try:
            claims = verifier.verify(form.get("subject_token", ""), audiences=allowed)
        except TokenRejected as exc:
            self.refusals.append(str(exc))
            return 400, {"error": "invalid_grant", "error_description": str(exc)}
        token = f"fed-{secrets.token_urlsafe(24)}"
        self.federated[token] = self._principals(name, provider, claims)
        self.exchanges.append(
            {"provider": name, "sub": claims["sub"], "aud": claims["aud"]}
        )
        body = {
            "access_token": token,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer",
            "expires_in": 3600,
        }
        return 200, body

    def impersonate(self, email: str, bearer: str) -> tuple[int, dict[str, Any]]:
        principals = self.federated.get(bearer)
        if principals is None:
            return 401, {"error": {"code": 401, "message": "unknown federated token"}}
        if not principals & self.bindings.get(email, set()):
            message = (
                f"Permission 'iam.serviceAccounts.getAccessToken' denied on {email}"
            )
            self.refusals.append(message)
            return 403, {
                "error": {
                    "code": 403,
                    "message": message,
                    "status": "PERMISSION_DENIED",
                }
            }
        self.impersonations.append(email)
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        return 200, {
            "accessToken": f"sa-{secrets.token_urlsafe(24)}",
            "expireTime": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    async def handle_token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        status, body = await asyncio.to_thread(self.exchange, form)
        return web.json_response(body, status=status)

    async def handle_generate(self, request: web.Request) -> web.Response:
        email = request.match_info["email"]
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        status, body = self.impersonate(email, bearer)
        return web.json_response(body, status=status)


def create_app(fake: FakeGcp) -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/token", fake.handle_token)
    app.router.add_post(
        "/v1/projects/-/serviceAccounts/{email}:generateAccessToken",
        fake.handle_generate,
    )
    return app
