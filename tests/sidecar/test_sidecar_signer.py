"""Key mode: claims, algorithms, and key rotation without a restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from oidc_tokens import keys
from oidc_tokens.claims import CLOCK_SKEW_SECONDS
from sidecar.config import PodInfo, ProviderConfig
from sidecar.signer import KeyFileSigner, KeySource
from sidecar.tokens import RefreshError, Token
from tests.sidecar.sidecar_helpers import ISSUER, START, rewrite_in_place

POD = PodInfo(
    project="team-a", namespace="team-a", name="app-7d5b9", service_account="app"
)


def aws(lifetime: int = 3600) -> ProviderConfig:
    return ProviderConfig(
        provider="aws",
        identity="s3-reader",
        audience="sts.amazonaws.com",
        expiration_seconds=lifetime,
        token_path=Path("/unused/aws-token"),
    )


def source_for(key_file: Path) -> KeySource:
    return KeySource(signer=KeyFileSigner(key_file), issuer=ISSUER, pod=POD)


def verified_claims(token: str, pem: bytes) -> dict[str, Any]:
    """Signature and header checked against the JWKS; times left to the caller."""
    header = jwt.get_unverified_header(token)
    (jwk,) = keys.jwks([keys.load_public_key(pem)])["keys"]
    assert header["kid"] == jwk["kid"]
    assert header["alg"] == jwk["alg"]
    assert header["typ"] == "JWT"
    return jwt.decode(
        token,
        jwt.PyJWK(jwk),
        algorithms=[jwk["alg"]],
        audience="sts.amazonaws.com",
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )


def strictly_valid_at(claims: dict[str, Any], now: float) -> bool:
    """A verifier with zero leeway whose clock reads `now`."""
    iat, nbf, exp = int(claims["iat"]), int(claims["nbf"]), int(claims["exp"])
    return iat <= now and nbf <= now and now < exp


async def test_key_mode_signs_rs256_tokens_that_verify_against_the_jwks(
    key_file: Path, rsa_pem: bytes
) -> None:
    token = await source_for(key_file).fetch(aws(), now=START)
    claims = verified_claims(token.value, rsa_pem)
    assert jwt.get_unverified_header(token.value)["alg"] == "RS256"
    assert claims["sub"] == "s3-reader:team-a:team-a:app"
    assert claims["workloadidentity.dev/identity"] == "s3-reader"
    assert claims["workloadidentity.dev/project"] == "team-a"
    assert claims["kubernetes.io/namespace"] == "team-a"
    assert claims["kubernetes.io/serviceaccount"] == "app"
    assert claims["kubernetes.io/pod"] == "app-7d5b9"
    assert len(claims["jti"]) >= 16


async def test_key_mode_signs_es256_with_a_p256_key(
    tmp_path: Path, ec_pem: bytes
) -> None:
    key_file = tmp_path / "ec.pem"
    key_file.write_bytes(ec_pem)
    token = await source_for(key_file).fetch(aws(), now=START)
    assert jwt.get_unverified_header(token.value)["alg"] == "ES256"
    verified_claims(token.value, ec_pem)


async def test_iat_and_nbf_are_backdated_by_the_skew_and_exp_is_now_plus_lifetime(
    key_file: Path, rsa_pem: bytes
) -> None:
    signed_at = 1_800_000_123
    token = await source_for(key_file).fetch(aws(3600), now=signed_at + 0.9)
    claims = verified_claims(token.value, rsa_pem)
    assert claims["iat"] == claims["nbf"] == signed_at - CLOCK_SKEW_SECONDS
    assert claims["exp"] == signed_at + 3600
    assert claims["exp"] - claims["iat"] <= 3600 + CLOCK_SKEW_SECONDS
    assert (token.issued_at, token.expires_at) == (claims["iat"], claims["exp"])


@pytest.mark.parametrize("offset", [-CLOCK_SKEW_SECONDS, -10, 0, 30, 3599])
async def test_a_strict_verifier_with_a_skewed_clock_accepts_the_fresh_token(
    key_file: Path, rsa_pem: bytes, offset: int
) -> None:
    token = await source_for(key_file).fetch(aws(3600), now=START)
    assert strictly_valid_at(verified_claims(token.value, rsa_pem), START + offset)


@pytest.mark.parametrize("offset", [-CLOCK_SKEW_SECONDS - 1, 3600, 3700])
async def test_a_strict_verifier_rejects_the_token_outside_its_window(
    key_file: Path, rsa_pem: bytes, offset: int
) -> None:
    token = await source_for(key_file).fetch(aws(3600), now=START)
    assert not strictly_valid_at(verified_claims(token.value, rsa_pem), START + offset)


def count_key_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every parse of a key file by the signer."""
    loads: list[str] = []
    real = keys.load_private_key

    def counting(pem: bytes, *, source: str = "key", **checks: bool) -> keys.SigningKey:
        if source.startswith("key file"):
            loads.append(source)
        return real(pem, source=source, **checks)

    monkeypatch.setattr(keys, "load_private_key", counting)
    return loads


