"""Sign claims into a compact JWS whose header names the key's thumbprint."""

from __future__ import annotations

from typing import Any

import jwt

from oidc_tokens.keys import SigningKey, algorithm, key_id


def sign(claims: dict[str, Any], key: SigningKey, *, kid: str | None = None) -> str:
    return jwt.encode(
        claims,
        key,
        algorithm=algorithm(key),
        headers={"kid": kid or key_id(key), "typ": "JWT"},
    )
