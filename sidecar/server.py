"""`/readyz`, `/healthz` and `/metrics` over plain HTTP on one port."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from sidecar import status
from sidecar.clock import Clock
from sidecar.refresh import Refresher

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_SECONDS: Final = 1.0
"""Probes are tiny; waiting longer would only delay the pod's termination."""


class ListenError(OSError):
    """The probe port cannot be bound."""


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    ready_margin_seconds: float
    stall_after_seconds: float
    """Liveness fails after this long without a completed tick."""


_REFRESHER: Final = web.AppKey("refresher", Refresher)
_REGISTRY: Final = web.AppKey("registry", CollectorRegistry)
_CLOCK: Final = web.AppKey("clock", Clock)
_SETTINGS: Final = web.AppKey("settings", ProbeSettings)


def create_app(
    *,
    refresher: Refresher,
    registry: CollectorRegistry,
    clock: Clock,
    settings: ProbeSettings,
) -> web.Application:
    app = web.Application()
    app[_REFRESHER] = refresher
    app[_REGISTRY] = registry
    app[_CLOCK] = clock
    app[_SETTINGS] = settings
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app


async def _readyz(request: web.Request) -> web.Response:
    app = request.app
    ready, body = status.readiness(
        app[_REFRESHER].states,
        now=app[_CLOCK].wall(),
        margin_seconds=app[_SETTINGS].ready_margin_seconds,
    )
    return web.json_response(body, status=200 if ready else 503)


async def _healthz(request: web.Request) -> web.Response:
    app = request.app
    clock = app[_CLOCK]
    refresher = app[_REFRESHER]
    live, body = status.liveness(
        refresher.states,
        now=clock.wall(),
        since_progress=clock.monotonic() - refresher.last_progress,
        stall_after=app[_SETTINGS].stall_after_seconds,
    )
    return web.json_response(body, status=200 if live else 503)


async def _metrics(request: web.Request) -> web.Response:
    # Prometheus's Accept header picks the text format or OpenMetrics.
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(
        body=encode(request.app[_REGISTRY]), headers={"Content-Type": content_type}
    )


async def serve_probes(app: web.Application, *, host: str, port: int) -> None:
    """Serve `app` on host:port until cancelled."""
    async with serving(app, host=host, port=port):
        await asyncio.get_running_loop().create_future()


@asynccontextmanager
async def serving(app: web.Application, *, host: str, port: int) -> AsyncIterator[int]:
    """Serve `app` on host:port while the block runs; yields the bound port."""
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose "
                "another --listen / WI_LISTEN"
            ) from exc
        log.info("serving /healthz, /readyz and /metrics on %s", site.name)
        yield site.port
    finally:
        await runner.cleanup()
