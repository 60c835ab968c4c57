"""Check a token the way AWS and GCP do: discovery, JWKS, signature, claims."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import jwt

from oidc_tokens.claims import CLOCK_SKEW_SECONDS


class TokenRejected(ValueError):
    """The token would be refused by the cloud; the message says why."""


@dataclass(slots=True)
class TokenVerifier:
    """Fetches `<iss>/.well-known/openid-configuration` and its `jwks_uri` over
    HTTPS for every issuer it trusts, as the clouds do, and caches the JWKS."""

    trusted_issuers: set[str]
    ca_file: str | None = None
    pinned: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Issuer -> JWKS given inline (GCP's oidc.jwksJson): used, never fetched."""
    _jwks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def _get(self, url: str) -> dict[str, Any]:
        if not url.startswith("https://"):
            raise TokenRejected(
                f"{url} is not HTTPS; clouds fetch issuer documents over TLS only"
            )
        context = ssl.create_default_context(cafile=self.ca_file)
        with urllib.request.urlopen(url, context=context, timeout=5) as response:  # noqa: S310 - https only, checked above
            body = json.loads(response.read())
        if not isinstance(body, dict):
            raise TokenRejected(f"{url} did not return a JSON object")
        return body

    def _keys(self, issuer: str, *, refresh: bool = False) -> dict[str, Any]:
        if issuer in self.pinned:
            return self.pinned[issuer]
        if refresh or issuer not in self._jwks:
            discovery = self._get(f"{issuer}/.well-known/openid-configuration")
            if discovery.get("issuer") != issuer:
                raise TokenRejected(
                    f"discovery document names issuer {discovery.get('issuer')!r}, not {issuer!r}"
                )
            self._jwks[issuer] = self._get(str(discovery["jwks_uri"]))
        return self._jwks[issuer]

    def verify(
        self, token: str, *, audiences: list[str], now: float | None = None
    ) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"not a JWT: {exc}") from exc
        issuer = unverified.get("iss")
        if issuer not in self.trusted_issuers:
            raise TokenRejected(
                f"issuer {issuer!r} is not a registered identity provider"
            )
        kid = header.get("kid")
        if not kid:
            raise TokenRejected("the token header has no kid")
        keys = self._keys(issuer)
        match = [k for k in keys.get("keys", []) if k.get("kid") == kid]
        if not match:
            # A key may have been added since the JWKS was cached.
            keys = self._keys(issuer, refresh=True)
            match = [k for k in keys.get("keys", []) if k.get("kid") == kid]
        if not match:
            raise TokenRejected(f"kid {kid!r} is not in the issuer's JWKS")
        key = jwt.PyJWK(match[0])
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=["RS256", "ES256"],
                audience=audiences,
                issuer=issuer,
                options={
                    "require": ["iss", "aud", "sub", "exp", "iat"],
                    "verify_iat": False,
                },
                leeway=0,
            )
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"token refused: {exc}") from exc
        current = time.time() if now is None else now
        if claims["iat"] > current + CLOCK_SKEW_SECONDS:
            raise TokenRejected("the token was issued in the future")
        if claims["exp"] <= current:
            raise TokenRejected("the token has expired")
        return claims
