"""Issuer mode against a real TLS issuer on 127.0.0.1, and the HTTPS client
under it against issuers that misbehave."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from oidc_tokens.claims import unverified_claims
from sidecar import issuer
from sidecar.config import ProviderConfig
from sidecar.issuer import IssuerSource, client_ssl_context
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
def trust(tls_files: TlsFiles) -> ssl.SSLContext:
    """What the sidecar trusts: the CA that signed the test issuer's certificate."""
    return client_ssl_context(tls_files.ca)


def source(context: ssl.SSLContext, url: str, sa_token_file: Path) -> IssuerSource:
    return IssuerSource(ssl_context=context, token_url=url, sa_token_file=sa_token_file)


async def refused(trust: ssl.SSLContext, url: str, sa_token_file: Path) -> RefreshError:
    with pytest.raises(RefreshError) as caught:
        await source(trust, url, sa_token_file).fetch(AWS, now=time.time())
    return caught.value


async def test_the_issuer_gets_the_sa_token_as_bearer_and_the_identity_as_json(
    fake_issuer: FakeIssuer, trust: ssl.SSLContext, sa_token_file: Path
) -> None:
    token = await source(trust, fake_issuer.url, sa_token_file).fetch(
        AWS, now=time.time()
    )
    assert token.value == fake_issuer.issued[0]
    assert token.expires_at == unverified_claims(token.value)["exp"]
    (request,) = fake_issuer.requests
    assert request["authorization"] == "Bearer projected-sa-token-1"
    assert request["content_type"] == "application/json"
    assert request["body"] == {"provider": "aws", "identity": "s3-reader"}


async def test_the_sa_token_is_read_again_for_every_request(
    fake_issuer: FakeIssuer, trust: ssl.SSLContext, sa_token_file: Path
) -> None:
    client = source(trust, fake_issuer.url, sa_token_file)
    await client.fetch(AWS, now=time.time())
    await asyncio.to_thread(sa_token_file.write_text, "projected-sa-token-2\n")
    await client.fetch(AWS, now=time.time())
    assert [r["authorization"] for r in fake_issuer.requests] == [
        "Bearer projected-sa-token-1",
        "Bearer projected-sa-token-2",
    ]


async def test_a_401_is_a_refusal_that_points_at_the_sa_token(
    fake_issuer: FakeIssuer, trust: ssl.SSLContext, sa_token_file: Path
) -> None:
    fake_issuer.answers.append((401, {"error": "token audience mismatch"}))
    error = await refused(trust, fake_issuer.url, sa_token_file)
    assert error.reason == "issuer_refused"
    assert "401: token audience mismatch" in str(error)
    assert "audience" in str(error)


async def test_a_403_is_a_refusal_that_points_at_the_scope(
    fake_issuer: FakeIssuer, trust: ssl.SSLContext, sa_token_file: Path
) -> None:
    fake_issuer.answers.append((403, {"error": "pod not in project payments"}))
    error = await refused(trust, fake_issuer.url, sa_token_file)
    assert error.reason == "issuer_refused"
    assert "aws identity 's3-reader'" in str(error)
    assert "scope" in str(error)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_a_5xx_counts_as_unreachable(
    fake_issuer: FakeIssuer,
    trust: ssl.SSLContext,
    sa_token_file: Path,
    status: int,
) -> None:
    fake_issuer.answers.append((status, {"error": "apiserver unavailable"}))
    error = await refused(trust, fake_issuer.url, sa_token_file)
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
    trust: ssl.SSLContext,
    sa_token_file: Path,
    body: bytes,
) -> None:
    fake_issuer.answers.append((200, body))
    error = await refused(trust, fake_issuer.url, sa_token_file)
    assert error.reason == "issuer_refused"
    assert "without a usable token" in str(error)


