"""`serve --source kubernetes`: identities and namespaces watched on the API
server, namespaces missing from the cache read from it, and the issuer's
/token checked against it. Everything shares one cache with /mutate."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from webhook.cache import Cache
from webhook.issuer import Issuer
from webhook.kube import Kube, connect, load_configuration
from webhook.report import IdentityReporter
from webhook.server import Services, json_route, serve
from webhook.sidecar_spec import SidecarSettings
from webhook.tls import ReloadingContext
from webhook.tokens_endpoint import TOKEN_PATH, TokenEndpoint, TokenReviewer
from webhook.watch import NamespaceReader, Reflector, WatchSettings, reflectors

Job = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class ClusterSource:
    """What `serve` runs for the cluster source, besides /mutate."""

    services: Services
    watches: list[Reflector] = field(default_factory=list)
    background: list[Job] = field(default_factory=list)
    """The watches and the status reporter; they run until cancelled."""
    routes: list[web.RouteDef] = field(default_factory=list)
    """/token."""


def cluster_source(
    kube: Kube,
    *,
    cache: Cache,
    settings: SidecarSettings,
    issuer: Issuer,
    webhook_namespace: str,
    watch: WatchSettings,
) -> ClusterSource:
    reporter = IdentityReporter(kube)
    services = Services(
        cache=cache,
        settings=settings,
        issuer=issuer,
        metrics=cache.metrics,
        lookup_namespace=NamespaceReader(kube, webhook_namespace=webhook_namespace),
    )
    watches = reflectors(
        kube,
        cache,
        webhook_namespace=webhook_namespace,
        settings=watch,
        report=reporter,
    )
    token = TokenEndpoint(services, TokenReviewer(kube, audience=issuer.url))
    return ClusterSource(
        services=services,
        watches=watches,
        background=[*(w.run for w in watches), reporter.run],
        routes=[json_route(TOKEN_PATH, token)],
    )


async def serve_from_cluster(
    *,
    kubeconfig: str | None,
    cache: Cache,
    settings: SidecarSettings,
    issuer: Issuer,
    webhook_namespace: str,
    watch: WatchSettings,
    listen: str,
    metrics_listen: str,
    tls: ReloadingContext,
) -> None:
    """Serve until SIGTERM or SIGINT, ready once both watches have synced."""
    configuration = await load_configuration(kubeconfig)
    async with connect(configuration) as kube:
        source = cluster_source(
            kube,
            cache=cache,
            settings=settings,
            issuer=issuer,
            webhook_namespace=webhook_namespace,
            watch=watch,
        )
        await serve(
            source.services,
            listen=listen,
            metrics_listen=metrics_listen,
            tls=tls,
            background=source.background,
            extra_routes=source.routes,
        )
