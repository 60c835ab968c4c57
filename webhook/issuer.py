"""The cluster as an OIDC issuer: keys, discovery document, JWKS, signing."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from oidc_tokens.claims import Subject, build_claims
from oidc_tokens.keys import (
    PublicKey,
    SigningKey,
    generate_rsa_key,
    jwks,
    key_id,
    load_private_key,
    load_public_key,
    private_key_pem,
)
from oidc_tokens.signing import sign

JWKS_PATH = "/openid/v1/jwks"
DISCOVERY_PATH = "/.well-known/openid-configuration"


class IssuerConfigError(ValueError):
    """The issuer cannot start with the given URL or keys."""


def normalise_issuer(url: str) -> str:
    """Issuer URLs are compared byte for byte by the clouds: https, no slash."""
    if not url.startswith("https://"):
        raise IssuerConfigError(
            f"issuer URL {url!r} must start with https:// (AWS and GCP fetch it over TLS)"
        )
    if "?" in url or "#" in url:
        raise IssuerConfigError(f"issuer URL {url!r} must not have a query or fragment")
    return url.rstrip("/")


@dataclass(frozen=True, slots=True)
class Issuer:
    url: str
    signing_key: SigningKey
    published: tuple[SigningKey | PublicKey, ...]
    """Every key in the JWKS: the signing key plus keys still being rotated out
    or already rotated in, so no token in flight fails verification."""

    @property
    def kid(self) -> str:
        return key_id(self.signing_key)

    def discovery(self) -> dict[str, Any]:
        return discovery_document(self.url)

    def jwks(self) -> dict[str, Any]:
        return jwks([self.signing_key, *self.published])

    def issue(
        self,
        subject: Subject,
        *,
        audience: str,
        lifetime_seconds: int,
        now: int | None = None,
    ) -> tuple[str, int]:
        """A signed token and its `exp`."""
        claims = build_claims(
            subject,
            issuer=self.url,
            audience=audience,
            now=int(time.time()) if now is None else now,
            lifetime_seconds=lifetime_seconds,
        )
        return sign(claims, self.signing_key, kid=self.kid), int(claims["exp"])


def discovery_document(url: str) -> dict[str, Any]:
    """The OpenID discovery document; it names no key, so it needs none."""
    return {
        "issuer": url,
        "jwks_uri": f"{url}{JWKS_PATH}",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "claims_supported": ["sub", "aud", "iss", "iat", "exp", "nbf", "jti"],
    }


def public_jwks(
    private_keys: Sequence[str], public_keys: Sequence[str]
) -> dict[str, Any]:
    """A JWKS from key files; public keys suffice, so a bucket's copy can be
    made where the private key never goes."""
    keys: list[SigningKey | PublicKey] = [
        load_public_key(read_key_file(path), source=path)
        for path in [*private_keys, *public_keys]
    ]
    if not keys:
        raise IssuerConfigError(
            "no key: pass --public-key FILE (or --signing-key FILE)"
        )
    return jwks(keys)


def read_key_file(path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as exc:
        raise IssuerConfigError(
            f"cannot read signing key {path}: {exc.strerror}; create one with "
            "`python -m webhook issuer keygen --out FILE`"
        ) from exc


def load_issuer(
    url: str, key_files: Sequence[str], extra_public: Sequence[str] = ()
) -> Issuer:
    if not key_files:
        raise IssuerConfigError(
            "no signing key: pass --signing-key FILE (or --state-dir)"
        )
    keys = [load_private_key(read_key_file(path), source=path) for path in key_files]
    public = [
        load_public_key(read_key_file(path), source=path) for path in extra_public
    ]
    return Issuer(
        url=normalise_issuer(url), signing_key=keys[0], published=(*keys[1:], *public)
    )


def write_new_key(path: str) -> SigningKey:
    """Create an RSA-2048 key file readable by its owner only."""
    key = generate_rsa_key()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(private_key_pem(key))
    return key
