"""Tokens, where they come from, and why getting one failed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, Protocol

from oidc_tokens.claims import unverified_claims

if TYPE_CHECKING:
    from sidecar.config import ProviderConfig

Reason = Literal["signing", "issuer_unreachable", "issuer_refused", "write_failed"]
REASONS: Final[tuple[Reason, ...]] = (
    "signing",
    "issuer_unreachable",
    "issuer_refused",
    "write_failed",
)
"""The `reason` label of the failure counter.

- signing: the sidecar could not produce a token or a request for one (the key
  or the ServiceAccount token file is missing or invalid).
- issuer_unreachable: no answer from the issuer, or a 5xx (retrying helps).
- issuer_refused: the issuer said no (401, 403) or answered without a usable
  token.
- write_failed: the token volume rejected the write.
"""


FETCH_TIMEOUT_SECONDS: Final = 10.0
"""The longest one fetch may take: a slower issuer is treated as unreachable
and retried, and liveness allows for one such fetch."""


class RefreshError(Exception):
    """One failed refresh attempt, with the reason the failure metric counts.

    The message is safe to log: it never holds a token, a key or a claim value.
    """

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


@dataclass(frozen=True, slots=True)
class Token:
    """A JWT and the times that schedule its refresh."""

    value: str = field(repr=False)
    issued_at: int
    expires_at: int

    @classmethod
    def parse(cls, value: str) -> Token:
        """Read `iat`/`exp` without verifying; raises MalformedTokenError."""
        value = value.strip()
        claims = unverified_claims(value)
        return cls(value=value, issued_at=claims["iat"], expires_at=claims["exp"])

    @property
    def lifetime(self) -> int:
        return self.expires_at - self.issued_at


class TokenSource(Protocol):
    """Obtains fresh tokens: `sidecar.signer.KeySource` or `sidecar.issuer`."""

    @property
    def mode(self) -> Literal["key", "issuer"]: ...

    async def fetch(self, provider: ProviderConfig, *, now: float) -> Token:
        """A new token for `provider`; raises RefreshError."""
