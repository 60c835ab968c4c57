"""The drift report of a running webhook, against the fake API server: pods
watched, compared with the rules, reported in the gauge and as Events on
their workloads, and the same drift listed by `workloads -o json`."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest

from tests.webhook.cluster_support import (
    PROJECT_LABEL,
    Cluster,
    aws_identity,
    drift_gauge,
    metric,
    owner_ref,
)
from tests.webhook.fake_kube import (
    IDENTITIES,
    PODS,
    PODS_PATH,
    FakeKube,
    Obj,
    eventually,
    running,
)
from tests.webhook.test_serve_kubernetes import write_kubeconfig
from webhook.cache import Cache
from webhook.cli import main
from webhook.identities import parse_identities
from webhook.kube import Kube
from webhook.metrics import create_metrics
from webhook.namespaces import describe_namespace
from webhook.pods import PodRecord
from webhook.reconciler import SLICE, DriftReconciler, DriftSettings
from webhook.watch import WatchSettings

NAMESPACE = "team-a"


def sidecar_spec(mode: str = "issuer") -> Obj:
    """What the webhook adds that the report reads: its sidecar's WI_MODE."""
    return {
        "initContainers": [
            {
                "name": "workload-identity",
                "image": "sidecar",
                "restartPolicy": "Always",
                "env": [
                    {"name": "WI_MODE", "value": mode},
                    {
                        "name": "WI_TOKEN_DIR",
                        "value": "/var/run/secrets/workloadidentity.dev",
                    },
                ],
            }
        ]
    }


