"""Issuer mode: trade the pod's ServiceAccount token for a cloud token.

`POST <token URL>` with `Authorization: Bearer <projected SA token>` and
`{"provider": ..., "identity": ...}`; the issuer answers 200 with
`{"token": ..., "expiresAt": ...}`, 401 for a bad ServiceAccount token, 403 for
a pod that may not use the identity, 503 when it cannot reach the API server.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from oidc_tokens.claims import MalformedTokenError
from sidecar import http_client
from sidecar.tokens import FETCH_TIMEOUT_SECONDS, RefreshError, Token

if TYPE_CHECKING:
    from sidecar.config import ProviderConfig

REQUEST_TIMEOUT_SECONDS: Final = FETCH_TIMEOUT_SECONDS
"""Connect, TLS handshake, request and answer together."""

MAX_ANSWER_BYTES: Final = 65_536
"""A token answer is a few kilobytes; anything longer is not one."""

_MAX_ERROR_CHARS: Final = 200


def client_ssl_context(ca_file: Path | None, ca_pem: str = "") -> ssl.SSLContext:
    """Verify the issuer against `ca_file`, or the system trust store without
    one, and against the certificates in `ca_pem` as well.

    Raises OSError or ssl.SSLError for a CA file that is missing or not PEM,
    or PEM text that holds no certificate.
    """
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if ca_pem:
        context.load_verify_locations(cadata=ca_pem)
    return context


class IssuerSource:
    """Tokens from the issuer service, paid for with the pod's SA token."""

    mode: Literal["issuer"] = "issuer"

    def __init__(
        self, *, ssl_context: ssl.SSLContext, token_url: str, sa_token_file: Path
    ) -> None:
        self._ssl_context = ssl_context
        self._token_url = token_url
        self._sa_token_file = sa_token_file

    async def fetch(self, provider: ProviderConfig, *, now: float) -> Token:
        # Re-read every time: the kubelet rotates the projected token.
        bearer = self._read_sa_token()
        body = {"provider": provider.provider, "identity": provider.identity}
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                answer = await http_client.post(
                    self._token_url,
                    json.dumps(body).encode(),
                    headers=[
                        ("Content-Type", "application/json"),
                        ("Authorization", f"Bearer {bearer}"),
                    ],
                    ssl_context=self._ssl_context,
                    max_body=MAX_ANSWER_BYTES,
                )
        except (http_client.RequestError, TimeoutError) as exc:
            detail = (
                f"no answer within {REQUEST_TIMEOUT_SECONDS:g} s"
                if isinstance(exc, TimeoutError)
                else str(exc)
            )
            raise RefreshError(
                "issuer_unreachable",
                f"cannot reach the issuer at {self._token_url}: {detail}; "
                "check --issuer-token-url / WI_ISSUER_TOKEN_URL, the issuer's "
                "Service and, for TLS errors, --issuer-ca-file / WI_ISSUER_CA_FILE",
            ) from exc
        # A redirect is never followed: it would carry the ServiceAccount token
        # elsewhere. token_from_answer refuses any status but 200.
        return token_from_answer(answer.status, answer.body, provider=provider, now=now)

    def _read_sa_token(self) -> str:
        try:
            bearer = self._sa_token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise RefreshError(
                "signing",
                f"cannot read the ServiceAccount token {self._sa_token_file} "
                f"({getattr(exc, 'strerror', None) or exc}); mount a projected "
                "token there (--sa-token-file / WI_SA_TOKEN_FILE)",
            ) from exc
        if not bearer:
            raise RefreshError(
                "signing",
                f"the ServiceAccount token {self._sa_token_file} is empty "
                "(--sa-token-file / WI_SA_TOKEN_FILE)",
            )
        if not (bearer.isascii() and bearer.isprintable()) or " " in bearer:
            # It goes into a header line as it is.
            raise RefreshError(
                "signing",
                f"the ServiceAccount token {self._sa_token_file} is not a single "
                "token (--sa-token-file / WI_SA_TOKEN_FILE)",
            )
        return bearer


def token_from_answer(
    status: int, payload: bytes, *, provider: ProviderConfig, now: float
) -> Token:
    """The token in the issuer's answer, or the RefreshError that it means."""
    what = f"{provider.provider} identity {provider.identity!r}"
    if status == 200:
        return _token_from_body(payload, what=what, now=now)
    error = _error_text(payload)
    if status == 401:
        raise RefreshError(
            "issuer_refused",
            f"the issuer rejected the ServiceAccount token (401: {error}); check "
            "that the projected token's audience is the issuer's",
        )
    if status == 403:
        raise RefreshError(
            "issuer_refused",
            f"the issuer refused {what} for this pod (403: {error}); check the "
            "identity's scope and the namespace's project label",
        )
    if status >= 500:
        raise RefreshError(
            "issuer_unreachable", f"the issuer answered {status} ({error}); retrying"
        )
    raise RefreshError(
        "issuer_refused", f"the issuer answered {status} for {what} ({error})"
    )


def _token_from_body(payload: bytes, *, what: str, now: float) -> Token:
    try:
        answer: Any = json.loads(payload)
        token = Token.parse(answer["token"])
    # RecursionError: JSON nested too deep to parse is no answer either.
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, MalformedTokenError) else "no JWT"
        raise RefreshError(
            "issuer_refused",
            f"the issuer answered 200 for {what} without a usable token ({detail})",
        ) from exc
    if token.expires_at <= now:
        raise RefreshError(
            "issuer_refused",
            f"the issuer sent an expired token for {what}; compare the issuer's "
            "clock with this node's",
        )
    return token


def _error_text(payload: bytes) -> str:
    try:
        error = json.loads(payload).get("error")
    except (ValueError, AttributeError, RecursionError):
        error = None
    if not isinstance(error, str) or not error:
        return "no error message"
    return " ".join(error.split())[:_MAX_ERROR_CHARS]
