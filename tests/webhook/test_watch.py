"""Identities and namespaces from the API server: list, watch, recover.

kubernetes-asyncio talks real HTTP to the fake API server in fake_kube.py.
"""

from __future__ import annotations

import logging

import pytest

from tests.webhook.cluster_support import (
    PROJECT_LABEL,
    Cluster,
    aws_identity,
    metric,
)
from tests.webhook.fake_kube import (
    IDENTITIES,
    IDENTITIES_PATH,
    NAMESPACES,
    eventually,
    running,
)
from webhook.cloud.cluster_state import status_with_record
from webhook.cloud.state import InstallRecord
from webhook.status import permissions_hash
from webhook.watch import Backoff


@pytest.fixture
def cluster_with_team_a(cluster: Cluster) -> Cluster:
    """team-a is a project; s3-reader serves it."""
    cluster.fake.put_namespace("team-a", {PROJECT_LABEL: "team-a"})
    cluster.fake.put_namespace("workload-identity-system")
    cluster.fake.put_identity(aws_identity("s3-reader"))
    return cluster


async def test_readyz_passes_only_after_both_caches_have_synced(
    cluster_with_team_a: Cluster,
) -> None:
    cluster = cluster_with_team_a
    cluster.fake.broken[NAMESPACES] = 500
    assert not await cluster.ready()
    async with running(cluster.source.background):
        await eventually(lambda: cluster.cache.identities_synced, what="identities")
        assert not await cluster.ready()
        assert (
            metric(cluster.cache, "workload_identity_cache_synced", resource=NAMESPACES)
            == 0
        )
        del cluster.fake.broken[NAMESPACES]
        await eventually(lambda: cluster.cache.ready, what="both caches")
        assert await cluster.ready()
        assert await cluster.injected() == {"aws": "s3-reader"}
        for resource in (IDENTITIES, NAMESPACES):
            assert (
                metric(
                    cluster.cache, "workload_identity_cache_synced", resource=resource
                )
                == 1
            )


async def test_identity_changes_are_seen_by_the_next_admission(
    cluster_with_team_a: Cluster,
) -> None:
    cluster = cluster_with_team_a
    async with running(cluster.source.background):
        await cluster.watching()
        assert await cluster.injected() == {"aws": "s3-reader"}

        cluster.fake.put_identity(aws_identity("a-first"))
        await eventually(lambda: "a-first" in cluster.cache.index.by_name)
        assert await cluster.injected() == {"aws": "a-first"}

        cluster.fake.put_identity(aws_identity("a-first", projects=["elsewhere"]))
        await eventually(
            lambda: (
                cluster.cache.index.by_name["a-first"].scope is not None
                and cluster.cache.index.by_name["a-first"].scope.projects.names
                == ("elsewhere",)
            )
        )
        assert await cluster.injected() == {"aws": "s3-reader"}

        cluster.fake.delete(IDENTITIES, "s3-reader")
        await eventually(lambda: "s3-reader" not in cluster.cache.index.by_name)
        assert await cluster.injected() == {}


async def test_namespace_label_changes_are_seen_by_the_next_admission(
    cluster_with_team_a: Cluster,
) -> None:
    cluster = cluster_with_team_a
    async with running(cluster.source.background):
        await cluster.watching()
        cluster.fake.put_namespace("team-a")  # the project label removed
        await eventually(lambda: cluster.cache.namespaces["team-a"].project is None)
        assert await cluster.injected() == {}


async def test_a_bookmark_moves_the_version_the_watch_resumes_from(
    cluster_with_team_a: Cluster,
) -> None:
    cluster = cluster_with_team_a
    watch = cluster.watch_of(IDENTITIES)
    async with running(cluster.source.background):
        await cluster.watching()
        listed_at = watch.version
        cluster.fake.put_namespace("team-b")  # moves the version, not identities
        cluster.fake.bookmark()
        await eventually(lambda: watch.version == str(cluster.fake.version))
        assert watch.version != listed_at
        cluster.fake.drop_watches()
        await eventually(
            lambda: len(cluster.fake.requests_to(IDENTITIES_PATH, watch=True)) == 2
        )
        resumed = cluster.fake.requests_to(IDENTITIES_PATH, watch=True)[-1]
        assert resumed["resourceVersion"] == str(cluster.fake.version)
        assert resumed["allowWatchBookmarks"].lower() == "true"
        assert len(cluster.fake.requests_to(IDENTITIES_PATH, watch=False)) == 1


async def test_a_dropped_stream_resumes_where_it_stopped_without_listing_again(
    cluster_with_team_a: Cluster,
) -> None:
    cluster = cluster_with_team_a
    async with running(cluster.source.background):
        await cluster.watching()
        seen = cluster.watch_of(IDENTITIES).version
        cluster.fake.drop_watches()
        # Changed while no watch is open: the resumed watch must replay it.
        cluster.fake.put_identity(aws_identity("a-first"))
        await eventually(lambda: "a-first" in cluster.cache.index.by_name)
        watches = cluster.fake.requests_to(IDENTITIES_PATH, watch=True)
        assert [w["resourceVersion"] for w in watches][-1] == seen
        assert len(cluster.fake.requests_to(IDENTITIES_PATH, watch=False)) == 1
        assert await cluster.ready()
        assert await cluster.injected() == {"aws": "a-first"}