def deployment_pod(
    fake: FakeKube,
    suffix: str,
    *,
    deployment: str = "api",
    holds: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Obj:
    """A pod of a Deployment, through its ReplicaSet, as the controllers make it."""
    replica_set = f"{deployment}-7d9f"
    found = fake.replica_sets.get((NAMESPACE, replica_set))
    if found is None:
        found = fake.put_replica_set(
            NAMESPACE,
            replica_set,
            owner=owner_ref("Deployment", deployment, f"{deployment}-uid"),
        )
    marks = dict(annotations or {})
    if holds:
        marks["workloadidentity.dev/aws"] = holds
    return fake.put_pod(
        NAMESPACE,
        f"{replica_set}-{suffix}",
        annotations=marks,
        labels={"pod-template-hash": "7d9f"},
        owner=owner_ref("ReplicaSet", replica_set, found["metadata"]["uid"]),
        spec=sidecar_spec() if holds else None,
    )


def stateful_pod(fake: FakeKube, ordinal: int, *, holds: str) -> Obj:
    return fake.put_pod(
        NAMESPACE,
        f"db-{ordinal}",
        annotations={"workloadidentity.dev/aws": holds},
        owner=owner_ref("StatefulSet", "db", "db-uid"),
        spec=sidecar_spec(),
    )


def events_on(fake: FakeKube, kind: str, name: str) -> list[Obj]:
    return [
        e
        for e in fake.events
        if e["involvedObject"]["kind"] == kind and e["involvedObject"]["name"] == name
    ]


@pytest.fixture
def team_a(drift_cluster: Cluster) -> Cluster:
    """team-a is a project; s3-reader serves it."""
    drift_cluster.fake.put_namespace(NAMESPACE, {PROJECT_LABEL: NAMESPACE})
    drift_cluster.fake.put_namespace("workload-identity-system")
    drift_cluster.fake.put_namespace("kube-system")
    drift_cluster.fake.put_identity(aws_identity("s3-reader"))
    return drift_cluster


async def reported(cluster: Cluster, expected: Mapping[tuple[str, str], float]) -> None:
    await eventually(
        lambda: drift_gauge(cluster.cache) == expected,
        what=f"drift {dict(expected)}, last seen {drift_gauge(cluster.cache)}",
    )


async def passes(cluster: Cluster, count: int = 2) -> None:
    """Wait for `count` more passes: the last one saw every change made before."""
    reconciler = cluster.source.reconciler
    assert reconciler is not None
    target = reconciler.passes + count
    await eventually(lambda: reconciler.passes >= target, what=f"{count} drift passes")


async def test_a_pod_created_while_the_webhook_was_down_is_reported_missing(
    team_a: Cluster,
) -> None:
    cluster, fake = team_a, team_a.fake
    async with running(cluster.source.background):
        await eventually(lambda: cluster.cache.ready, what="synced rules")
        admitted = await cluster.injected()  # the webhook was up for this one
        deployment_pod(fake, "up", holds=admitted["aws"])
        deployment_pod(fake, "down")  # created while it was not
        await reported(cluster, {("missing", "s3-reader"): 1})
        await eventually(lambda: len(fake.events) == 1, what="one event")
        [event] = fake.events
        assert event["reason"] == "IdentityMissing"
        assert event["metadata"]["namespace"] == NAMESPACE
        assert event["involvedObject"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "api",
            "namespace": NAMESPACE,
            "uid": "api-uid",
        }
        assert (
            "1 pod (api-7d9f-down) of Deployment/api should hold aws identity s3-reader"
            in event["message"]
        )
        assert "kubectl -n team-a rollout restart deployment/api" in event["message"]
        assert metric(cluster.cache, "workload_identity_drift_leader") == 1

        await passes(cluster)
        assert len(fake.events) == 1, "a drift that lasts is told once"

        # The rollout restart: the new pod is admitted with the identity.
        fake.delete_pod(NAMESPACE, "api-7d9f-down")
        deployment_pod(fake, "new", holds="s3-reader")
        await reported(cluster, {})
    assert len(fake.events) == 1


async def test_narrowing_a_scope_makes_its_pods_stale_with_one_event_per_workload(
    team_a: Cluster,
) -> None:
    cluster, fake = team_a, team_a.fake
    deployment_pod(fake, "a", holds="s3-reader")
    deployment_pod(fake, "b", holds="s3-reader")
    stateful_pod(fake, 0, holds="s3-reader")
    async with running(cluster.source.background):
        await passes(cluster)
        assert drift_gauge(cluster.cache) == {}

        fake.put_identity(aws_identity("s3-reader", projects=["elsewhere"]))
        await reported(cluster, {("stale", "s3-reader"): 3})
        await eventually(lambda: len(fake.events) == 2, what="two events")
    [api] = events_on(fake, "Deployment", "api")
    [db] = events_on(fake, "StatefulSet", "db")
    assert api["reason"] == db["reason"] == "IdentityStale"
    assert (
        "2 pods (api-7d9f-a, api-7d9f-b) of Deployment/api hold aws identity s3-reader"
        in api["message"]
    )
    assert (
        "project 'team-a' is not in the project restriction ['elsewhere']"
        in api["message"]
    )
    assert (
        "In issuer mode, /token refuses them new tokens at their next refresh"
        in api["message"]
    )
    assert "at the latest" in api["message"]
    assert "kubectl -n team-a rollout restart statefulset/db" in db["message"]


async def test_deleting_an_identity_makes_its_pods_orphaned(team_a: Cluster) -> None:
    cluster, fake = team_a, team_a.fake
    deployment_pod(fake, "a", holds="s3-reader")
    async with running(cluster.source.background):
        await passes(cluster)
        fake.delete(IDENTITIES, "s3-reader")
        await reported(cluster, {("orphaned", "s3-reader"): 1})
        await eventually(lambda: len(fake.events) == 1, what="one event")
    [event] = fake.events
    assert event["reason"] == "IdentityOrphaned"
    assert "holds aws identity s3-reader, which no longer exists" in event["message"]
    # The lifetime was remembered from when the identity existed.
    assert "its current token expires by" in event["message"]


async def test_a_pod_whose_tags_change_is_judged_by_its_live_tags(
    team_a: Cluster,
) -> None:
    cluster, fake = team_a, team_a.fake
    fake.put_identity(aws_identity("s3-reader", tags=["s3"]))
    tags = {"workloadidentity.dev/tags": "s3"}
    pod = deployment_pod(fake, "a", holds="s3-reader", annotations=tags)
    async with running(cluster.source.background):
        await passes(cluster)
        assert drift_gauge(cluster.cache) == {}
        fake.update_pod(
            NAMESPACE,
            pod["metadata"]["name"],
            annotations={
                **pod["metadata"]["annotations"],
                "workloadidentity.dev/tags": "other",
            },
        )
        await reported(cluster, {("stale", "s3-reader"): 1})


async def test_finished_pods_and_pods_of_unserved_namespaces_are_not_drift(
    team_a: Cluster,
) -> None:
    cluster, fake = team_a, team_a.fake
    fake.put_pod(NAMESPACE, "job-done", phase="Succeeded")
    fake.put_pod("kube-system", "dns", annotations={"workloadidentity.dev/aws": "gone"})
    fake.put_pod(
        NAMESPACE, "opted-out", annotations={"workloadidentity.dev/inject": "false"}
    )
    fake.put_pod(NAMESPACE, "windows", spec={"os": {"name": "windows"}})
    running_pod = fake.put_pod(NAMESPACE, "job-running")
    async with running(cluster.source.background):
        await reported(cluster, {("missing", "s3-reader"): 1})
        fake.update_pod(NAMESPACE, running_pod["metadata"]["name"], phase="Succeeded")
        await reported(cluster, {})
    [event] = fake.events
    assert event["involvedObject"]["kind"] == "Pod"
    assert event["message"].startswith(
        "Pod job-running should hold aws identity s3-reader"
    )
    assert "delete pod job-running and create it again" in event["message"]


async def test_pods_are_listed_in_pages_and_then_watched(team_a: Cluster) -> None:
    cluster, fake = team_a, team_a.fake
    for index in range(5):
        fake.put_pod(NAMESPACE, f"p{index}")
    async with running(cluster.source.background):
        await reported(cluster, {("missing", "s3-reader"): 5})
        fake.put_pod(NAMESPACE, "p5")
        await reported(cluster, {("missing", "s3-reader"): 6})
    lists = fake.requests_to(PODS_PATH, watch=False)
    assert [q.get("continue") for q in lists] == [None, "2", "4"]
    assert {q["limit"] for q in lists} == {"2"}
    assert len(fake.requests_to(PODS_PATH, watch=True)) >= 1


async def test_stopping_the_report_withdraws_its_numbers(team_a: Cluster) -> None:
    cluster, fake = team_a, team_a.fake
    fake.put_pod(NAMESPACE, "p0")
    async with running(cluster.source.background):
        await reported(cluster, {("missing", "s3-reader"): 1})
        assert (
            metric(cluster.cache, "workload_identity_cache_synced", resource=PODS) == 1
        )
    assert drift_gauge(cluster.cache) == {}
    assert metric(cluster.cache, "workload_identity_drift_leader") == 0
    value = cluster.cache.metrics.registry.get_sample_value(
        "workload_identity_cache_synced", {"resource": PODS}
    )
    assert value is None, "a replica that does not watch pods exports no pods series"


async def test_no_drift_is_reported_before_the_rules_are_synced(
    team_a: Cluster,
) -> None:
    cluster, fake = team_a, team_a.fake
    fake.put_pod(NAMESPACE, "p0")
    fake.broken["workloadidentities"] = 500
    async with running(cluster.source.background):
        await eventually(lambda: cluster.cache.pods_synced, what="pods synced")
        await asyncio.sleep(0.2)
        reconciler = cluster.source.reconciler
        assert reconciler is not None and reconciler.passes == 0
        del fake.broken["workloadidentities"]
        await reported(cluster, {("missing", "s3-reader"): 1})


async def test_the_cli_json_lists_the_same_drift_as_the_gauge(
    team_a: Cluster, tmp_path: Path
) -> None:
    cluster, fake = team_a, team_a.fake
    fake.put_identity(aws_identity("a-first", projects=["team-b"]))
    deployment_pod(fake, "missing")
    deployment_pod(fake, "ok", holds="s3-reader")
    deployment_pod(fake, "stale", holds="a-first")
    stateful_pod(fake, 0, holds="gone")
    stateful_pod(fake, 1, holds="gone")
    fake.put_pod("kube-system", "dns", annotations={"workloadidentity.dev/aws": "gone"})
    expected = {
        ("missing", "s3-reader"): 1,
        ("stale", "a-first"): 1,
        ("orphaned", "gone"): 2,
    }
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", fake.url)
    async with running(cluster.source.background):
        await reported(cluster, expected)
        out = io.StringIO()
        code = await asyncio.to_thread(
            main, ["workloads", "--kubeconfig", str(kubeconfig), "-o", "json"], out
        )
        gauge = drift_gauge(cluster.cache)
    assert code == 0
    report: dict[str, Any] = json.loads(out.getvalue())
    listed = {(d["kind"], d["identity"]): d["pods"] for d in report["drift"]}
    assert listed == gauge == expected

    pods = {p["name"]: p for p in report["pods"]}
    assert pods["api-7d9f-missing"]["workload"] == {"kind": "Deployment", "name": "api"}
    assert pods["api-7d9f-ok"]["drift"] == []
    [stale] = pods["api-7d9f-stale"]["drift"]
    assert stale["token"]["refusedAtNextRefresh"] is True
    assert stale["token"]["expiresWithinSeconds"] == 3600
    assert "dns" not in pods
    holders = {i["name"]: i for i in report["identities"]}
    assert [p["name"] for p in holders["gone"]["pods"]] == ["db-0", "db-1"]
    assert holders["gone"]["exists"] is False


async def test_a_pass_over_many_pods_yields_to_admission_between_slices() -> None:
    """The pass shares the event loop with /mutate: it must hand control back
    every SLICE pods, however many pods there are."""
    cache = Cache(create_metrics())
    loaded = parse_identities([aws_identity("s3-reader")])
    cache.set_identities(loaded.identities, loaded.errors)
    cache.set_namespaces(
        {
            NAMESPACE: describe_namespace(
                NAMESPACE, {PROJECT_LABEL: NAMESPACE}, webhook_namespace="wi"
            )
        }
    )
    reconciler = DriftReconciler(
        cast(Kube, None),  # never called: bare pods, no events
        cache,
        webhook_namespace="wi",
        watch=WatchSettings(),
        settings=DriftSettings(events=False),
    )
    pods = [PodRecord(NAMESPACE, f"p{i:05d}", f"u{i}") for i in range(10 * SLICE)]
    turns = 0

    async def admission() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(admission())
    try:
        assessed = await reconciler.reconcile(pods)
    finally:
        other.cancel()
    assert len(assessed) == len(pods)
    assert drift_gauge(cache) == {("missing", "s3-reader"): len(pods)}
    assert turns >= 2 * 10, f"the loop ran other work only {turns} times"