async def test_an_already_expired_token_is_a_refusal_that_mentions_clocks(
    fake_issuer: FakeIssuer,
    trust: ssl.SSLContext,
    sa_token_file: Path,
    rsa_pem: bytes,
) -> None:
    stale = signed_token(rsa_pem, now=time.time() - 7200, lifetime=3600)
    fake_issuer.answers.append((200, {"token": stale, "expiresAt": 0}))
    error = await refused(trust, fake_issuer.url, sa_token_file)
    assert error.reason == "issuer_refused"
    assert "clock" in str(error)


async def test_a_redirect_is_not_followed_with_the_sa_token(
    fake_issuer: FakeIssuer, trust: ssl.SSLContext, sa_token_file: Path
) -> None:
    fake_issuer.answers.append((307, fake_issuer.url.replace("/token", "/elsewhere")))
    error = await refused(trust, fake_issuer.url, sa_token_file)
    assert error.reason == "issuer_refused"
    assert "307" in str(error)
    assert len(fake_issuer.requests) == 1


async def test_nobody_listening_is_unreachable(
    trust: ssl.SSLContext, sa_token_file: Path
) -> None:
    url = f"https://127.0.0.1:{free_port()}/token"
    error = await refused(trust, url, sa_token_file)
    assert error.reason == "issuer_unreachable"
    assert "--issuer-token-url / WI_ISSUER_TOKEN_URL" in str(error)


async def test_an_issuer_certificate_from_another_ca_is_unreachable(
    fake_issuer: FakeIssuer, tls_files: TlsFiles, sa_token_file: Path
) -> None:
    other = client_ssl_context(tls_files.other_ca)
    error = await refused(other, fake_issuer.url, sa_token_file)
    assert error.reason == "issuer_unreachable"
    assert "--issuer-ca-file / WI_ISSUER_CA_FILE" in str(error)
    assert fake_issuer.requests == []


async def test_the_issuer_ca_given_inline_is_trusted(
    fake_issuer: FakeIssuer, tls_files: TlsFiles, sa_token_file: Path
) -> None:
    """How an injected sidecar trusts the webhook: its CA comes in WI_ISSUER_CA,
    since no file of the webhook's namespace can be mounted in the pod's."""
    inline = client_ssl_context(None, tls_files.ca.read_text())
    token = await source(inline, fake_issuer.url, sa_token_file).fetch(
        AWS, now=time.time()
    )
    assert token.value == fake_issuer.issued[0]


def test_inline_text_without_a_certificate_fails_at_start() -> None:
    with pytest.raises(ssl.SSLError):
        client_ssl_context(None, "-----BEGIN CERTIFICATE-----\nnot base64\n")


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
    error = await refused(
        client_ssl_context(tls_files.ca),
        f"https://127.0.0.1:{server.port}/token",
        sa_token_file,
    )
    assert error.reason == "issuer_unreachable"
    assert "no answer within 0.2 s" in str(error)


async def test_a_missing_sa_token_fails_before_any_request(
    fake_issuer: FakeIssuer, trust: ssl.SSLContext, tmp_path: Path
) -> None:
    error = await refused(trust, fake_issuer.url, tmp_path / "absent")
    assert error.reason == "signing"
    assert "--sa-token-file / WI_SA_TOKEN_FILE" in str(error)
    assert fake_issuer.requests == []


async def test_an_empty_sa_token_fails_before_any_request(
    fake_issuer: FakeIssuer, trust: ssl.SSLContext, sa_token_file: Path
) -> None:
    await asyncio.to_thread(sa_token_file.write_text, "\n")
    error = await refused(trust, fake_issuer.url, sa_token_file)
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