async def test_the_key_is_parsed_once_while_the_file_is_unchanged(
    key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = count_key_loads(monkeypatch)
    source = source_for(key_file)
    for n in range(5):
        await source.fetch(aws(), now=START + n)
    assert len(loads) == 1


async def test_a_key_replaced_by_rename_is_used_from_the_next_token(
    key_file: Path,
    rsa_pem: bytes,
    other_rsa_pem: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads = count_key_loads(monkeypatch)
    source = source_for(key_file)
    first = await source.fetch(aws(), now=START)
    staged = key_file.with_name("staged.pem")
    staged.write_bytes(other_rsa_pem)
    staged.replace(key_file)
    second = await source.fetch(aws(), now=START + 1)
    verified_claims(first.value, rsa_pem)
    verified_claims(second.value, other_rsa_pem)
    assert len(loads) == 2


async def test_a_key_rewritten_in_place_is_picked_up(
    key_file: Path, other_rsa_pem: bytes
) -> None:
    source = source_for(key_file)
    await source.fetch(aws(), now=START)
    rewrite_in_place(key_file, other_rsa_pem)
    token = await source.fetch(aws(), now=START + 1)
    verified_claims(token.value, other_rsa_pem)


async def test_a_secret_volume_rotation_by_symlink_swap_is_picked_up(
    tmp_path: Path, rsa_pem: bytes, other_rsa_pem: bytes
) -> None:
    # The kubelet's layout: key.pem -> ..data/key.pem, ..data -> ..<timestamp>
    mount = tmp_path / "secret"
    for name, pem in (("..2024_01", rsa_pem), ("..2024_02", other_rsa_pem)):
        (mount / name).mkdir(parents=True)
        (mount / name / "key.pem").write_bytes(pem)
    (mount / "..data").symlink_to("..2024_01")
    (mount / "key.pem").symlink_to("..data/key.pem")
    source = source_for(mount / "key.pem")
    verified_claims((await source.fetch(aws(), now=START)).value, rsa_pem)

    (mount / "..data_tmp").symlink_to("..2024_02")
    (mount / "..data_tmp").replace(mount / "..data")
    verified_claims((await source.fetch(aws(), now=START + 1)).value, other_rsa_pem)


async def test_a_missing_key_file_is_a_signing_failure_that_names_the_setting(
    tmp_path: Path,
) -> None:
    with pytest.raises(RefreshError) as caught:
        await source_for(tmp_path / "absent.pem").fetch(aws(), now=START)
    assert caught.value.reason == "signing"
    assert "--key-file / WI_KEY_FILE" in str(caught.value)


async def test_a_key_file_that_is_not_a_key_is_a_signing_failure(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text("not a key")
    with pytest.raises(RefreshError) as caught:
        await source_for(key_file).fetch(aws(), now=START)
    assert caught.value.reason == "signing"
    assert "not an unencrypted PEM private key" in str(caught.value)
    assert "not a key" not in str(caught.value)


def test_token_repr_never_shows_the_jwt() -> None:
    token = Token(value="eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl", issued_at=1, expires_at=2)
    assert "eyJ" not in repr(token)


def inconsistent_rsa_pem(pem: bytes) -> bytes:
    """An RSA key whose private exponents do not belong to its modulus."""
    key = keys.load_private_key(pem)
    assert isinstance(key, rsa.RSAPrivateKey)
    numbers = key.private_numbers()
    broken = rsa.RSAPrivateNumbers(
        p=numbers.p,
        q=numbers.q,
        d=numbers.d + 2,
        dmp1=numbers.dmp1 + 2,
        dmq1=numbers.dmq1 + 2,
        iqmp=numbers.iqmp,
        public_numbers=numbers.public_numbers,
    )
    return keys.private_key_pem(broken.private_key(unsafe_skip_rsa_key_validation=True))


async def test_a_key_whose_signatures_would_not_verify_is_refused(
    tmp_path: Path, rsa_pem: bytes
) -> None:
    """The sidecar skips OpenSSL's slow check of the RSA parameters at start,
    and checks with one signature instead that the key's halves match."""
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(inconsistent_rsa_pem(rsa_pem))
    with pytest.raises(RefreshError) as caught:
        await source_for(key_file).fetch(aws(), now=START)
    assert caught.value.reason == "signing"
    assert "not a consistent RSA key" in str(caught.value)
    assert "--key-file / WI_KEY_FILE" in str(caught.value)


def test_the_quick_check_costs_a_fraction_of_the_full_one(rsa_pem: bytes) -> None:
    def best_of_three(**checks: bool) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            keys.load_private_key(rsa_pem, **checks)
            times.append(time.perf_counter() - started)
        return min(times)

    assert best_of_three(full_rsa_check=False) < best_of_three() / 3