async def test_a_stream_the_server_ends_is_resumed_at_once_without_listing_again(
    cluster_with_team_a: Cluster,
) -> None:
    cluster = cluster_with_team_a
    async with running(cluster.source.background):
        await cluster.watching()
        seen = cluster.watch_of(IDENTITIES).version
        cluster.fake.end_watches()
        await eventually(
            lambda: len(cluster.fake.requests_to(IDENTITIES_PATH, watch=True)) == 2
        )
        assert (
            cluster.fake.requests_to(IDENTITIES_PATH, watch=True)[-1]["resourceVersion"]
            == seen
        )
        assert (
            metric(
                cluster.cache,
                "workload_identity_watch_restarts_total",
                resource=IDENTITIES,
                reason="expired",
            )
            == 1
        )
        cluster.fake.put_identity(aws_identity("a-first"))
        await eventually(lambda: "a-first" in cluster.cache.index.by_name)
        assert len(cluster.fake.requests_to(IDENTITIES_PATH, watch=False)) == 1


async def test_410_gone_lists_again_and_forgets_what_was_deleted_meanwhile(
    cluster_with_team_a: Cluster,
) -> None:
    cluster = cluster_with_team_a
    cluster.fake.put_identity(aws_identity("a-first"))
    async with running(cluster.source.background):
        await cluster.watching()
        assert await cluster.injected() == {"aws": "a-first"}
        # While no watch is open, a-first goes and the history is compacted:
        # resuming gets 410 Gone, and only a new list shows the deletion.
        cluster.fake.drop_watches()
        cluster.fake.delete(IDENTITIES, "a-first")
        cluster.fake.put_identity(aws_identity("b-second"))
        cluster.fake.compact()
        await eventually(
            lambda: set(cluster.cache.index.by_name) == {"b-second", "s3-reader"}
        )
        assert len(cluster.fake.requests_to(IDENTITIES_PATH, watch=False)) == 2
        assert (
            metric(
                cluster.cache,
                "workload_identity_watch_restarts_total",
                resource=IDENTITIES,
                reason="gone",
            )
            == 1
        )
        assert await cluster.ready()
        assert await cluster.injected() == {"aws": "b-second"}


