"""The cloud SDKs read what the sidecar writes (every endpoint is on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from oidc_tokens.claims import unverified_claims
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
    """AWS STS as the app meets it: moto's server behind a check that does what
    STS does first and moto does not, verifying the web identity token's
    signature, issuer and audience, and its expiry with zero leeway."""

    def __init__(self, pem: bytes, moto_url: str) -> None:
        (jwk,) = jwks([load_public_key(pem)])["keys"]
        self.key = jwt.PyJWK(jwk)
        self.moto_url = moto_url
        self.outcomes: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        form = urllib.parse.parse_qs(body.decode())
        if form.get("Action") == ["AssumeRoleWithWebIdentity"]:
            refusal = self.refusal(form["WebIdentityToken"][0])
            self.outcomes.append(refusal or "ok")
            if refusal:
                return self.error(refusal)
        return await self.forward(request, body)

    def refusal(self, token: str) -> str | None:
        try:
            jwt.decode(
                token,
                self.key,
                algorithms=["RS256"],
                audience="sts.amazonaws.com",
                issuer=ISSUER,
                leeway=0,
            )
        except jwt.ExpiredSignatureError:
            return "ExpiredTokenException"
        except jwt.InvalidTokenError:
            return "InvalidIdentityToken"
        return None

    async def forward(self, request: web.Request, body: bytes) -> web.Response:
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length")
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                self.moto_url + request.path, data=body, headers=headers
            ) as answer,
        ):
            return web.Response(
                status=answer.status,
                body=await answer.read(),
                content_type=answer.content_type,
            )

    def error(self, code: str) -> web.Response:
        return web.Response(
            status=400,
            content_type="text/xml",
            text=f"""<ErrorResponse xmlns="{STS_NS}">
  <Error><Type>Sender</Type><Code>{code}</Code><Message>{code}</Message></Error>
  <RequestId>1</RequestId>
</ErrorResponse>""",
        )


@pytest.fixture
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


APP = """
import json, os, sys, time
import boto3
from botocore.exceptions import ClientError

stop = sys.argv[1]
while not os.path.exists(stop):
    started = time.time()
    try:
        # A fresh session each time: the default chain reads the token file.
        arn = boto3.Session().client("sts").get_caller_identity()["Arn"]
        outcome = "ok"
    except ClientError as error:
        outcome, arn = error.response["Error"]["Code"], ""
    print(json.dumps({"at": started, "outcome": outcome, "arn": arn}), flush=True)
    time.sleep(0.5)
"""


def app_env(token_file: Path, sts_url: str) -> dict[str, str]:
    """What the webhook injects into the app, with STS pointed at the fake."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "WI_")) and "proxy" not in k.lower()
    }
    env.update(
        AWS_ROLE_ARN=ROLE_ARN,
        AWS_WEB_IDENTITY_TOKEN_FILE=str(token_file),
        AWS_ROLE_SESSION_NAME="analytics.notebook",
        AWS_REGION="eu-west-1",
        AWS_DEFAULT_REGION="eu-west-1",
        AWS_STS_REGIONAL_ENDPOINTS="regional",
        AWS_ENDPOINT_URL=sts_url,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE="/nonexistent/aws-config",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
    )
    return env


@dataclass
class Watched:
    """What a reader of the token file saw, 20 times a second."""

    lifetime: float
    least_left: float = float("inf")
    unreadable: int = 0
    tokens: set[str] = field(default_factory=set)

    def look(self, token_file: Path) -> None:
        try:
            token = token_file.read_text()
        except OSError:
            self.unreadable += 1
            return
        if not token:
            self.unreadable += 1
            return
        self.tokens.add(token)
        left = unverified_claims(token)["exp"] - time.time()
        self.least_left = min(self.least_left, left)