# --- the HTTPS client, against issuers that answer oddly or not at all ---------

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawIssuer:
    """TLS servers on 127.0.0.1 that send exactly the bytes a test writes."""

    context: ssl.SSLContext
    requests: list[bytes] = field(default_factory=list)
    _servers: list[asyncio.Server] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, handler: RawHandler, *, tls: bool = True) -> str:
        async def serve(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            try:
                await handler(reader, writer)
            except (asyncio.CancelledError, OSError, asyncio.IncompleteReadError):
                pass  # the test is over, or the client hung up
            finally:
                writer.transport.abort()
                self._tasks.discard(task)

        server = await asyncio.start_server(
            serve, "127.0.0.1", 0, ssl=self.context if tls else None
        )
        self._servers.append(server)
        return f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/token"

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)


@pytest.fixture
async def raw_issuer(server_ssl_context: ssl.SSLContext) -> AsyncIterator[RawIssuer]:
    raw = RawIssuer(server_ssl_context)
    try:
        yield raw
    finally:
        await raw.close()


def token_answer(pem: bytes) -> bytes:
    token = signed_token(pem, now=time.time())
    return json.dumps({"token": token, "expiresAt": int(time.time()) + 3600}).encode()


def answering(*chunks: bytes, raw: RawIssuer, then_wait: bool = False) -> RawHandler:
    """A handler that reads the request, then writes `chunks` one by one."""

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await raw.read_request(reader)
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        if then_wait:
            await asyncio.sleep(30)

    return handle


async def test_the_request_is_one_http_11_post_with_length_and_connection_close(
    raw_issuer: RawIssuer,
    trust: ssl.SSLContext,
    sa_token_file: Path,
    rsa_pem: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = token_answer(rsa_pem)
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    url = await raw_issuer.start(answering(head + body, raw=raw_issuer))
    # No proxy is ever used, whatever the environment says.
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
    url = url.replace("/token", "/issuer/token?v=1")
    token = await source(trust, url, sa_token_file).fetch(AWS, now=time.time())
    assert token.value == json.loads(body)["token"]

    (request,) = raw_issuer.requests
    head_bytes, _, sent = request.partition(b"\r\n\r\n")
    start_line, *lines = head_bytes.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
    assert start_line == "POST /issuer/token?v=1 HTTP/1.1"
    assert headers["host"] == url.split("/")[2]
    assert headers["content-length"] == str(len(sent))
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert headers["authorization"] == "Bearer projected-sa-token-1"
    assert json.loads(sent) == {"provider": "aws", "identity": "s3-reader"}


async def test_a_chunked_answer_after_an_interim_103_is_read_whole(
    raw_issuer: RawIssuer, trust: ssl.SSLContext, sa_token_file: Path, rsa_pem: bytes
) -> None:
    body = token_answer(rsa_pem)
    half = len(body) // 2
    chunks = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        f"{half:x};note=1\r\n".encode() + body[:half] + b"\r\n",
        f"{len(body) - half:X}\r\n".encode() + body[half:] + b"\r\n",
        b"0\r\nX-Trailer: yes\r\n\r\n",
    )
    url = await raw_issuer.start(answering(*chunks, raw=raw_issuer, then_wait=True))
    token = await source(trust, url, sa_token_file).fetch(AWS, now=time.time())
    assert token.value == json.loads(body)["token"]


async def test_an_answer_framed_by_closing_the_connection_is_read_whole(
    raw_issuer: RawIssuer, trust: ssl.SSLContext, sa_token_file: Path, rsa_pem: bytes
) -> None:
    body = token_answer(rsa_pem)
    url = await raw_issuer.start(
        answering(b"HTTP/1.0 200 OK\r\n\r\n", body[:100], body[100:], raw=raw_issuer)
    )
    token = await source(trust, url, sa_token_file).fetch(AWS, now=time.time())
    assert token.value == json.loads(body)["token"]


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not valid HTTP/1.1"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n", "not valid HTTP/1.1"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
            "repeated",
        ),
        (b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n", "exceeds"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 10_000 + b"\r\n\r\n", "exceeds 8192 bytes"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: a\r\n" * 100 + b"\r\n", "header fields"),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"tok', "closed before"),
        (b"HTTP/1.1 200 OK\r\n", "closed before"),
        (b"", "closed before"),
    ],
    ids=[
        "not-http",
        "bad-length",
        "two-lengths",
        "bad-header",
        "too-long",
        "bad-chunk",
        "unknown-coding",
        "huge-head",
        "many-headers",
        "cut-body",
        "cut-head",
        "nothing",
    ],
)
async def test_a_broken_answer_is_unreachable_and_says_what_was_wrong(
    raw_issuer: RawIssuer,
    trust: ssl.SSLContext,
    sa_token_file: Path,
    answer: bytes,
    detail: str,
) -> None:
    url = await raw_issuer.start(answering(answer, raw=raw_issuer))
    error = await refused(trust, url, sa_token_file)
    assert error.reason == "issuer_unreachable"
    assert detail in str(error)


