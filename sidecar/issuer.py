"""Issuer mode: trade the pod's ServiceAccount token for a cloud token.

`POST <token URL>` with `Authorization: Bearer <projected SA token>` and
`{"provider": ..., "identity": ...}`; the issuer answers 200 with
`{"token": ..., "expiresAt": ...}`, 401 for a bad ServiceAccount token, 403 for
a pod that may not use the identity, 503 when it cannot reach the API server.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import aiohttp

from oidc_tokens.claims import MalformedTokenError
from sidecar.tokens import RefreshError, Token

if TYPE_CHECKING:
    from sidecar.config import ProviderConfig

REQUEST_TIMEOUT_SECONDS: Final = 10.0
"""Per request; a slower issuer is treated as unreachable and retried."""

_MAX_ERROR_CHARS: Final = 200


def client_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify the issuer against `ca_file`, or the system trust store without one.

    Raises OSError or ssl.SSLError for a CA file that is missing or not PEM.
    """
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def client_session(ssl_context: ssl.SSLContext) -> aiohttp.ClientSession:
    # trust_env=False: the ServiceAccount token never goes through a proxy.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ssl_context),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
        trust_env=False,
    )


class IssuerSource:
    """Tokens from the issuer service, paid for with the pod's SA token."""

    mode: Literal["issuer"] = "issuer"

    def __init__(
        self, *, session: aiohttp.ClientSession, token_url: str, sa_token_file: Path
    ) -> None:
        self._session = session
        self._token_url = token_url
        self._sa_token_file = sa_token_file

    async def fetch(self, provider: ProviderConfig, *, now: float) -> Token:
        # Re-read every time: the kubelet rotates the projected token.
        bearer = self._read_sa_token()
        body = {"provider": provider.provider, "identity": provider.identity}
        try:
            async with self._session.post(
                self._token_url,
                json=body,
                headers={"Authorization": f"Bearer {bearer}"},
                # A redirect would carry the ServiceAccount token elsewhere.
                allow_redirects=False,
            ) as response:
                status, payload = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RefreshError(
                "issuer_unreachable",
                f"cannot reach the issuer at {self._token_url}: {_describe(exc)}; "
                "check --issuer-token-url / WI_ISSUER_TOKEN_URL, the issuer's "
                "Service and, for TLS errors, --issuer-ca-file / WI_ISSUER_CA_FILE",
            ) from exc
        return token_from_answer(status, payload, provider=provider, now=now)

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
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
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
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, str) or not error:
        return "no error message"
    return " ".join(error.split())[:_MAX_ERROR_CHARS]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {REQUEST_TIMEOUT_SECONDS:g} s"
    return str(exc) or type(exc).__name__
