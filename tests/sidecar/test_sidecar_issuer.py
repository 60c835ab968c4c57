"""Issuer mode against a real TLS issuer on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from oidc_tokens.claims import unverified_claims
from sidecar import issuer
from sidecar.config import ProviderConfig
from sidecar.issuer import IssuerSource, client_session, client_ssl_context
from sidecar.tokens import RefreshError
from tests.sidecar.sidecar_helpers import FakeIssuer, TlsFiles, free_port, signed_token

AWS = ProviderConfig(
    provider="aws",
    identity="s3-reader",
    audience="sts.amazonaws.com",
    expiration_seconds=3600,
    token_path=Path("/unused/aws-token"),
)


@pytest.fixture
def sa_token_file(tmp_path: Path) -> Path:
    path = tmp_path / "sa" / "token"
    path.parent.mkdir()
    path.write_text("projected-sa-token-1")
    return path


@pytest.fixture
async def session(tls_files: TlsFiles) -> AsyncIterator[aiohttp.ClientSession]:
    async with client_session(client_ssl_context(tls_files.ca)) as session:
        yield session


def source(
    session: aiohttp.ClientSession, url: str, sa_token_file: Path
) -> IssuerSource:
    return IssuerSource(session=session, token_url=url, sa_token_file=sa_token_file)


async def refused(
    session: aiohttp.ClientSession, url: str, sa_token_file: Path
) -> RefreshError:
    with pytest.raises(RefreshError) as caught:
        await source(session, url, sa_token_file).fetch(AWS, now=time.time())
    return caught.value


async def test_the_issuer_gets_the_sa_token_as_bearer_and_the_identity_as_json(
    fake_issuer: FakeIssuer, session: aiohttp.ClientSession, sa_token_file: Path
) -> None:
    token = await source(session, fake_issuer.url, sa_token_file).fetch(
        AWS, now=time.time()
    )
    assert token.value == fake_issuer.issued[0]
    assert token.expires_at == unverified_claims(token.value)["exp"]
    (request,) = fake_issuer.requests
    assert request["authorization"] == "Bearer projected-sa-token-1"
    assert request["content_type"] == "application/json"
    assert request["body"] == {"provider": "aws", "identity": "s3-reader"}


async def test_the_sa_token_is_read_again_for_every_request(
    fake_issuer: FakeIssuer, session: aiohttp.ClientSession, sa_token_file: Path
) -> None:
    client = source(session, fake_issuer.url, sa_token_file)
    await client.fetch(AWS, now=time.time())
    await asyncio.to_thread(sa_token_file.write_text, "projected-sa-token-2\n")
    await client.fetch(AWS, now=time.time())
    assert [r["authorization"] for r in fake_issuer.requests] == [
        "Bearer projected-sa-token-1",
        "Bearer projected-sa-token-2",
    ]


async def test_a_401_is_a_refusal_that_points_at_the_sa_token(
    fake_issuer: FakeIssuer, session: aiohttp.ClientSession, sa_token_file: Path
) -> None:
    fake_issuer.answers.append((401, {"error": "token audience mismatch"}))
    error = await refused(session, fake_issuer.url, sa_token_file)
    assert error.reason == "issuer_refused"
    assert "401: token audience mismatch" in str(error)
    assert "audience" in str(error)


async def test_a_403_is_a_refusal_that_points_at_the_scope(
    fake_issuer: FakeIssuer, session: aiohttp.ClientSession, sa_token_file: Path
) -> None:
    fake_issuer.answers.append((403, {"error": "pod not in project payments"}))
    error = await refused(session, fake_issuer.url, sa_token_file)
    assert error.reason == "issuer_refused"
    assert "aws identity 's3-reader'" in str(error)
    assert "scope" in str(error)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_a_5xx_counts_as_unreachable(
    fake_issuer: FakeIssuer,
    session: aiohttp.ClientSession,
    sa_token_file: Path,
    status: int,
) -> None:
    fake_issuer.answers.append((status, {"error": "apiserver unavailable"}))
    error = await refused(session, fake_issuer.url, sa_token_file)
    assert error.reason == "issuer_unreachable"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        json.dumps({"expiresAt": 1}).encode(),
        json.dumps({"token": "not.a-jwt"}).encode(),
        json.dumps({"token": 42}).encode(),
        json.dumps(["token"]).encode(),
    ],
)
async def test_a_200_without_a_usable_token_is_a_refusal(
    fake_issuer: FakeIssuer,
    session: aiohttp.ClientSession,
    sa_token_file: Path,
    body: bytes,
) -> None:
    fake_issuer.answers.append((200, body))
    error = await refused(session, fake_issuer.url, sa_token_file)
    assert error.reason == "issuer_refused"
    assert "without a usable token" in str(error)


async def test_an_already_expired_token_is_a_refusal_that_mentions_clocks(
    fake_issuer: FakeIssuer,
    session: aiohttp.ClientSession,
    sa_token_file: Path,
    rsa_pem: bytes,
) -> None:
    stale = signed_token(rsa_pem, now=time.time() - 7200, lifetime=3600)
    fake_issuer.answers.append((200, {"token": stale, "expiresAt": 0}))
    error = await refused(session, fake_issuer.url, sa_token_file)
    assert error.reason == "issuer_refused"
    assert "clock" in str(error)


async def test_a_redirect_is_not_followed_with_the_sa_token(
    fake_issuer: FakeIssuer, session: aiohttp.ClientSession, sa_token_file: Path
) -> None:
    fake_issuer.answers.append((307, fake_issuer.url.replace("/token", "/elsewhere")))
    error = await refused(session, fake_issuer.url, sa_token_file)
    assert error.reason == "issuer_refused"
    assert "307" in str(error)
    assert len(fake_issuer.requests) == 1


async def test_nobody_listening_is_unreachable(
    session: aiohttp.ClientSession, sa_token_file: Path
) -> None:
    url = f"https://127.0.0.1:{free_port()}/token"
    error = await refused(session, url, sa_token_file)
    assert error.reason == "issuer_unreachable"
    assert "--issuer-token-url / WI_ISSUER_TOKEN_URL" in str(error)


async def test_an_issuer_certificate_from_another_ca_is_unreachable(
    fake_issuer: FakeIssuer, tls_files: TlsFiles, sa_token_file: Path
) -> None:
    async with client_session(client_ssl_context(tls_files.other_ca)) as other:
        error = await refused(other, fake_issuer.url, sa_token_file)
    assert error.reason == "issuer_unreachable"
    assert "--issuer-ca-file / WI_ISSUER_CA_FILE" in str(error)
    assert fake_issuer.requests == []


async def test_a_slow_issuer_times_out_as_unreachable(
    aiohttp_server: Any,
    server_ssl_context: Any,
    tls_files: TlsFiles,
    sa_token_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/token", stall)
    server = await aiohttp_server(app, ssl=server_ssl_context)
    monkeypatch.setattr(issuer, "REQUEST_TIMEOUT_SECONDS", 0.2)
    async with client_session(client_ssl_context(tls_files.ca)) as slow:
        error = await refused(
            slow, f"https://127.0.0.1:{server.port}/token", sa_token_file
        )
    assert error.reason == "issuer_unreachable"
    assert "no answer within 0.2 s" in str(error)


async def test_a_missing_sa_token_fails_before_any_request(
    fake_issuer: FakeIssuer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    error = await refused(session, fake_issuer.url, tmp_path / "absent")
    assert error.reason == "signing"
    assert "--sa-token-file / WI_SA_TOKEN_FILE" in str(error)
    assert fake_issuer.requests == []


async def test_an_empty_sa_token_fails_before_any_request(
    fake_issuer: FakeIssuer, session: aiohttp.ClientSession, sa_token_file: Path
) -> None:
    await asyncio.to_thread(sa_token_file.write_text, "\n")
    error = await refused(session, fake_issuer.url, sa_token_file)
    assert error.reason == "signing"
    assert fake_issuer.requests == []


def test_a_ca_file_that_does_not_exist_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        client_ssl_context(tmp_path / "absent.pem")


def test_an_error_text_from_the_issuer_is_cut_to_one_short_line() -> None:
    payload = json.dumps({"error": "line one\nline two " + "x" * 500}).encode()
    with pytest.raises(RefreshError) as caught:
        issuer.token_from_answer(403, payload, provider=AWS, now=0)
    message = str(caught.value)
    assert "\n" not in message
    assert "line one line two" in message
    assert len(message) < 400
