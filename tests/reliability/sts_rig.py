"""AWS as the tokens meet it: moto's server behind the strict STS check
(webhook/demo/strict_sts.py), with roles and the OIDC provider created by
`install`, and a client that exchanges tokens as boto3 in a pod does."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import boto3
import botocore.config
import botocore.exceptions

from webhook.cloud.aws import AwsCloud
from webhook.cloud.install import Clouds, Installer
from webhook.cloud.spec import InstallOptions
from webhook.identities import Provider, parse_identity

MOTO_ACCOUNT: Final = "123456789012"
S3_POLICY: Final = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": "arn:aws:s3:::reports/*",
        }
    ],
}


def install(moto_url: str, issuer_url: str, documents: list[dict[str, Any]]) -> None:
    """`python -m webhook install` for these identities, into moto."""
    session = boto3.session.Session(
        aws_access_key_id="moto-admin", aws_secret_access_key="moto-admin"
    )
    cloud = AwsCloud(session, endpoint_url=moto_url)
    out = io.StringIO()
    outcomes = Installer(
        InstallOptions(issuer_url=issuer_url),
        Clouds({Provider.AWS: lambda: cloud}),
        None,
        out,
    ).run([parse_identity(d) for d in documents])
    assert all(o.ok for o in outcomes), out.getvalue()


def sts_client(url: str) -> Any:
    return boto3.client(
        "sts",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="unused",
        aws_secret_access_key="unused",
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )


def exchange(client: Any, role: str, token: str) -> str:
    """AssumeRoleWithWebIdentity: "ok", or the error code STS answered."""
    try:
        client.assume_role_with_web_identity(
            RoleArn=f"arn:aws:iam::{MOTO_ACCOUNT}:role/{role}",
            RoleSessionName="payments.app-1",
            WebIdentityToken=token,
        )
    except botocore.exceptions.ClientError as error:
        return str(error.response["Error"]["Code"])
    return "ok"


@dataclass
class Exchanger:
    """A pod's app: exchanges whatever token the file holds, every `every`
    seconds, until stopped."""

    client: Any
    role: str
    read_token: Callable[[], str]
    every: float = 0.2
    outcomes: Counter[str] = field(default_factory=Counter)
    tokens: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            token = self.read_token()
            self.tokens.add(token)
            self.outcomes[exchange(self.client, self.role, token)] += 1
            time.sleep(self.every)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