async def test_an_invalid_identity_is_reported_and_skipped_while_the_others_serve(
    cluster_with_team_a: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = cluster_with_team_a
    # Sorts before s3-reader and matches the same pods: were it used, it would win.
    broken = aws_identity("a-broken", role_arn="arn:aws:iam::42:role/short-account")
    cluster.fake.put_identity(broken)
    caplog.set_level(logging.INFO)
    async with running(cluster.source.background):
        await cluster.watching()
        assert await cluster.injected() == {"aws": "s3-reader"}
        assert metric(cluster.cache, "workload_identity_identities_invalid") == 1
        assert "a-broken: spec.aws.roleArn" in caplog.text

        await eventually(lambda: bool(cluster.identity_status("a-broken")))
        [condition] = cluster.identity_status("a-broken")["conditions"]
        assert condition["type"] == "Valid"
        assert condition["status"] == "False"
        assert condition["reason"] == "InvalidSpec"
        assert condition["message"].startswith("spec.aws.roleArn: ")
        await eventually(lambda: len(cluster.fake.events) == 1)
        [event] = cluster.fake.events
        assert event["metadata"]["namespace"] == "default"
        assert event["type"] == "Warning"
        assert event["reason"] == "InvalidSpec"
        assert event["involvedObject"]["kind"] == "WorkloadIdentity"
        assert event["involvedObject"]["name"] == "a-broken"
        assert "spec.aws.roleArn" in event["message"]
        assert cluster.identity_status("s3-reader") is None  # valid: never written

        cluster.fake.put_identity(aws_identity("a-broken"))  # fixed
        await eventually(
            lambda: (
                cluster.identity_status("a-broken")["conditions"][0]["status"] == "True"
            )
        )
        assert await cluster.injected() == {"aws": "a-broken"}
        assert metric(cluster.cache, "workload_identity_identities_invalid") == 0
        # Writing the condition is itself a change the watch sees; it must not
        # cause another write.
        cluster.fake.put_namespace("team-c")
        await eventually(lambda: "team-c" in cluster.cache.namespaces)
        status_writes = [
            r
            for r in cluster.fake.requests
            if r[0] == "PUT" and r[1].endswith("/status")
        ]
        assert len(status_writes) == 2
        assert len(cluster.fake.events) == 1


async def test_a_permission_edit_turns_the_installed_column_false_and_back(
    cluster_with_team_a: Cluster,
) -> None:
    """`kubectl get workloadidentities` shows `.status.installed`: the webhook
    keeps it current when spec.permissions moves away from what was installed,
    and back."""
    cluster = cluster_with_team_a
    policy = {"mode": "managed", "policyDocument": {"Statement": []}}
    identity = aws_identity("s3-reader")
    identity["spec"]["permissions"] = policy
    installed = InstallRecord("s3-reader", "aws").succeeded(
        {}, "sha256:spec", permissions_hash(policy), 2, {}
    )
    stored = cluster.fake.put_identity(identity)
    cluster.fake.put_identity(
        {**stored, "status": status_with_record(stored, installed)}
    )
    async with running(cluster.source.background):
        await cluster.watching()
        edited = aws_identity("s3-reader")
        edited["spec"]["permissions"] = {**policy, "policyDocument": {"Version": "1"}}
        cluster.fake.put_identity(
            {
                **edited,
                "status": cluster.fake.objects[IDENTITIES]["s3-reader"]["status"],
            }
        )
        await eventually(
            lambda: cluster.identity_status("s3-reader")["installed"] is False
        )
        [condition] = cluster.identity_status("s3-reader")["conditions"]
        assert (condition["status"], condition["reason"]) == ("False", "Pending")

        cluster.fake.put_identity(
            {**identity, "status": cluster.identity_status("s3-reader")}
        )  # the edit taken back
        await eventually(
            lambda: cluster.identity_status("s3-reader")["installed"] is True
        )
        assert not cluster.fake.events


async def test_a_namespace_created_just_before_its_pod_is_read_directly_once(
    cluster_with_team_a: Cluster,
) -> None:
    cluster = cluster_with_team_a
    cluster.fake.put_identity(aws_identity("s3-reader", projects=["team-a", "team-b"]))
    async with running(cluster.source.background):
        await cluster.watching()
        cluster.fake.hold_watches()  # the watch lags behind the API server
        cluster.fake.put_namespace("team-b", {PROJECT_LABEL: "team-b"})
        assert await cluster.injected("team-b") == {"aws": "s3-reader"}
        assert await cluster.injected("team-b") == {"aws": "s3-reader"}
        reads = [
            r for r in cluster.fake.requests if r[1] == "/api/v1/namespaces/team-b"
        ]
        assert len(reads) == 1
        assert (
            metric(cluster.cache, "workload_identity_namespace_cache_misses_total") == 1
        )
        cluster.fake.release_watches()
        await eventually(
            lambda: cluster.watch_of(NAMESPACES).version == str(cluster.fake.version)
        )
        assert cluster.cache.namespaces["team-b"].project == "team-b"


async def test_a_namespace_that_does_not_exist_gets_nothing(
    cluster_with_team_a: Cluster,
) -> None:
    cluster = cluster_with_team_a
    async with running(cluster.source.background):
        await cluster.watching()
        assert await cluster.injected("no-such-namespace") == {}
        assert "no-such-namespace" not in cluster.cache.namespaces


async def test_a_watch_that_cannot_recover_makes_the_webhook_unready_until_it_lists_again(
    cluster_with_team_a: Cluster,
) -> None:
    cluster = cluster_with_team_a
    async with running(cluster.source.background):
        await cluster.watching()
        await cluster.fake.stop()
        await eventually(lambda: not cluster.cache.ready, what="unready")
        assert not await cluster.ready()
        for resource in (IDENTITIES, NAMESPACES):
            assert (
                metric(
                    cluster.cache, "workload_identity_cache_synced", resource=resource
                )
                == 0
            )
            assert (
                metric(
                    cluster.cache,
                    "workload_identity_watch_restarts_total",
                    resource=resource,
                    reason="error",
                )
                >= 1
            )
        cluster.fake.put_identity(aws_identity("a-first"))
        await cluster.fake.start()  # the same port
        await eventually(lambda: cluster.cache.ready, what="ready again")
        assert await cluster.ready()
        assert await cluster.injected() == {"aws": "a-first"}
        assert len(cluster.fake.requests_to(IDENTITIES_PATH, watch=False)) == 2


async def test_a_failing_list_is_retried_until_it_succeeds(
    cluster_with_team_a: Cluster,
) -> None:
    cluster = cluster_with_team_a
    cluster.fake.broken[IDENTITIES] = 503
    async with running(cluster.source.background):
        await eventually(lambda: cluster.cache.namespaces_synced)
        assert not cluster.cache.identities_synced
        del cluster.fake.broken[IDENTITIES]
        await cluster.watching()


def test_backoff_doubles_to_its_cap_with_jitter_below_each_step() -> None:
    low = Backoff(1.0, 8.0, rng=lambda: 0.0)
    assert [low.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    high = Backoff(1.0, 8.0, rng=lambda: 0.999999)
    assert [round(high.next(), 3) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    high.reset()
    assert round(high.next(), 3) == 1.0
