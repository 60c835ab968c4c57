"""Two webhook replicas against one fake API server: the drift report runs on
the holder of the Lease only, and moves when the holder goes away.

Leases here last 3 s and are renewed every second (kubernetes-asyncio's
election retries no more often), so each test takes a few seconds.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.webhook.cluster_support import (
    PROJECT_LABEL,
    WEBHOOK_NAMESPACE,
    aws_identity,
    drift_gauge,
    elected_drift,
    metric,
)
from tests.webhook.conftest import ReplicaFactory
from tests.webhook.fake_kube import LEASES, PODS, FakeKube, eventually, running
from webhook.cluster import ClusterSource
from webhook.leader import DEFAULT_LEASE_NAME

MISSING = {("missing", "s3-reader"): 1.0}


@pytest.fixture
def fake(fake_kube: FakeKube) -> FakeKube:
    """team-a is a project that s3-reader serves, with one pod that lacks it."""
    fake_kube.put_namespace("team-a", {PROJECT_LABEL: "team-a"})
    fake_kube.put_namespace(WEBHOOK_NAMESPACE)
    fake_kube.put_identity(aws_identity("s3-reader"))
    fake_kube.put_pod("team-a", "app")
    return fake_kube


def leading(replica: ClusterSource) -> bool:
    return metric(replica.services.cache, "workload_identity_drift_leader") == 1


def holder(fake: FakeKube) -> str | None:
    return fake.lease_holder(WEBHOOK_NAMESPACE, DEFAULT_LEASE_NAME)


def identity(replica: ClusterSource) -> str:
    assert replica.elector is not None
    return replica.elector.identity


def pod_watches(fake: FakeKube) -> int:
    return sum(1 for w in fake.watchers if w.resource == PODS)


async def one_leader(*replicas: ClusterSource) -> ClusterSource:
    await eventually(
        lambda: sum(leading(r) for r in replicas) == 1,
        within=8.0,
        what="one leader",
    )
    return next(r for r in replicas if leading(r))


async def crash(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_with_two_replicas_exactly_one_reports_drift(
    fake: FakeKube, replica: ReplicaFactory
) -> None:
    a, b = replica(elected_drift("replica-a")), replica(elected_drift("replica-b"))
    async with running(a.background), running(b.background):
        leader = await one_leader(a, b)
        follower = b if leader is a else a
        await eventually(
            lambda: drift_gauge(leader.services.cache) == MISSING, what="drift"
        )
        # Longer than a Lease: the follower keeps following.
        await asyncio.sleep(3.5)
        assert leading(leader) and not leading(follower)
        assert holder(fake) == identity(leader)
        assert drift_gauge(follower.services.cache) == {}
        assert follower.reconciler is not None and follower.reconciler.passes == 0
        assert pod_watches(fake) == 1, "only the leader watches pods"
        assert len(fake.events) == 1
        assert fake.events[0]["reportingInstance"]


async def test_the_other_replica_takes_over_when_the_leaders_lease_expires(
    fake: FakeKube, replica: ReplicaFactory
) -> None:
    # Neither frees the Lease when stopped: as if its process were killed.
    a = replica(elected_drift("replica-a", release=False))
    b = replica(elected_drift("replica-b", release=False))
    async with running(a.background) as a_tasks, running(b.background) as b_tasks:
        leader = await one_leader(a, b)
        follower = b if leader is a else a
        await eventually(lambda: drift_gauge(leader.services.cache) == MISSING)
        await crash(a_tasks if leader is a else b_tasks)
        crashed_at, told = time.monotonic(), len(fake.events)
        assert holder(fake) == identity(leader), "the Lease outlives its holder"

        await eventually(lambda: leading(follower), within=10.0, what="a takeover")
        waited = time.monotonic() - crashed_at
        # Renewed at most a second before the crash, the Lease lasts 3 s.
        assert waited >= 1.9, (
            f"took over after {waited:.2f} s, before the Lease expired"
        )
        assert holder(fake) == identity(follower)
        await eventually(lambda: drift_gauge(follower.services.cache) == MISSING)
        await eventually(lambda: len(fake.events) > told, what="the new leader's event")


async def test_a_leader_that_stops_frees_the_lease_and_is_replaced_at_once(
    fake: FakeKube, replica: ReplicaFactory
) -> None:
    a, b = replica(elected_drift("replica-a")), replica(elected_drift("replica-b"))
    async with running(a.background) as a_tasks, running(b.background) as b_tasks:
        leader = await one_leader(a, b)
        follower = b if leader is a else a
        await crash(a_tasks if leader is a else b_tasks)  # a graceful stop
        stopped_at = time.monotonic()
        assert holder(fake) is None, "the stopped leader freed the Lease"
        assert drift_gauge(leader.services.cache) == {}
        await eventually(lambda: leading(follower), within=8.0, what="a takeover")
        assert time.monotonic() - stopped_at < 2.9, "it waited for the Lease to expire"


async def test_a_leader_that_cannot_renew_stops_reporting_and_leads_again_later(
    fake: FakeKube, replica: ReplicaFactory
) -> None:
    only = replica(elected_drift("replica-a"))
    assert only.elector is not None
    async with running(only.background):
        await one_leader(only)
        await eventually(lambda: drift_gauge(only.services.cache) == MISSING)
        fake.broken[LEASES] = 500
        await eventually(lambda: not leading(only), within=6.0, what="stepping down")
        assert drift_gauge(only.services.cache) == {}
        assert only.reconciler is not None
        stopped_at = only.reconciler.passes
        await asyncio.sleep(0.3)
        assert only.reconciler.passes == stopped_at, "the job runs on"
        del fake.broken[LEASES]
        await one_leader(only)
        assert only.elector.terms == 2
        await eventually(lambda: drift_gauge(only.services.cache) == MISSING)
