"""The issuer's /token: TokenReview, the bound pod, the scope rules, signing.

The TokenReviews and pod reads go over real HTTP to the fake API server.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest

from tests.webhook.cluster_support import PROJECT_LABEL, Cluster, aws_identity, metric
from tests.webhook.fake_kube import Obj, eventually, running
from webhook.server import create_app

ISSUER = "https://issuer.test"


@pytest.fixture
async def synced(cluster: Cluster) -> AsyncIterator[Cluster]:
    """team-a is a project; s3-reader serves its pods, tagged-only only pods
    tagged s3; the watches run and have synced."""
    cluster.fake.put_namespace("team-a", {PROJECT_LABEL: "team-a"})
    cluster.fake.put_namespace("plain")
    cluster.fake.put_identity(aws_identity("s3-reader"))
    cluster.fake.put_identity(aws_identity("tagged-only", tags=["s3"]))
    async with running(cluster.source.background):
        await cluster.watching()
        yield cluster


def pod_token(
    cluster: Cluster,
    *,
    namespace: str = "team-a",
    annotations: dict[str, str] | None = None,
    audiences: tuple[str, ...] = (ISSUER,),
) -> tuple[Obj, str]:
    pod = cluster.fake.put_pod(namespace, "app-7d9f", annotations=annotations)
    token = cluster.fake.issue_token(audiences=audiences, namespace=namespace, pod=pod)
    return pod, token


async def ask(
    cluster: Cluster,
    token: str | None,
    *,
    provider: str = "aws",
    identity: str = "s3-reader",
    body: Any = None,
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    response = await cluster.client.post(
        "/token",
        json=body if body is not None else {"provider": provider, "identity": identity},
        headers=headers,
    )
    return response.status, await response.json()


def issued(cluster: Cluster, outcome: str, provider: str = "aws") -> float:
    return metric(
        cluster.cache,
        "workload_identity_tokens_issued_total",
        provider=provider,
        outcome=outcome,
    )


async def test_a_pod_bound_token_gets_a_signed_token_for_its_identity(
    synced: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pod, token = pod_token(synced)
    status, body = await ask(synced, token)
    assert status == 200, body
    jwks = synced.source.services.issuer.jwks()
    kid = jwt.get_unverified_header(body["token"])["kid"]
    [key] = [k for k in jwks["keys"] if k["kid"] == kid]
    claims = jwt.decode(
        body["token"],
        jwt.PyJWK(key),
        algorithms=["RS256"],
        audience="sts.amazonaws.com",
        issuer=ISSUER,
    )
    assert claims["sub"] == "s3-reader:team-a:team-a:default"
    assert claims["kubernetes.io/pod"] == pod["metadata"]["name"]
    assert claims["exp"] == body["expiresAt"]
    assert claims["exp"] - claims["iat"] == 3600 + 30
    assert synced.fake.reviews == [{"audiences": [ISSUER]}]
    assert issued(synced, "issued") == 1
    assert (
        synced.cache.metrics.registry.get_sample_value(
            "workload_identity_token_sign_duration_seconds_count"
        )
        == 1
    )
    assert token not in caplog.text
    assert body["token"] not in caplog.text
    assert body["token"].split(".")[2] not in caplog.text


async def test_a_token_for_another_audience_is_refused_with_401(
    synced: Cluster,
) -> None:
    _, token = pod_token(synced, audiences=("https://kubernetes.default.svc",))
    status, body = await ask(synced, token)
    assert status == 401
    assert "not accepted" in body["error"]
    assert ISSUER in body["error"]
    assert issued(synced, "unauthenticated") == 1


async def test_an_unknown_or_missing_token_is_refused_with_401(
    synced: Cluster,
) -> None:
    assert (await ask(synced, "not-a-token"))[0] == 401
    status, body = await ask(synced, None)
    assert status == 401
    assert "Authorization: Bearer" in body["error"]


async def test_a_token_not_bound_to_a_pod_is_refused_with_401(
    synced: Cluster,
) -> None:
    token = synced.fake.issue_token(audiences=[ISSUER], namespace="team-a")
    status, body = await ask(synced, token)
    assert status == 401
    assert "not bound to a pod" in body["error"]


async def test_a_token_of_a_deleted_or_recreated_pod_is_refused_with_401(
    synced: Cluster,
) -> None:
    pod, token = pod_token(synced)
    synced.fake.put_pod("team-a", pod["metadata"]["name"])  # same name, new uid
    status, body = await ask(synced, token)
    assert status == 401
    assert "no longer exists" in body["error"]
    del synced.fake.pods[("team-a", pod["metadata"]["name"])]
    assert (await ask(synced, token))[0] == 401


@pytest.mark.parametrize(
    ("namespace", "annotations", "identity", "reason"),
    [
        ("team-a", {}, "tagged-only", "the scope rules select s3-reader"),
        ("team-a", {}, "no-such-identity", "the scope rules select s3-reader"),
        ("plain", {}, "s3-reader", "no project"),
        (
            "team-a",
            {"workloadidentity.dev/inject": "false"},
            "s3-reader",
            "opts out",
        ),
    ],
)
async def test_a_pod_outside_the_identity_scope_is_refused_with_403(
    synced: Cluster,
    namespace: str,
    annotations: dict[str, str],
    identity: str,
    reason: str,
) -> None:
    _, token = pod_token(synced, namespace=namespace, annotations=annotations)
    status, body = await ask(synced, token, identity=identity)
    assert status == 403
    assert reason in body["error"]
    assert issued(synced, "forbidden") == 1


async def test_the_scope_is_evaluated_from_the_live_pod_and_current_rules(
    synced: Cluster,
) -> None:
    _, token = pod_token(synced, annotations={"workloadidentity.dev/tags": "s3"})
    assert (await ask(synced, token, identity="tagged-only"))[
        0
    ] == 403  # s3-reader first
    synced.fake.put_identity(aws_identity("s3-reader", projects=["elsewhere"]))
    await _until_scope(synced, "s3-reader", ("elsewhere",))
    assert (await ask(synced, token, identity="tagged-only"))[0] == 200
    assert (await ask(synced, token, identity="s3-reader"))[0] == 403


async def _until_scope(cluster: Cluster, name: str, projects: tuple[str, ...]) -> None:
    def changed() -> bool:
        identity = cluster.cache.index.by_name.get(name)
        return bool(
            identity and identity.scope and identity.scope.projects.names == projects
        )

    await eventually(changed, what=f"{name} rescoped")


async def test_an_unreachable_api_server_answers_503(synced: Cluster) -> None:
    _, token = pod_token(synced)
    await synced.fake.stop()
    status, body = await ask(synced, token)
    assert status == 503
    assert "retry" in body["error"]
    assert issued(synced, "unavailable") == 1


async def test_before_the_caches_have_synced_it_answers_503(cluster: Cluster) -> None:
    _, token = pod_token(cluster)
    status, body = await ask(cluster, token)
    assert status == 503
    assert "not synced" in body["error"]
    assert cluster.fake.reviews == []


@pytest.mark.parametrize(
    "body",
    [
        {"provider": "azure", "identity": "s3-reader"},
        {"provider": "aws"},
        ["aws", "s3-reader"],
    ],
)
async def test_a_malformed_request_is_refused_with_400(
    synced: Cluster, body: Any
) -> None:
    _, token = pod_token(synced)
    status, answer = await ask(synced, token, body=body)
    assert status == 400
    assert answer["error"]
    assert issued(synced, "bad_request", provider="unknown") == 1


async def test_only_serve_adds_the_token_route(
    aiohttp_client: Any, synced: Cluster
) -> None:
    plain = await aiohttp_client(create_app(synced.source.services))
    assert (await plain.post("/token", json={})).status in (404, 405)