async def test_an_answer_longer_than_the_limit_without_a_length_is_cut_off(
    raw_issuer: RawIssuer, trust: ssl.SSLContext, sa_token_file: Path
) -> None:
    endless = b"x" * (issuer.MAX_ANSWER_BYTES + 10)
    url = await raw_issuer.start(
        answering(b"HTTP/1.1 200 OK\r\n\r\n", endless, raw=raw_issuer, then_wait=True)
    )
    error = await refused(trust, url, sa_token_file)
    assert error.reason == "issuer_unreachable"
    assert "exceeds" in str(error)


@pytest.mark.parametrize("stage", ["tls", "answer", "body"])
async def test_an_issuer_that_stalls_at_any_stage_times_out(
    raw_issuer: RawIssuer,
    trust: ssl.SSLContext,
    sa_token_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    stage: str,
) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if stage != "tls":
            await raw_issuer.read_request(reader)
        if stage == "body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        await asyncio.sleep(30)

    # A plain TCP server never completes the TLS handshake.
    url = await raw_issuer.start(stall, tls=stage != "tls")
    monkeypatch.setattr(issuer, "REQUEST_TIMEOUT_SECONDS", 0.3)
    started = time.monotonic()
    error = await refused(trust, url, sa_token_file)
    assert time.monotonic() - started < 2
    assert error.reason == "issuer_unreachable"
    assert "no answer within 0.3 s" in str(error)


async def test_a_plain_http_server_fails_the_tls_handshake(
    raw_issuer: RawIssuer, trust: ssl.SSLContext, sa_token_file: Path
) -> None:
    async def talk_plain(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read(100)  # the TLS ClientHello
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    url = await raw_issuer.start(talk_plain, tls=False)
    error = await refused(trust, url, sa_token_file)
    assert error.reason == "issuer_unreachable"
    assert "TLS" in str(error)


async def test_a_certificate_for_another_name_is_not_accepted(
    raw_issuer: RawIssuer,
    tls_files: TlsFiles,
    trust: ssl.SSLContext,
    sa_token_file: Path,
) -> None:
    """The URL's host is checked against the certificate, also for an IP address."""
    raw_issuer.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    raw_issuer.context.load_cert_chain(
        tls_files.other_name_cert, tls_files.other_name_key
    )
    url = await raw_issuer.start(answering(b"HTTP/1.1 200 OK\r\n\r\n", raw=raw_issuer))
    error = await refused(trust, url, sa_token_file)
    assert error.reason == "issuer_unreachable"
    assert "certificate was not accepted" in str(error)
    assert "127.0.0.1" in str(error)
    assert raw_issuer.requests == []


@pytest.mark.parametrize("content", ["two\nlines", "with space", "tab\there"])
async def test_a_sa_token_that_would_break_the_header_is_refused_before_sending(
    fake_issuer: FakeIssuer, trust: ssl.SSLContext, sa_token_file: Path, content: str
) -> None:
    await asyncio.to_thread(sa_token_file.write_text, content)
    error = await refused(trust, fake_issuer.url, sa_token_file)
    assert error.reason == "signing"
    assert fake_issuer.requests == []
