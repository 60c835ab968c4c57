from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from oidc_tokens.keys import generate_rsa_key, private_key_pem
from tests.webhook.casefiles import load_case
from tests.webhook.cluster_support import FAST, FAST_DRIFT, Cluster
from tests.webhook.fake_kube import FakeKube
from webhook.cache import Cache
from webhook.cluster import ClusterSource, cluster_source
from webhook.identities import parse_identities
from webhook.issuer import Issuer
from webhook.kube import Kube, connect
from webhook.metrics import create_metrics
from webhook.namespaces import namespaces_from_documents
from webhook.reconciler import DriftSettings
from webhook.server import Services, create_app
from webhook.sidecar_spec import SidecarSettings


@pytest.fixture(scope="session")
def signing_key_pem() -> bytes:
    return private_key_pem(generate_rsa_key())


@pytest.fixture
def issuer(signing_key_pem: bytes) -> Issuer:
    from oidc_tokens.keys import load_private_key

    return Issuer(
        url="https://issuer.test",
        signing_key=load_private_key(signing_key_pem),
        published=(),
    )


@pytest.fixture
def services(issuer: Issuer) -> Services:
    """Services loaded with case-01's identities and namespaces."""
    case = load_case("case-01")
    cache = Cache(create_metrics())
    loaded = parse_identities(case["given"]["identities"])
    cache.set_identities(loaded.identities, loaded.errors)
    cache.set_namespaces(
        namespaces_from_documents(
            case["given"]["namespaces"], webhook_namespace="workload-identity-system"
        )
    )
    return Services(
        cache=cache,
        settings=SidecarSettings(issuer_url=issuer.url),
        issuer=issuer,
        metrics=cache.metrics,
    )


@pytest.fixture
def key_file(tmp_path: Path, signing_key_pem: bytes) -> Path:
    path = tmp_path / "key.pem"
    path.write_bytes(signing_key_pem)
    path.chmod(0o600)
    return path


# --- the cluster source, against a fake API server ---------------------------

PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


@pytest.fixture
async def fake_kube() -> AsyncIterator[FakeKube]:
    """A fake API server on a free port of 127.0.0.1, stopped after the test."""
    fake = FakeKube()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def kube(
    fake_kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Kube]:
    """kubernetes-asyncio configured by hand for the fake, never from a kubeconfig."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    async with connect(fake_kube.configuration(), request_timeout=2.0) as client:
        yield client


@pytest.fixture
async def cluster(
    fake_kube: FakeKube, kube: Kube, issuer: Issuer, aiohttp_client: Any
) -> Cluster:
    """The cluster source as `serve` builds it; start its watches with
    `running(cluster.source.background)`."""
    cache = Cache(create_metrics())
    source = cluster_source(
        kube,
        cache=cache,
        settings=SidecarSettings(issuer_url=issuer.url),
        issuer=issuer,
        webhook_namespace="workload-identity-system",
        watch=FAST,
    )
    client = await aiohttp_client(
        create_app(source.services, extra_routes=source.routes)
    )
    return Cluster(fake_kube, source, client)


ReplicaFactory = Callable[[DriftSettings | None], ClusterSource]


@pytest.fixture
def replica(kube: Kube, issuer: Issuer) -> ReplicaFactory:
    """Builds the cluster source of one more webhook replica, with its own
    cache and metrics, against the same fake API server."""

    def build(drift: DriftSettings | None = None) -> ClusterSource:
        return cluster_source(
            kube,
            cache=Cache(create_metrics()),
            settings=SidecarSettings(issuer_url=issuer.url),
            issuer=issuer,
            webhook_namespace="workload-identity-system",
            watch=FAST,
            drift=drift,
        )

    return build


@pytest.fixture
async def drift_cluster(
    fake_kube: FakeKube, replica: ReplicaFactory, aiohttp_client: Any
) -> Cluster:
    """The cluster source with the drift report on, every 50 ms, without
    leader election; start it with `running(cluster.source.background)`."""
    source = replica(FAST_DRIFT)
    client = await aiohttp_client(
        create_app(source.services, extra_routes=source.routes)
    )
    return Cluster(fake_kube, source, client)
