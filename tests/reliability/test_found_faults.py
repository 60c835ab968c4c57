"""Each fault the reliability suite found in the product, pinned by a fast
test of its own, in process."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from oidc_tokens.claims import MalformedTokenError, unverified_claims
from oidc_tokens.keys import generate_rsa_key
from sidecar.config import ProviderConfig
from sidecar.issuer import token_from_answer
from sidecar.tokens import RefreshError
from tests.reliability.webhook_rig import (
    IDENTITIES,
    NAMESPACES,
    aws_identity,
    pod,
    review,
)
from tests.streams import close_stream
from webhook import admission, server
from webhook.cache import Cache
from webhook.identities import parse_identities
from webhook.issuer import Issuer
from webhook.metrics import create_metrics
from webhook.namespaces import namespaces_from_documents
from webhook.scope import IdentityIndex
from webhook.server import Services, create_app, running_site
from webhook.sidecar_spec import SidecarSettings
from webhook.tokens_endpoint import BadTokenRequest, parse_token_request

NESTED = b"[" * 100_000 + b"]" * 100_000


def services() -> Services:
    cache = Cache(create_metrics())
    loaded = parse_identities(IDENTITIES)
    cache.set_identities(loaded.identities, loaded.errors)
    cache.set_namespaces(
        namespaces_from_documents(
            NAMESPACES, webhook_namespace="workload-identity-system"
        )
    )
    issuer = Issuer(
        url="https://issuer.reliability.test",
        signing_key=generate_rsa_key(),
        published=(),
    )
    return Services(
        cache=cache,
        settings=SidecarSettings(issuer_url=issuer.url),
        issuer=issuer,
        metrics=cache.metrics,
    )


@pytest.fixture
async def client(aiohttp_client: Any) -> Any:
    return await aiohttp_client(create_app(services()))


async def test_a_body_nested_too_deep_to_parse_is_a_400_not_a_500(client: Any) -> None:
    response = await client.post(
        "/mutate", data=NESTED, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert "nested too deeply" in (await response.json())["error"]


def test_a_token_request_nested_too_deep_is_a_bad_request() -> None:
    with pytest.raises(BadTokenRequest, match="nested too deeply"):
        parse_token_request(NESTED)


async def test_a_declared_oversized_body_is_refused_before_it_is_read(
    aiohttp_server: Any,
) -> None:
    test_server = await aiohttp_server(create_app(services()))
    reader, writer = await asyncio.open_connection("127.0.0.1", test_server.port)
    writer.write(
        b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1073741824\r\n\r\n{"
    )
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 5)
    await close_stream(writer)
    assert status.split()[1] == b"413"


async def test_a_body_that_stalls_is_cut_off_with_408(
    aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "BODY_TIMEOUT_SECONDS", 0.2)
    test_server = await aiohttp_server(create_app(services()))
    reader, writer = await asyncio.open_connection("127.0.0.1", test_server.port)
    writer.write(
        b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 5)
    await close_stream(writer)
    assert status.split()[1] == b"408"


async def test_a_request_still_arriving_when_the_server_stops_is_answered() -> None:
    body = json.dumps(review(pod(), uid="in-flight")).encode()
    stopping = asyncio.Event()

    async def serve_until_stopped(started: asyncio.Future[int]) -> None:
        async with running_site(create_app(services()), "127.0.0.1:0", None) as runner:
            started.set_result(int(runner.addresses[0][1]))
            await stopping.wait()

    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(serve_until_stopped(started))
    port = await started
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:100])
    )
    await writer.drain()
    await asyncio.sleep(0.1)
    stopping.set()  # the stop begins with half of the body on its way
    await asyncio.sleep(0.2)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    writer.write(body[100:])
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.split()[1] == b"200"
    assert b"Connection: close" in head
    await close_stream(writer)
    await asyncio.wait_for(serving, 15)


@pytest.mark.parametrize(
    "where",
    [
        ("spec", "containers", 0, "name"),
        ("spec", "containers", 0, "env", 0, "name"),
        ("spec", "volumes", 0, "name"),
    ],
)
def test_names_of_the_wrong_type_are_no_internal_error(where: tuple[Any, ...]) -> None:
    obj = pod(annotations={"workloadidentity.dev/skip-containers": "x"})
    target: Any = obj
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = ["not", "a", "name"]
    known = namespaces_from_documents(NAMESPACES, webhook_namespace="x")
    answer = admission.decide(
        admission.parse_review(review(copy.deepcopy(obj), uid="odd")),
        namespace=known["payments"],
        index=IdentityIndex(parse_identities(IDENTITIES).identities),
        settings=SidecarSettings(),
    )
    assert answer.outcome is admission.Outcome.MUTATED


def test_a_yaml_key_that_is_no_string_is_an_error_naming_the_field() -> None:
    broken = aws_identity("broken", projects=["payments"])
    broken["spec"]["scope"]["tags"] = {1: "x", "restrict": True}
    broken_scope = aws_identity("broken-scope", projects=["payments"])
    broken_scope["spec"]["scope"][None] = "x"
    result = parse_identities([broken, broken_scope, IDENTITIES[0]])
    assert [i.name for i in result.identities] == [IDENTITIES[0]["metadata"]["name"]]
    assert sorted(e.field_path for e in result.errors) == [
        "spec.scope",
        "spec.scope.tags",
    ]


@pytest.mark.parametrize(
    ("status", "payload"),
    [
        (500, NESTED[:60_000]),
        (200, b'{"token": ' + NESTED[:60_000] + b"}"),
    ],
)
def test_an_issuer_answer_nested_too_deep_is_a_refresh_failure_not_a_crash(
    status: int, payload: bytes, tmp_path: Path
) -> None:
    provider = ProviderConfig(
        provider="aws",
        identity="payments-s3",
        audience="sts.amazonaws.com",
        expiration_seconds=600,
        token_path=tmp_path / "aws-token",
    )
    with pytest.raises(RefreshError):
        token_from_answer(status, payload, provider=provider, now=0)


def test_a_jwt_whose_payload_is_nested_too_deep_is_malformed() -> None:
    payload = base64.urlsafe_b64encode(b"[" * 50_000).rstrip(b"=").decode()
    with pytest.raises(MalformedTokenError):
        unverified_claims(f"eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln")
