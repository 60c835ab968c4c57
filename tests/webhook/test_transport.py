"""/mutate and the issuer endpoints through a real aiohttp test server."""

from __future__ import annotations

import base64
import copy
import io
import json
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import generate_latest

from oidc_tokens.claims import Subject
from tests.webhook.casefiles import load_case
from webhook.server import Services, create_app, create_metrics_app

Client = Any


@pytest.fixture
async def client(aiohttp_client: Any, services: Services) -> TestClient:  # type: ignore[type-arg]
    return await aiohttp_client(create_app(services))


def case_review() -> dict[str, Any]:
    return copy.deepcopy(load_case("case-01")["given"]["admission_review"])


async def test_mutate_answers_with_a_patch_and_echoes_the_request(
    client: Client,
) -> None:
    review = case_review()
    response = await client.post("/mutate", json=review)
    assert response.status == 200
    body = await response.json()
    assert body["apiVersion"] == "admission.k8s.io/v1"
    assert body["kind"] == "AdmissionReview"
    assert body["response"]["uid"] == review["request"]["uid"]
    assert body["response"]["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(body["response"]["patch"]))


async def test_v1beta1_is_answered_in_v1beta1(client: Client) -> None:
    review = case_review()
    review["apiVersion"] = "admission.k8s.io/v1beta1"
    body = await (await client.post("/mutate", json=review)).json()
    assert body["apiVersion"] == "admission.k8s.io/v1beta1"
    assert body["response"]["uid"] == review["request"]["uid"]


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 400, "not a JSON object"),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
            400,
            "no request",
        ),
        (
            b'{"apiVersion": "admission.k8s.io/v2", "kind": "AdmissionReview", "request": {}}',
            400,
            "not supported",
        ),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": ""}}',
            400,
            "uid",
        ),
    ],
)
async def test_malformed_bodies_get_400_with_a_reason(
    client: Client, body: bytes, status: int, reason: str
) -> None:
    response = await client.post(
        "/mutate", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == status
    assert reason in (await response.json())["error"]


async def test_wrong_content_type_gets_415(client: Client) -> None:
    response = await client.post(
        "/mutate", data=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert response.status == 415


async def test_oversized_body_gets_413(client: Client) -> None:
    response = await client.post(
        "/mutate",
        data=io.BytesIO(b"x" * (4 * 1024 * 1024)),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 413


async def test_a_pod_without_spec_is_a_client_error_not_a_crash(client: Client) -> None:
    review = case_review()
    review["request"]["object"] = {"metadata": {}}
    response = await client.post("/mutate", json=review)
    assert response.status == 400


async def test_internal_error_refuses_the_pod_with_a_short_message(
    client: Client, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail")

    monkeypatch.setattr("webhook.admission.mutate", broken)
    review = case_review()
    body = await (await client.post("/mutate", json=review)).json()
    assert body["response"]["allowed"] is False
    assert body["response"]["uid"] == review["request"]["uid"]
    assert body["response"]["status"]["code"] == 500
    assert "secret detail" not in json.dumps(body)


async def test_dry_run_is_counted_apart_from_real_admissions(
    client: Client, services: Services
) -> None:
    review = case_review()
    review["request"]["dryRun"] = True
    await client.post("/mutate", json=review)
    counter = services.metrics.admission_requests
    assert counter.labels("mutated", "true")._value.get() == 1
    assert counter.labels("mutated", "false")._value.get() == 0


async def test_probes_follow_the_cache(client: Client, services: Services) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    services.cache.namespaces_synced = False
    assert (await client.get("/readyz")).status == 503


async def test_discovery_and_jwks_verify_a_token_the_issuer_signs(
    client: Client, services: Services
) -> None:
    discovery = await (await client.get("/.well-known/openid-configuration")).json()
    assert discovery["issuer"] == "https://issuer.test"
    assert discovery["jwks_uri"] == "https://issuer.test/openid/v1/jwks"
    keys = await (await client.get("/openid/v1/jwks")).json()
    token, _ = services.issuer.issue(
        Subject("s3-reader", "team-a", "team-a", "default"),
        audience="sts.amazonaws.com",
        lifetime_seconds=600,
    )
    kid = jwt.get_unverified_header(token)["kid"]
    [jwk] = [k for k in keys["keys"] if k["kid"] == kid]
    claims = jwt.decode(
        token,
        jwt.PyJWK(jwk),
        algorithms=["RS256"],
        audience="sts.amazonaws.com",
        issuer="https://issuer.test",
    )
    assert claims["sub"] == "s3-reader:team-a:team-a:default"


async def test_metrics_are_served_on_their_own_app(
    aiohttp_client: Any, services: Services, client: Client
) -> None:
    await client.post("/mutate", json=case_review())
    metrics = await aiohttp_client(create_metrics_app(services.metrics))
    text = await (await metrics.get("/metrics")).text()
    assert "workload_identity_admission_requests_total" in text
    assert "workload_identity_admission_duration_seconds_bucket" in text
    assert 'le="0.0001"' in text
    assert generate_latest(services.metrics.registry)
