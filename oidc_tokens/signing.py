"""Sign claims into a compact JWS whose header names the key's thumbprint.

RS256 and ES256 (RFC 7518 3.3 and 3.4) straight on cryptography: the sidecar
signs with this in every pod, and a JWT library would add more memory than
the dozen lines below. The output is what PyJWT's `jwt.encode` produces
(sorted header, compact JSON), which the tests check.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from oidc_tokens.keys import SigningKey, algorithm, key_id


def sign(claims: dict[str, Any], key: SigningKey, *, kid: str | None = None) -> str:
    header = {"alg": algorithm(key), "kid": kid or key_id(key), "typ": "JWT"}
    signing_input = f"{_json_segment(header, sort=True)}.{_json_segment(claims)}"
    return f"{signing_input}.{_b64(_signature(signing_input.encode(), key))}"


def _signature(data: bytes, key: SigningKey) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    # JWS wants the two integers side by side, not the DER sequence.
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def _json_segment(value: dict[str, Any], *, sort: bool = False) -> str:
    return _b64(json.dumps(value, separators=(",", ":"), sort_keys=sort).encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
