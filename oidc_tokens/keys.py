"""Signing keys, their RFC 7638 `kid`s and the JWKS that publishes them."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class KeyFileError(ValueError):
    """A key file that cannot be used for signing."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def generate_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_key_pem(key: SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(
    pem: bytes, *, source: str = "key", full_rsa_check: bool = True
) -> SigningKey:
    """Parse a PEM private key; RSA (RS256) and P-256 (ES256) are supported.

    With `full_rsa_check=False`, one signature made and verified with the key
    stands in for OpenSSL's check of the RSA parameters, whose primality tests
    take 50 ms and more. That still refuses a key whose halves do not match,
    and a sidecar, which loads its key as it starts, writes its first token
    that much sooner.
    """
    try:
        key = serialization.load_pem_private_key(
            pem, password=None, unsafe_skip_rsa_key_validation=not full_rsa_check
        )
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"{source} is not an unencrypted PEM private key: "
            "create one with `python -m webhook issuer keygen`"
        ) from exc
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise KeyFileError(f"{source} is RSA-{key.key_size}; use 2048+ bits")
        if not full_rsa_check:
            _check_signs_verifiably(key, source=source)
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return key
    raise KeyFileError(f"{source} must be an RSA (2048+) or EC P-256 private key")


def _check_signs_verifiably(key: rsa.RSAPrivateKey, *, source: str) -> None:
    probe = b"workload-identity key check"
    try:
        signature = key.sign(probe, padding.PKCS1v15(), hashes.SHA256())
        key.public_key().verify(signature, probe, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError) as exc:
        raise KeyFileError(
            f"{source} is not a consistent RSA key (its signatures do not verify); "
            "create one with `python -m webhook issuer keygen`"
        ) from exc


def load_public_key(pem: bytes, *, source: str = "key") -> PublicKey:
    """A public key from a PEM public key or, for convenience, a private key."""
    if b"PRIVATE KEY" in pem:
        return load_private_key(pem, source=source).public_key()
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise KeyFileError(f"{source} must be an RSA or EC public key")
    return key


def algorithm(key: SigningKey | PublicKey) -> str:
    return "RS256" if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) else "ES256"


def _required_members(key: PublicKey) -> dict[str, str]:
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return {"e": _int_b64(numbers.e), "kty": "RSA", "n": _int_b64(numbers.n)}
    point = key.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64(point.x.to_bytes(32, "big")),
        "y": _b64(point.y.to_bytes(32, "big")),
    }


def key_id(key: SigningKey | PublicKey) -> str:
    """RFC 7638 JWK thumbprint: SHA-256 over the required members, sorted."""
    public = (
        key.public_key()
        if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
        else key
    )
    members = _required_members(public)
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def public_jwk(key: SigningKey | PublicKey) -> dict[str, Any]:
    public = (
        key.public_key()
        if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
        else key
    )
    return {
        **_required_members(public),
        "kid": key_id(public),
        "use": "sig",
        "alg": algorithm(public),
    }


def jwks(keys: list[SigningKey | PublicKey]) -> dict[str, Any]:
    """A JWKS with every key, so verifiers accept tokens during a rotation."""
    seen: dict[str, dict[str, Any]] = {}
    for key in keys:
        jwk = public_jwk(key)
        seen.setdefault(jwk["kid"], jwk)
    return {"keys": list(seen.values())}
