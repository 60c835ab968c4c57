"""Fixtures for the cloud-side tests. Every server binds 127.0.0.1 on a free
port and is stopped by the fixture that started it; no name but a loopback
one resolves while these tests run."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from tests.webhook.cloud.support import LOOPBACK, LocalIssuer, LoopThread, free_port
from webhook.issuer import DISCOVERY_PATH, JWKS_PATH, load_issuer, write_new_key
from webhook.tls import write_self_signed


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No name but a loopback one resolves in these tests: an SDK falling
    back to a real cloud endpoint fails at once instead of going out."""
    original = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in LOOPBACK:
            raise socket.gaierror(f"tests reach 127.0.0.1 only, not {name}")
        return original(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def local_issuer(tmp_path: Path, loop_thread: LoopThread) -> LocalIssuer:
    """The cluster's issuer: discovery and JWKS over HTTPS on 127.0.0.1."""
    port = free_port()
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_self_signed(str(cert), str(key), hosts=["127.0.0.1"])
    signing = tmp_path / "signing.pem"
    write_new_key(str(signing))
    issuer = load_issuer(f"https://127.0.0.1:{port}", [str(signing)])

    async def discovery(_: web.Request) -> web.Response:
        return web.json_response(issuer.discovery())

    async def keys(_: web.Request) -> web.Response:
        return web.json_response(issuer.jwks())

    app = web.Application()
    app.router.add_get(DISCOVERY_PATH, discovery)
    app.router.add_get(JWKS_PATH, keys)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(cert), str(key))
    loop_thread.serve(app, tls=tls, port=port)
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(issuer.jwks()))
    return LocalIssuer(issuer, str(cert), jwks_file)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def moto(moto_url: str) -> Iterator[str]:
    """moto's server, emptied before and after each test, IAM checks off."""
    requests.post(f"{moto_url}/moto-api/reset", timeout=10)
    try:
        yield moto_url
    finally:
        requests.post(f"{moto_url}/moto-api/reset-auth", data=b"inf", timeout=10)
        requests.post(f"{moto_url}/moto-api/reset", timeout=10)
