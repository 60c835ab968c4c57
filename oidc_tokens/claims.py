"""JWT claims of the tokens the clouds exchange.

`sub` is `<identity>:<project>:<namespace>:<serviceaccount>`. Identity names are
Kubernetes object names and project values are label values, and neither can
hold a colon, so a trust policy that pins `sub` to `s3-reader:*` never admits
the identity `s3-reader-admin`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from typing import Any, Final

CLOCK_SKEW_SECONDS: Final = 30
"""`iat` and `nbf` are backdated by this much, because STS rejects a token
whose `iat` or `nbf` lies in its future and node clocks drift."""

MIN_LIFETIME_SECONDS: Final = 10
MAX_LIFETIME_SECONDS: Final = 86_400
"""GCP's STS refuses tokens that live longer than a day; 10 s is for demos."""


@dataclass(frozen=True, slots=True)
class Subject:
    """Who a token is for: the identity and the pod that holds it."""

    identity: str
    project: str
    namespace: str
    service_account: str
    pod: str = ""

    @property
    def sub(self) -> str:
        return f"{self.identity}:{self.project}:{self.namespace}:{self.service_account}"


def build_claims(
    subject: Subject,
    *,
    issuer: str,
    audience: str,
    now: int,
    lifetime_seconds: int,
    jti: str | None = None,
) -> dict[str, Any]:
    """Claims for one token: valid from `now - skew` until `now + lifetime`."""
    issued = now - CLOCK_SKEW_SECONDS
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject.sub,
        "iat": issued,
        "nbf": issued,
        "exp": now + lifetime_seconds,
        "jti": jti or os.urandom(16).hex(),
        "workloadidentity.dev/identity": subject.identity,
        "workloadidentity.dev/project": subject.project,
        "kubernetes.io/namespace": subject.namespace,
        "kubernetes.io/serviceaccount": subject.service_account,
    }
    if subject.pod:
        claims["kubernetes.io/pod"] = subject.pod
    return claims


class MalformedTokenError(ValueError):
    """A string that is not a compact JWS with a JSON payload."""


def unverified_claims(token: str) -> dict[str, Any]:
    """Read a JWT's payload without checking its signature.

    Only for scheduling (`iat`/`exp` of a token the sidecar itself received
    over TLS or signed); never for a trust decision.
    """
    parts = token.strip().split(".")
    if len(parts) != 3 or not all(parts):
        raise MalformedTokenError("a JWT has three non-empty dot-separated parts")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        decoded = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise MalformedTokenError("the JWT payload is not base64url JSON") from exc
    if not isinstance(decoded, dict):
        raise MalformedTokenError("the JWT payload is not a JSON object")
    for name in ("iat", "exp"):
        if not isinstance(decoded.get(name), int):
            raise MalformedTokenError(f"the JWT has no integer {name!r} claim")
    return decoded
