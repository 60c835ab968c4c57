"""Local stand-ins for Google's STS and IAM Credentials endpoints, served
together with the IAM admin fake (`fake_gcp_iam`) whose state they read.

They check what Google checks: the exchange's audience names an active
provider of an active workload identity pool, the token's issuer is that
provider's issuer, its signature verifies against the provider's inline JWKS
or else the issuer's JWKS found through discovery, its `aud` is an allowed
audience (by default the provider's own resource name, with or without
`https:`), the attribute mapping yields `google.subject`, and impersonation
needs roles/iam.workloadIdentityUser on the service account for a principal
the attribute mapping derives from the token.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from webhook.demo.fake_gcp_iam import (
    TOKEN_CREATOR,
    WORKLOAD_IDENTITY_USER,
    FakeIam,
    add_routes,
)
from webhook.demo.verifier import TokenRejected, TokenVerifier

_INVALID_TARGET = (
    'The target service indicated by the "audience" parameters is invalid. This might '
    "either be because the pool or provider is disabled or deleted or because it "
    "doesn't exist."
)


def mapped(expression: str, claims: dict[str, Any]) -> str | None:
    """An attribute mapping of the forms the product uses: `assertion.sub`
    and `assertion['claim/with/slashes']`; None when the claim is absent."""
    match = re.fullmatch(r"""assertion(?:\.([\w]+)|\[['"]([^'"]+)['"]\])""", expression)
    if not match:
        return None
    value = claims.get(match.group(1) or match.group(2))
    return None if value is None else str(value)


@dataclass(slots=True)
class FakeGcp:
    ca_file: str | None
    iam: FakeIam = field(default_factory=FakeIam)
    """Pools, providers, service accounts and their policies."""
    federated: dict[str, set[str]] = field(default_factory=dict)
    """Federated access token -> principals it stands for."""
    exchanges: list[dict[str, Any]] = field(default_factory=list)
    impersonations: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    @staticmethod
    def _principals(
        name: str, mapping: dict[str, str], claims: dict[str, Any]
    ) -> set[str]:
        pool = name.split("/providers/", 1)[0]
        base = f"//iam.googleapis.com/{pool}"
        members: set[str] = {f"principalSet:{base}/*"}
        for target, expression in mapping.items():
            value = mapped(expression, claims)
            if value is None:
                continue
            if target == "google.subject":
                members.add(f"principal:{base}/subject/{value}")
            elif target.startswith("attribute."):
                members.add(f"principalSet:{base}/{target}/{value}")
        return members

    def _active_provider(self, name: str) -> dict[str, Any] | None:
        provider = self.iam.providers.get(name)
        pool = self.iam.pools.get(name.split("/providers/", 1)[0])
        if provider is None or pool is None:
            return None
        if "DELETED" in (provider["state"], pool["state"]):
            return None
        if provider.get("disabled") or pool.get("disabled"):
            return None
        return provider

    def _refuse(self, error: str, description: str) -> tuple[int, dict[str, Any]]:
        self.refusals.append(description)
        return 400, {"error": error, "error_description": description}

    def exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange":
            return self._refuse(
                "unsupported_grant_type", "grant_type must be token-exchange"
            )
        audience = form.get("audience", "")
        name = audience.removeprefix("//iam.googleapis.com/")
        provider = self._active_provider(name)
        if provider is None:
            return self._refuse("invalid_target", _INVALID_TARGET)
        if form.get("subject_token_type") not in (
            "urn:ietf:params:oauth:token-type:jwt",
            "urn:ietf:params:oauth:token-type:id_token",
        ):
            return self._refuse(
                "invalid_request", "subject_token_type must be jwt or id_token"
            )
        oidc = provider["oidc"]
        allowed = oidc.get("allowedAudiences") or [
            f"//iam.googleapis.com/{name}",
            f"https://iam.googleapis.com/{name}",
        ]
        issuer = str(oidc["issuerUri"]).rstrip("/")
        pinned = {issuer: json.loads(oidc["jwksJson"])} if oidc.get("jwksJson") else {}
        verifier = TokenVerifier({issuer}, ca_file=self.ca_file, pinned=pinned)
        try:
            claims = verifier.verify(form.get("subject_token", ""), audiences=allowed)
        except TokenRejected as exc:
            return self._refuse("invalid_grant", str(exc))
        subject = mapped(provider["attributeMapping"].get("google.subject", ""), claims)
        if not subject or len(str(subject).encode()) > 127:
            return self._refuse(
                "invalid_grant",
                "The mapped attribute google.subject must be 1 to 127 bytes",
            )
        token = f"fed-{secrets.token_urlsafe(24)}"
        self.federated[token] = self._principals(
            name, provider["attributeMapping"], claims
        )
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
        allowed = self.iam.members_of(email, WORKLOAD_IDENTITY_USER, TOKEN_CREATOR)
        if not principals & allowed:
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
    """STS at /v1/token, IAM Credentials, then the IAM admin and Resource
    Manager fake (see `fake_gcp_iam.add_routes`), all on one port."""
    app = web.Application()
    app.router.add_post("/v1/token", fake.handle_token)
    app.router.add_post(
        "/v1/projects/-/serviceAccounts/{email}:generateAccessToken",
        fake.handle_generate,
    )
    add_routes(app, fake.iam)
    return app
