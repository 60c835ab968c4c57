"""`serve --source kubernetes`: identities and namespaces watched on the API
server, namespaces missing from the cache read from it, the issuer's /token
checked against it, and the drift report run by the replica that holds its
Lease. Everything shares one cache with /mutate."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from webhook.cache import Cache
from webhook.issuer import Issuer
from webhook.kube import Kube, connect, load_configuration
from webhook.leader import LeaderElector
from webhook.reconciler import DriftReconciler, DriftSettings
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
    reconciler: DriftReconciler | None = None
    elector: LeaderElector | None = None
    """The drift report and, with leader election, who runs it."""


def drift_jobs(
    kube: Kube,
    cache: Cache,
    *,
    webhook_namespace: str,
    watch: WatchSettings,
    drift: DriftSettings,
) -> tuple[DriftReconciler, LeaderElector | None, Job]:
    """The drift reconciler, its elector (None without leader election), and
    the background job that runs them."""
    reconciler = DriftReconciler(
        kube, cache, webhook_namespace=webhook_namespace, watch=watch, settings=drift
    )
    leader = cache.metrics.drift_leader

    def on_change(leading: bool) -> None:
        leader.set(1 if leading else 0)

    if drift.leader_election:
        elector = LeaderElector(kube, drift.lease, reconciler.run, on_change=on_change)
        return reconciler, elector, elector.run

    async def always() -> None:
        on_change(True)
        try:
            await reconciler.run()
        finally:
            on_change(False)

    return reconciler, None, always


def cluster_source(
    kube: Kube,
    *,
    cache: Cache,
    settings: SidecarSettings,
    issuer: Issuer,
    webhook_namespace: str,
    watch: WatchSettings,
    drift: DriftSettings | None = None,
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
    background: list[Job] = [*(w.run for w in watches), reporter.run]
    reconciler, elector = None, None
    if drift is not None and drift.enabled:
        reconciler, elector, job = drift_jobs(
            kube, cache, webhook_namespace=webhook_namespace, watch=watch, drift=drift
        )
        background.append(job)
    return ClusterSource(
        services=services,
        watches=watches,
        background=background,
        routes=[json_route(TOKEN_PATH, token)],
        reconciler=reconciler,
        elector=elector,
    )


async def serve_from_cluster(
    *,
    kubeconfig: str | None,
    cache: Cache,
    settings: SidecarSettings,
    issuer: Issuer,
    webhook_namespace: str,
    watch: WatchSettings,
    drift: DriftSettings | None = None,
    listen: str,
    metrics_listen: str,
    tls: ReloadingContext,
    shutdown_delay: float = 0.0,
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
            drift=drift,
        )
        await serve(
            source.services,
            listen=listen,
            metrics_listen=metrics_listen,
            tls=tls,
            background=source.background,
            extra_routes=source.routes,
            shutdown_delay=shutdown_delay,
        )
