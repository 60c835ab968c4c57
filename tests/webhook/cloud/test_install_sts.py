"""End to end for AWS: after `install`, the strict STS check in front of moto
takes a token of the identity and refuses one of another identity or for
another audience, exactly as AWS STS would."""

from __future__ import annotations

import io
from typing import Any

import boto3
import botocore.exceptions
import pytest

from tests.webhook.cloud.support import (
    ACCOUNT,
    LocalIssuer,
    LoopThread,
    aws_document,
    s3_policy,
)
from webhook.cloud.aws import AwsCloud
from webhook.cloud.install import Clouds, Installer
from webhook.cloud.spec import InstallOptions
from webhook.demo.strict_sts import StrictSts, create_app
from webhook.identities import Provider, parse_identity


def _sts(url: str) -> Any:
    return boto3.client(
        "sts",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="moto-admin",
        aws_secret_access_key="moto-admin",
    )


def _assume(url: str, role: str, token: str) -> dict[str, Any]:
    answer: dict[str, Any] = _sts(url).assume_role_with_web_identity(
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{role}",
        RoleSessionName="payments.pod-1",
        WebIdentityToken=token,
    )
    return answer


def _refusal(url: str, role: str, token: str) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        _assume(url, role, token)
    error = refused.value.response["Error"]
    return f"{error['Code']}: {error['Message']}"


@pytest.fixture
def strict_sts(moto: str, local_issuer: LocalIssuer, loop_thread: LoopThread) -> str:
    return loop_thread.serve(
        create_app(StrictSts(moto_url=moto, ca_file=local_issuer.ca_file))
    )


def _install(moto: str, issuer: str, *names: str) -> None:
    identities = [
        parse_identity(
            aws_document(
                name, permissions={"mode": "managed", "policyDocument": s3_policy()}
            )
        )
        for name in names
    ]
    session = boto3.session.Session(
        aws_access_key_id="moto-admin", aws_secret_access_key="moto-admin"
    )
    cloud = AwsCloud(session, endpoint_url=moto)
    out = io.StringIO()
    outcomes = Installer(
        InstallOptions(issuer_url=issuer),
        Clouds({Provider.AWS: lambda: cloud}),
        None,
        out,
    ).run(identities)
    assert all(o.ok for o in outcomes), out.getvalue()


def test_before_install_sts_refuses_the_token_for_want_of_a_provider(
    strict_sts: str, local_issuer: LocalIssuer
) -> None:
    token = local_issuer.token("reports", audience="sts.amazonaws.com")
    assert "no OpenIDConnect provider found" in _refusal(strict_sts, "reports", token)


def test_after_install_a_token_of_the_identity_assumes_its_role(
    moto: str, strict_sts: str, local_issuer: LocalIssuer
) -> None:
    _install(moto, local_issuer.url, "reports")
    token = local_issuer.token("reports", audience="sts.amazonaws.com")
    answer = _assume(strict_sts, "reports", token)
    assert answer["AssumedRoleUser"]["Arn"].endswith(
        ":assumed-role/reports/payments.pod-1"
    )
    assert answer["Credentials"]["AccessKeyId"]


def test_a_token_of_another_identity_cannot_assume_the_role(
    moto: str, strict_sts: str, local_issuer: LocalIssuer
) -> None:
    _install(moto, local_issuer.url, "reports", "reports-admin")
    stranger = local_issuer.token("reports-admin", audience="sts.amazonaws.com")
    refusal = _refusal(strict_sts, "reports", stranger)
    assert refusal.startswith("AccessDenied: Not authorized"), refusal
    assert _assume(strict_sts, "reports-admin", stranger)  # its own role works


def test_a_token_for_another_audience_is_refused(
    moto: str, strict_sts: str, local_issuer: LocalIssuer
) -> None:
    _install(moto, local_issuer.url, "reports")
    token = local_issuer.token("reports", audience="https://example.com/other")
    refusal = _refusal(strict_sts, "reports", token)
    assert refusal.startswith("InvalidIdentityToken"), refusal
