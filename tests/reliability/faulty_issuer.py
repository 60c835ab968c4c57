"""The issuer's /token as a sidecar meets it, with faults on demand: gone,
answering errors, answering nonsense, or answering slowly. It runs on its own
event loop in a thread, over TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from oidc_tokens.claims import Subject, build_claims
from oidc_tokens.keys import SigningKey
from oidc_tokens.signing import sign

T = TypeVar("T")

NESTED = b"[" * 30_000 + b"]" * 30_000
"""An answer deeper than any JSON parser's recursion limit, and short enough
(60 KB) that a client reads it whole."""


@dataclass
class FaultyIssuer:
    key: SigningKey
    issuer_url: str
    tls: ssl.SSLContext
    lifetime: int = 5
    mode: str = "sign"
    """sign | error (503) | refuse (401) | garbage (200 without a JWT) |
    nested (500 whose body is nested too deep to parse) | slow"""
    delay: float = 0.0
    """Seconds a slow answer takes."""
    seen: Counter[str] = field(default_factory=Counter)
    issued: list[str] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _thread: threading.Thread | None = None

    @property
    def token_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/token"

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(15)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.up()

    def set_mode(self, mode: str) -> None:
        """What /token does from now on (called from the test's thread)."""
        self.mode = mode
        self._loop.call_soon_threadsafe(self._changed.set)

    def up(self) -> None:
        """Listen (again, on the same port)."""
        self._call(self._listen())

    def down(self) -> None:
        """Stop listening: connections are refused."""
        self._call(self._close())

    def stop(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.tls)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _token(self, request: web.Request) -> web.Response:
        body = await request.json()
        mode = self.mode
        self.seen[mode] += 1
        if mode == "error":
            return web.json_response({"error": "the API server is away"}, status=503)
        if mode == "refuse":
            return web.json_response({"error": "token not accepted"}, status=401)
        if mode == "garbage":
            return web.json_response({"token": "not a token"})
        if mode == "nested":
            return web.Response(
                status=500, body=NESTED, content_type="application/json"
            )
        if mode == "slow":
            # Slow until `delay` has passed, or until the issuer is mended:
            # then what waits is answered, as a recovered issuer would.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.delay):
                    while self.mode == "slow":
                        self._changed.clear()
                        await self._changed.wait()
        now = int(time.time())
        claims = build_claims(
            Subject(body["identity"], "payments", "payments", "reports", "app-1"),
            issuer=self.issuer_url,
            audience="sts.amazonaws.com",
            now=now,
            lifetime_seconds=self.lifetime,
        )
        token = sign(claims, self.key)
        self.issued.append(token)
        return web.json_response({"token": token, "expiresAt": claims["exp"]})


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
