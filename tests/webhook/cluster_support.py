"""The cluster source wired as `serve` wires it, against the fake API server,
with an aiohttp test client in front of /mutate, /readyz and /token."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonpatch
from aiohttp.test_utils import TestClient

from tests.webhook.fake_kube import IDENTITIES, FakeKube, Obj, eventually
from webhook.cache import Cache
from webhook.cluster import ClusterSource
from webhook.leader import LeaseSettings
from webhook.reconciler import DriftSettings
from webhook.watch import Reflector, WatchSettings

FAST = WatchSettings(
    timeout_seconds=30,
    backoff_initial=0.01,
    backoff_max=0.05,
    unready_after=0.3,
    list_timeout=2.0,
    connect_timeout=1.0,
)
"""Retries within tens of milliseconds, unready after 0.3 s of failures."""

PROJECT_LABEL = "workloadidentity.dev/project"
WEBHOOK_NAMESPACE = "workload-identity-system"

FAST_DRIFT = DriftSettings(interval=0.05, leader_election=False, page_size=2)
"""A drift pass every 50 ms, by this replica alone; pods listed two a page."""


def fast_lease(identity: str, *, release: bool = True) -> LeaseSettings:
    """A short Lease: it lasts 3 s and is renewed every second (the shortest
    period kubernetes-asyncio's election accepts), with room for a busy
    machine between renewals."""
    return LeaseSettings(
        namespace=WEBHOOK_NAMESPACE,
        identity=identity,
        lease_duration=3,
        renew_deadline=2.5,
        retry_period=1.0,
        release_on_cancel=release,
    )


def elected_drift(identity: str, *, release: bool = True) -> DriftSettings:
    return DriftSettings(
        interval=0.05, lease=fast_lease(identity, release=release), page_size=2
    )


def aws_identity(
    name: str,
    *,
    projects: Sequence[str] = ("team-a",),
    tags: Sequence[str] | None = None,
    role_arn: str | None = None,
) -> Obj:
    scope: Obj = {"projects": {"restrict": True, "names": list(projects)}}
    if tags is not None:
        scope["tags"] = {"restrict": True, "names": list(tags)}
    return {
        "apiVersion": "workloadidentity.dev/v1alpha1",
        "kind": "WorkloadIdentity",
        "metadata": {"name": name},
        "spec": {
            "provider": "aws",
            "aws": {"roleArn": role_arn or f"arn:aws:iam::111122223333:role/{name}"},
            "scope": scope,
            "token": {"expirationSeconds": 3600},
        },
    }


def admission_review(
    namespace: str = "team-a", *, annotations: Mapping[str, str] | None = None
) -> Obj:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "app",
                    "namespace": namespace,
                    "annotations": dict(annotations or {}),
                },
                "spec": {"containers": [{"name": "app", "image": "app"}]},
            },
        },
    }


@dataclass
class Cluster:
    fake: FakeKube
    source: ClusterSource
    client: TestClient  # type: ignore[type-arg]

    @property
    def cache(self) -> Cache:
        return self.source.services.cache

    def watch_of(self, resource: str) -> Reflector:
        return next(w for w in self.source.watches if w.resource == resource)

    async def watching(self) -> None:
        """Wait until both caches are synced and both watches are open."""
        await eventually(
            lambda: self.cache.ready and len(self.fake.watchers) == 2,
            what="synced caches and open watches",
        )

    async def ready(self) -> bool:
        return (await self.client.get("/readyz")).status == 200

    async def injected(
        self, namespace: str = "team-a", *, annotations: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Admit a new pod through /mutate: the identity injected per provider."""
        review = admission_review(namespace, annotations=annotations)
        response = await self.client.post("/mutate", json=review)
        assert response.status == 200
        answer = (await response.json())["response"]
        assert answer["allowed"] is True, answer
        if "patch" not in answer:
            return {}
        patch = json.loads(base64.b64decode(answer["patch"]))
        pod = jsonpatch.apply_patch(copy.deepcopy(review["request"]["object"]), patch)
        annotations_after: dict[str, str] = pod["metadata"]["annotations"]
        return {
            provider: annotations_after[f"workloadidentity.dev/{provider}"]
            for provider in ("aws", "gcp")
            if f"workloadidentity.dev/{provider}" in annotations_after
        }

    def identity_status(self, name: str) -> Any:
        return self.fake.objects[IDENTITIES][name].get("status")


def metric(cache: Cache, name: str, **labels: str) -> float:
    value = cache.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def drift_gauge(cache: Cache) -> dict[tuple[str, str], float]:
    """workload_identity_drift_pods as {(kind, identity): pods}."""
    return {
        (sample.labels["kind"], sample.labels["identity"]): sample.value
        for family in cache.metrics.registry.collect()
        if family.name == "workload_identity_drift_pods"
        for sample in family.samples
    }


def owner_ref(kind: str, name: str, uid: str, api_version: str = "apps/v1") -> Obj:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid}
