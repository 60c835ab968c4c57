"""The cloud SDKs read what the sidecar writes (every endpoint is on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web

from oidc_tokens.keys import jwks, load_public_key
from sidecar.config import Config
from tests.sidecar.sidecar_helpers import (
    GCP_AUDIENCE,
    ISSUER,
    REPO_ROOT,
    Harness,
    break_key,
    free_port,
    http_get,
    restore_key,
    subprocess_env,
)

ROLE_ARN = "arn:aws:iam::111122223333:role/notebook-s3"
STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"


@pytest.fixture(autouse=True)
def no_cloud_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the host may point an SDK anywhere but our fakes."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "GOOGLE_", "CLOUDSDK_")) or "proxy" in name.lower():
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_GCE_CHECK", "true")


async def test_google_auth_reads_the_credential_configuration_and_the_token(
    make_config: Callable[..., Config], make_harness: Callable[..., Harness]
) -> None:
    from google.auth import identity_pool

    config = make_config(
        aws_identity="",
        gcp_identity="bq-reader",
        gcp_audience=GCP_AUDIENCE,
        gcp_service_account="bq@proj.iam.gserviceaccount.com",
        gcp_sts_url="http://127.0.0.1:9/v1/token",
        gcp_iam_credentials_url="http://127.0.0.1:9",
    )
    await make_harness(config).tick()
    credentials = identity_pool.Credentials.from_file(
        str(config.token_dir / "gcp-credentials.json")
    )
    assert credentials.service_account_email == "bq@proj.iam.gserviceaccount.com"
    # Reading the subject token needs no request: it comes from the file.
    subject_token = credentials.retrieve_subject_token(None)
    assert subject_token == (config.token_dir / "gcp-token").read_text()


class StrictSts:
    """AssumeRoleWithWebIdentity that verifies the JWT with zero leeway."""

    def __init__(self, pem: bytes) -> None:
        (jwk,) = jwks([load_public_key(pem)])["keys"]
        self.key = jwt.PyJWK(jwk)
        self.outcomes: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        assert form["Action"] == "AssumeRoleWithWebIdentity"
        assert form["RoleArn"] == ROLE_ARN
        try:
            claims = jwt.decode(
                str(form["WebIdentityToken"]),
                self.key,
                algorithms=["RS256"],
                audience="sts.amazonaws.com",
                issuer=ISSUER,
                leeway=0,
            )
        except jwt.ExpiredSignatureError:
            return self.error("ExpiredTokenException", "Token expired")
        except jwt.InvalidTokenError as exc:
            return self.error("InvalidIdentityToken", type(exc).__name__)
        self.outcomes.append("ok")
        expiration = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        return web.Response(
            content_type="text/xml",
            text=f"""<AssumeRoleWithWebIdentityResponse xmlns="{STS_NS}">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>{claims["sub"]}</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::111122223333:assumed-role/notebook-s3/app</Arn>
      <AssumedRoleId>AROAEXAMPLE:app</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
      <SecretAccessKey>secret</SecretAccessKey>
      <SessionToken>session</SessionToken>
      <Expiration>{expiration.strftime("%Y-%m-%dT%H:%M:%SZ")}</Expiration>
    </Credentials>
    <Provider>{ISSUER}</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>""",
        )

    def error(self, code: str, message: str) -> web.Response:
        self.outcomes.append(code)
        return web.Response(
            status=400,
            content_type="text/xml",
            text=f"""<ErrorResponse xmlns="{STS_NS}">
  <Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>
  <RequestId>1</RequestId>
</ErrorResponse>""",
        )


def exchange(sts_url: str, token_file: Path) -> str:
    """What an app does with the injected env: a fresh client, the file's token."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import ClientError
    from botocore.utils import FileWebIdentityTokenLoader

    client = boto3.session.Session().client(
        "sts",
        endpoint_url=sts_url,
        region_name="eu-west-1",
        config=BotoConfig(signature_version=UNSIGNED, retries={"max_attempts": 1}),
    )
    try:
        client.assume_role_with_web_identity(
            RoleArn=ROLE_ARN,
            RoleSessionName="app",
            WebIdentityToken=FileWebIdentityTokenLoader(str(token_file))(),
        )
    except ClientError as error:
        return str(error.response["Error"]["Code"])
    return "ok"


async def test_boto3_exchanges_keep_working_through_refreshes_and_recover_after_an_outage(
    aiohttp_server: Any, rsa_pem: bytes, key_file: Path, shm_dir: Path, tmp_path: Path
) -> None:
    """case-24, compressed: 10 s tokens, the signer broken until the token expires."""
    sts = StrictSts(rsa_pem)
    app = web.Application()
    app.router.add_post("/", sts.handle)
    server = await aiohttp_server(app)
    sts_url = f"http://127.0.0.1:{server.port}/"
    token_file = shm_dir / "aws-token"
    probes = f"http://127.0.0.1:{free_port()}"
    env = subprocess_env(
        mode="key",
        issuer=ISSUER,
        key_file=str(key_file),
        token_dir=str(shm_dir),
        aws_identity="notebook-s3",
        aws_expiration_seconds="10",
        project="analytics",
        namespace="analytics",
        listen=probes.removeprefix("http://"),
    )
    with (tmp_path / "stderr.log").open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecar",
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )

    async def exchanges_for(seconds: float) -> list[str]:
        results = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            results.append(await asyncio.to_thread(exchange, sts_url, token_file))
            await asyncio.sleep(0.25)
        return results

    async def probe(path: str) -> int:
        status, _ = await asyncio.to_thread(http_get, f"{probes}{path}")
        return status

    try:
        for _ in range(100):
            if await probe("/readyz") == 200:
                break
            await asyncio.sleep(0.1)
        healthy = await exchanges_for(4)
        assert healthy and set(healthy) == {"ok"}

        break_key(key_file)  # the signer fails from now on
        outage: list[str] = []
        for _ in range(60):
            outage += await exchanges_for(0.5)
            if outage[-1] == "ExpiredTokenException":
                break
        assert outage[-1] == "ExpiredTokenException"
        assert await probe("/healthz") == 503
        assert await asyncio.to_thread(token_file.read_text)  # never emptied

        restore_key(key_file, rsa_pem)  # the signer recovers
        recovered = False
        for _ in range(40):
            if await asyncio.to_thread(exchange, sts_url, token_file) == "ok":
                recovered = True
                break
            await asyncio.sleep(0.25)
        assert recovered, "no successful exchange within 10 s of the recovery"
        assert await probe("/healthz") == 200
        assert process.returncode is None  # no restart was needed
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert "InvalidIdentityToken" not in sts.outcomes