async def test_a_long_running_boto3_client_never_sees_an_expired_token(
    aiohttp_server: Any,
    moto_url: str,
    rsa_pem: bytes,
    key_file: Path,
    shm_dir: Path,
    tmp_path: Path,
) -> None:
    """case-24 with real clients: an app process that calls STS (moto's server
    behind a zero-leeway expiry check) every 0.5 s through boto3's default
    credential chain, across four lifetimes of 10 s tokens, with the signer
    broken until the token in the file has expired, then mended."""
    lifetime = 10
    sts = StrictSts(rsa_pem, moto_url)
    app = web.Application()
    app.router.add_post("/", sts.handle)
    server = await aiohttp_server(app)
    sts_url = f"http://127.0.0.1:{server.port}"
    token_file = shm_dir / "aws-token"
    probes = f"127.0.0.1:{free_port()}"
    sidecar_env = subprocess_env(
        mode="key",
        issuer=ISSUER,
        key_file=str(key_file),
        token_dir=str(shm_dir),
        aws_identity="notebook-s3",
        aws_expiration_seconds=str(lifetime),
        project="analytics",
        namespace="analytics",
        listen=probes,
    )
    stop_file = tmp_path / "stop"
    with (tmp_path / "sidecar.log").open("wb") as stderr:
        sidecar = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", cwd=REPO_ROOT, env=sidecar_env,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    app_process: asyncio.subprocess.Process | None = None
    collecting: asyncio.Task[None] | None = None
    healthy, outage = Watched(lifetime), Watched(lifetime)
    calls: list[dict[str, Any]] = []

    async def collect(stream: asyncio.StreamReader) -> None:
        async for line in stream:
            calls.append(json.loads(line))

    async def probe(path: str) -> tuple[int, bytes]:
        return await asyncio.to_thread(http_get, f"http://{probes}{path}")

    async def watch(seen: Watched, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.to_thread(seen.look, token_file)
            await asyncio.sleep(0.05)

    def metric(text: bytes, name: str, **labels: str) -> float:
        """The sum of the samples of `name` that carry `labels`."""
        return sum(
            sample.value
            for family in text_string_to_metric_families(text.decode())
            for sample in family.samples
            if sample.name == f"workload_identity_sidecar_{name}"
            and labels.items() <= sample.labels.items()
        )

    try:
        for _ in range(100):
            if (await probe("/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.1)
        app_process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", APP, str(stop_file), cwd=tmp_path,
            env=app_env(token_file, sts_url), stdout=subprocess.PIPE,
        )  # fmt: skip
        assert app_process.stdout is not None
        collecting = asyncio.create_task(collect(app_process.stdout))
        healthy_from = time.time()
        await watch(healthy, 2 * lifetime)
        healthy_until = time.time()

        break_key(key_file)  # the signer fails from now on
        for _ in range(120):
            await watch(outage, 0.25)
            if any(c["outcome"] == "ExpiredTokenException" for c in calls):
                break
        assert outage.least_left <= 0, "the token never expired"
        metrics = (await probe("/metrics"))[1]
        assert metric(metrics, "token_valid") == 0
        assert metric(metrics, "refresh_failures_total", reason="signing") >= 1
        assert (await probe("/healthz"))[0] == 503
        assert (await probe("/readyz"))[0] == 503

        restore_key(key_file, rsa_pem)  # the signer recovers
        mended_at = time.time()
        for _ in range(100):
            if (await probe("/healthz"))[0] == 200:
                break
            await asyncio.sleep(0.05)
        await watch(healthy, lifetime)
        stop_file.touch()
        assert await asyncio.wait_for(app_process.wait(), 10) == 0
        await asyncio.wait_for(collecting, 5)

        assert sidecar.returncode is None  # no restart was needed
        metrics = (await probe("/metrics"))[1]
        successes = metric(metrics, "refresh_attempts_total") - metric(
            metrics, "refresh_failures_total"
        )
        sidecar.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(sidecar.wait(), 10) == 0
    finally:
        stop_file.touch()
        for process in (app_process, sidecar):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
        if collecting is not None and not collecting.done():
            collecting.cancel()

    # While the signer was healthy, every call worked and no reader ever saw a
    # token with less than 20% of its lifetime (less a second) left.
    before = [c for c in calls if healthy_from <= c["at"] < healthy_until]
    after = [c for c in calls if c["at"] >= mended_at + 3]
    assert len(before) >= 20 and len(after) >= 8
    assert {c["outcome"] for c in before + after} == {"ok"}
    assert {c["arn"] for c in before} == {
        "arn:aws:sts::111122223333:assumed-role/notebook-s3/analytics.notebook"
    }
    assert healthy.least_left >= 0.2 * lifetime - 1
    # The file never went missing or empty, and the outage did show.
    assert healthy.unreadable == outage.unreadable == 0
    assert "ExpiredTokenException" in {c["outcome"] for c in calls}
    assert "InvalidIdentityToken" not in sts.outcomes
    # Mended, the app succeeded again within one refresh interval: a retry comes
    # within 10% of the lifetime, the app calls twice a second, and the rest is
    # slack for a busy machine.
    first_ok = min(
        c["at"] for c in calls if c["at"] >= mended_at and c["outcome"] == "ok"
    )
    assert first_ok - mended_at <= 0.1 * lifetime + 0.5 + 2
    # Every token written is a success the metrics counted exactly once.
    assert successes >= len(healthy.tokens | outage.tokens)
