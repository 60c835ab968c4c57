"""The demo's flow end to end, and proof that its token checks can fail."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from oidc_tokens.claims import Subject, build_claims
from oidc_tokens.keys import generate_rsa_key
from oidc_tokens.signing import sign
from webhook.aws_trust import provider_arn, trust_admits, trust_policy
from webhook.identities import parse_identity
from webhook.issuer import Issuer

ROOT = Path(__file__).resolve().parents[2]


def test_make_demo_runs_every_step_and_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    for step in ("== 1 ", "== 2 ", "== 3 ", "== 4 ", "== 5 "):
        assert step in out
    assert "assumed-role/demo-s3/" in out
    assert "wrote and read back s3://demo-reports/" in out
    assert "identity_pool credentials for demo-gcs@" in out
    assert "aws-token #2" in out and "gcp-token #2" in out  # refreshed at least once
    assert "The demo passed" in out


def _identity(name: str) -> Any:
    return parse_identity(
        {
            "apiVersion": "workloadidentity.dev/v1alpha1",
            "kind": "WorkloadIdentity",
            "metadata": {"name": name},
            "spec": {
                "provider": "aws",
                "aws": {"roleArn": f"arn:aws:iam::111122223333:role/{name}"},
                "scope": {"projects": {"names": ["p"]}},
            },
        }
    )


@pytest.mark.parametrize(
    ("identity", "sub", "aud", "admitted"),
    [
        ("s3-reader", "s3-reader:reporting:team-a:default", "sts.amazonaws.com", True),
        (
            "s3-reader",
            "s3-reader-admin:ops:team-ops:default",
            "sts.amazonaws.com",
            False,
        ),
        ("s3-reader", "s3-reader:reporting:team-a:default", "other-audience", False),
    ],
)
def test_trust_policy_pins_audience_and_subject_without_prefix_matches(
    identity: str, sub: str, aud: str, admitted: bool
) -> None:
    issuer = "https://oidc.example.com/clusters/prod-1"
    policy = trust_policy(_identity(identity), issuer)
    arn = provider_arn(issuer, f"arn:aws:iam::111122223333:role/{identity}")
    assert (
        arn
        == "arn:aws:iam::111122223333:oidc-provider/oidc.example.com/clusters/prod-1"
    )
    assert (
        trust_admits(policy, {"sub": sub, "aud": aud}, oidc_provider_arn=arn)
        is admitted
    )


def test_a_token_from_another_provider_is_not_admitted() -> None:
    issuer = "https://oidc.example.com/clusters/prod-1"
    policy = trust_policy(_identity("s3-reader"), issuer)
    other = "arn:aws:iam::111122223333:oidc-provider/evil.example.com"
    claims = {"sub": "s3-reader:a:b:c", "aud": "sts.amazonaws.com"}
    assert not trust_admits(policy, claims, oidc_provider_arn=other)


def test_the_verifier_refuses_a_wrong_audience_and_an_unknown_key(
    issuer: Issuer,
) -> None:
    from webhook.demo.verifier import TokenRejected, TokenVerifier

    class StaticKeys(TokenVerifier):
        def _keys(self, name: str, *, refresh: bool = False) -> dict[str, Any]:
            return issuer.jwks()

    verifier = StaticKeys({issuer.url})
    subject = Subject("s3-reader", "p", "ns", "default")
    good, _ = issuer.issue(subject, audience="sts.amazonaws.com", lifetime_seconds=600)
    assert verifier.verify(good, audiences=["sts.amazonaws.com"])["sub"].startswith(
        "s3-reader:"
    )
    with pytest.raises(TokenRejected, match=r"(?i)audience"):
        verifier.verify(
            good,
            audiences=[
                "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x"
            ],
        )
    stranger = generate_rsa_key()
    claims = build_claims(
        subject,
        issuer=issuer.url,
        audience="sts.amazonaws.com",
        now=int(time.time()),
        lifetime_seconds=600,
    )
    forged = sign(claims, stranger)
    with pytest.raises(TokenRejected, match="kid"):
        verifier.verify(forged, audiences=["sts.amazonaws.com"])
    expired = sign(
        build_claims(
            subject,
            issuer=issuer.url,
            audience="sts.amazonaws.com",
            now=int(time.time()) - 700,
            lifetime_seconds=600,
        ),
        issuer.signing_key,
    )
    with pytest.raises(TokenRejected, match="expired"):
        verifier.verify(expired, audiences=["sts.amazonaws.com"])
    assert json.loads(json.dumps(jwt.get_unverified_header(good)))["kid"] == issuer.kid
