"""A strict AssumeRoleWithWebIdentity check in front of moto's server.

moto accepts any web identity token, so on its own it proves nothing about
the tokens. This front end does what AWS STS does before it answers: the
token's issuer must be a registered IAM OIDC provider, its audience one of
that provider's client IDs, its signature must verify against the JWKS found
through the issuer's discovery document, and the role's trust policy must
admit its claims. Every other request passes through to moto unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

import boto3
from aiohttp import ClientSession, web

from webhook.aws_trust import trust_admits
from webhook.demo.verifier import TokenRejected, TokenVerifier

log = logging.getLogger(__name__)

_STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"


def sts_error(code: str, message: str, status: int) -> web.Response:
    body = (
        f'<ErrorResponse xmlns="{_STS_NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    )
    return web.Response(status=status, text=body, content_type="text/xml")


@dataclass(slots=True)
class StrictSts:
    moto_url: str
    ca_file: str | None
    exchanges: list[dict[str, Any]] = field(default_factory=list)
    """Claims of every accepted exchange, for the demo's report."""
    refusals: list[str] = field(default_factory=list)

    def _iam(self) -> Any:
        return boto3.client(
            "iam",
            endpoint_url=self.moto_url,
            region_name="us-east-1",
            aws_access_key_id="moto-admin",
            aws_secret_access_key="moto-admin",  # noqa: S106 - moto's server accepts any key
        )

    def _providers(self) -> dict[str, tuple[str, list[str]]]:
        """Registered OIDC providers: issuer URL -> (provider ARN, client IDs)."""
        iam = self._iam()
        found: dict[str, tuple[str, list[str]]] = {}
        for entry in iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]:
            arn = entry["Arn"]
            detail = iam.get_open_id_connect_provider(OpenIDConnectProviderArn=arn)
            url = detail["Url"]
            url = url if url.startswith("https://") else f"https://{url}"
            found[url.rstrip("/")] = (arn, list(detail.get("ClientIDList", [])))
        return found

    def _trust_policy(self, role_arn: str) -> dict[str, Any] | None:
        name = role_arn.split(":role/", 1)[1].rsplit("/", 1)[-1]
        try:
            document = self._iam().get_role(RoleName=name)["Role"][
                "AssumeRolePolicyDocument"
            ]
        except self._iam().exceptions.NoSuchEntityException:
            return None
        if isinstance(document, str):
            document = json.loads(urllib.parse.unquote(document))
        return dict(document)

    def check(self, role_arn: str, token: str) -> tuple[str, str] | None:
        """None when STS would accept; else (error code, message)."""
        providers = self._providers()
        verifier = TokenVerifier(set(providers), ca_file=self.ca_file)
        try:
            import jwt

            issuer = jwt.decode(token, options={"verify_signature": False}).get(
                "iss", ""
            )
        except Exception:
            return "InvalidIdentityToken", "the web identity token is not a JWT"
        if issuer not in providers:
            return (
                "InvalidIdentityToken",
                f"no OpenIDConnect provider found for issuer {issuer}",
            )
        provider_arn, client_ids = providers[issuer]
        try:
            claims = verifier.verify(token, audiences=client_ids)
        except TokenRejected as exc:
            code = (
                "ExpiredTokenException"
                if "expired" in str(exc)
                else "InvalidIdentityToken"
            )
            return code, str(exc)
        policy = self._trust_policy(role_arn)
        if policy is None:
            return "AccessDenied", f"role {role_arn} does not exist"
        if not trust_admits(policy, claims, oidc_provider_arn=provider_arn):
            return (
                "AccessDenied",
                "Not authorized to perform sts:AssumeRoleWithWebIdentity",
            )
        self.exchanges.append(
            {"role": role_arn, "sub": claims["sub"], "aud": claims["aud"]}
        )
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method == "POST":
            form = urllib.parse.parse_qs(body.decode(errors="replace"))
            if form.get("Action") == ["AssumeRoleWithWebIdentity"]:
                role = form.get("RoleArn", [""])[0]
                token = form.get("WebIdentityToken", [""])[0]
                refusal = await asyncio.to_thread(self.check, role, token)
                if refusal is not None:
                    self.refusals.append(f"{refusal[0]}: {refusal[1]}")
                    log.info(
                        "refused AssumeRoleWithWebIdentity for %s: %s", role, refusal[1]
                    )
                    status = 400 if refusal[0] != "AccessDenied" else 403
                    return sts_error(refusal[0], refusal[1], status)
        return await self._forward(request, body)

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length")
        }
        async with (
            ClientSession() as session,
            session.request(
                request.method,
                f"{self.moto_url}{request.rel_url}",
                data=body,
                headers=headers,
                allow_redirects=False,
            ) as upstream,
        ):
            payload = await upstream.read()
            passed = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower()
                not in (
                    "content-length",
                    "transfer-encoding",
                    "content-encoding",
                    "connection",
                )
            }
            return web.Response(status=upstream.status, body=payload, headers=passed)


def create_app(front: StrictSts) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", front.handle)
    return app
