"""Signing keys rotate, and identities stay apart, as AWS STS judges tokens.

Everything is real but the clouds and the API server: the webhook process
signs at /token, a sidecar process keeps the token file, the issuer's
documents are hosted on their own HTTPS site, and the strict STS check in
front of moto verifies each token (issuer, kid, signature, audience, expiry,
the role's trust policy on `sub`)."""

from __future__ import annotations

import itertools
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from oidc_tokens.claims import Subject, build_claims
from oidc_tokens.keys import SigningKey, key_id, load_private_key
from oidc_tokens.signing import sign
from tests.reliability.cluster_rig import (
    Cluster,
    ClusterWebhook,
    DocumentHost,
    LoopThread,
    ask_token,
    start_cluster,
    start_cluster_webhook,
)
from tests.reliability.sidecar_rig import start_sidecar
from tests.reliability.sts_rig import (
    MOTO_ACCOUNT,
    S3_POLICY,
    Exchanger,
    exchange,
    install,
    sts_client,
)
from tests.reliability.support import (
    Figures,
    Processes,
    budget,
    free_port,
    scaled,
    wait_for,
)
from tests.reliability.webhook_rig import aws_identity, gcp_identity
from webhook.demo.strict_sts import StrictSts, create_app
from webhook.issuer import write_new_key
from webhook.tls import write_self_signed

LIFETIME = 10
"""Seconds a token lives (the shortest the identity allows), so that a key
can be retired soon after signing stops."""

ROTATIONS = scaled(1, 4)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass
class World:
    directory: Path
    processes: Processes
    cluster: Cluster
    host: DocumentHost
    sts_url: str
    moto_url: str
    tls: tuple[Path, Path]
    port: int

    @property
    def issuer_url(self) -> str:
        return self.host.url

    def webhook(self, *keys: Path) -> ClusterWebhook:
        webhook = start_cluster_webhook(
            self.processes,
            self.directory,
            self.cluster,
            issuer_url=self.issuer_url,
            keys=list(keys),
            tls=self.tls,
            port=self.port,
        )
        for key in keys:
            webhook.process.forbidden.append(key.read_text().splitlines()[1])
        return webhook


@pytest.fixture
def world(tmp_path: Path, processes: Processes, moto_url: str) -> Iterator[World]:
    requests.post(f"{moto_url}/moto-api/reset", timeout=10)
    thread = LoopThread()
    try:
        host_cert, host_key = tmp_path / "host.crt", tmp_path / "host.key"
        write_self_signed(str(host_cert), str(host_key), hosts=["127.0.0.1"])
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(host_cert, host_key)
        host = DocumentHost()
        host.url = f"https://127.0.0.1:{thread.serve(host.app(), tls=context)}"
        sts = StrictSts(moto_url=moto_url, ca_file=str(host_cert))
        sts_url = f"http://127.0.0.1:{thread.serve(create_app(sts), tls=None)}"
        cluster = start_cluster(thread, audience=host.url)
        tls = tmp_path / "tls.crt", tmp_path / "tls.key"
        write_self_signed(str(tls[0]), str(tls[1]), hosts=["127.0.0.1"])
        yield World(
            tmp_path, processes, cluster, host, sts_url, moto_url, tls, free_port()
        )
    finally:
        requests.post(f"{moto_url}/moto-api/reset", timeout=10)
        thread.stop()


def new_key(path: Path) -> tuple[Path, SigningKey]:
    write_new_key(str(path))
    return path, load_private_key(path.read_bytes())


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


@pytest.mark.timeout(budget(150, 900))
def test_signing_keys_rotate_while_a_client_exchanges_tokens_without_one_failure(
    world: World, figures: Figures
) -> None:
    world.cluster.namespace("payments", "payments")
    document = aws_identity(
        "reports", projects=["payments"], account=MOTO_ACCOUNT, lifetime=LIFETIME,
        policy=S3_POLICY,
    )  # fmt: skip
    world.cluster.identity(document)
    install(world.moto_url, world.issuer_url, [document])
    keys = [new_key(world.directory / f"signing-{n}.pem") for n in range(ROTATIONS + 1)]
    world.host.publish(keys[0][1])
    webhook = world.webhook(keys[0][0])

    pod = world.cluster.pod("payments", "app-1")
    sa_token = world.cluster.sa_token(pod, namespace="payments")
    sa_file = world.directory / "sa-token"
    sa_file.write_text(sa_token)
    sidecar = start_sidecar(
        world.processes,
        world.directory,
        world.directory / "tokens",
        mode="issuer",
        issuer_token_url=webhook.token_url,
        # Inline, as the webhook injects it (WI_ISSUER_CA), not as a file.
        issuer_ca=world.tls[0].read_text(),
        sa_token_file=str(sa_file),
        aws_identity="reports",
    )
    sidecar.process.forbidden.append(sa_token)
    client = Exchanger(sts_client(world.sts_url), "reports", sidecar.token)
    client.start()
    try:
        for (old_path, old), (new_path, new) in itertools.pairwise(keys):
            wait_for(lambda: client.outcomes["ok"] >= 3, timeout=30, what="exchanges")
            # 1. Publish the next key beside the one that signs.
            world.host.publish(old, new)
            time.sleep(1.0)
            # 2. Switch signing: the issuer restarts with the new key first.
            webhook.stop()
            last_signed_by_old = time.time()
            webhook = world.webhook(new_path, old_path)
            wanted = key_id(new)
            wait_for(
                lambda: kid_of(sidecar.token()) == wanted,  # noqa: B023
                timeout=30,
                what="a token signed with the new key",
            )
            # 3. Retire the old key once every token it signed has expired.
            wait_for(
                lambda: time.time() > last_signed_by_old + LIFETIME + 1,  # noqa: B023
                timeout=LIFETIME + 5,
                interval=0.2,
            )
            world.host.publish(new)
            webhook.stop()
            webhook = world.webhook(new_path)
            time.sleep(1.0)
        wait_for(lambda: client.outcomes["ok"] >= 3, timeout=30, what="exchanges")
    finally:
        client.stop()
    kids = {kid_of(t) for t in client.tokens}

    assert set(client.outcomes) == {"ok"}, client.outcomes
    assert kids == {key_id(k) for _, k in keys}
    # The check is real: a token from a retired key is refused now.
    retired = _token(keys[0][1], world.issuer_url, "reports", "sts.amazonaws.com")
    assert (
        exchange(sts_client(world.sts_url), "reports", retired)
        == "InvalidIdentityToken"
    )
    figures.record(
        "key rotation",
        rotations=ROTATIONS,
        exchanges=sum(client.outcomes.values()),
        failed_exchanges=sum(n for k, n in client.outcomes.items() if k != "ok"),
        tokens_exchanged=len(client.tokens),
        issuer_restarts=2 * ROTATIONS,
    )
    figures.add("token refusals", "sts_refused", 1)


def _token(
    key: SigningKey,
    issuer: str,
    identity: str,
    audience: str,
    *,
    now: int | None = None,
    lifetime: int = 600,
) -> str:
    subject = Subject(identity, "payments", "payments", "reports", "app-1")
    claims = build_claims(
        subject,
        issuer=issuer,
        audience=audience,
        now=int(time.time()) if now is None else now,
        lifetime_seconds=lifetime,
    )
    return sign(claims, key)


def test_one_identity_token_never_assumes_another_identity_role(
    world: World, figures: Figures
) -> None:
    cluster = world.cluster
    cluster.namespace("payments", "payments")
    cluster.namespace("billing", "billing")
    aws = [
        aws_identity(name, projects=[project], tags=tags, account=MOTO_ACCOUNT, policy=S3_POLICY)
        for name, project, tags in (
            ("reports", "payments", ["app"]),
            ("reports-admin", "payments", ["admin"]),
            ("billing", "billing", None),
        )
    ]  # fmt: skip
    for document in aws:
        cluster.identity(document)
    cluster.identity(gcp_identity("reports-gcp", projects=["payments"], tags=["app"]))
    install(world.moto_url, world.issuer_url, aws)
    signing_path, signing = new_key(world.directory / "signing.pem")
    world.host.publish(signing)
    webhook = world.webhook(signing_path)

    def issued(
        namespace: str, pod: str, tags: str, identity: str, provider: str = "aws"
    ) -> str:
        bound = cluster.pod(namespace, pod, tags=tags)
        presented = cluster.sa_token(bound, namespace=namespace)
        webhook.process.forbidden.append(presented)
        status, answer = ask_token(
            webhook, presented, identity=identity, provider=provider
        )
        assert status == 200, answer
        token: str = answer["token"]
        webhook.process.forbidden.append(token)
        return token

    tokens = {
        "reports": issued("payments", "app-1", "app", "reports"),
        "reports-admin": issued("payments", "admin-1", "admin", "reports-admin"),
        "billing": issued("billing", "invoice-1", "", "billing"),
    }
    client = sts_client(world.sts_url)
    matrix: dict[tuple[str, str], str] = {
        (holder, role): exchange(client, role, token)
        for holder, token in tokens.items()
        for role in tokens
    }
    for (holder, role), outcome in matrix.items():
        if holder == role:
            assert outcome == "ok", (holder, outcome)
        else:
            assert outcome == "AccessDenied", (holder, role, outcome)

    # The audience pins the cloud: a GCP token of the same pod is no AWS token.
    gcp = issued("payments", "app-2", "app", "reports-gcp", provider="gcp")
    others: dict[str, Any] = {
        "gcp audience": exchange(client, "reports", gcp),
        "unknown key": exchange(
            client,
            "reports",
            _token(
                new_key(world.directory / "stranger.pem")[1],
                world.issuer_url,
                "reports",
                "sts.amazonaws.com",
            ),
        ),
        "expired": exchange(
            client,
            "reports",
            _token(
                signing,
                world.issuer_url,
                "reports",
                "sts.amazonaws.com",
                now=int(time.time()) - 700,
                lifetime=600,
            ),
        ),
        "another issuer": exchange(
            client,
            "reports",
            _token(
                signing, "https://other.example.test", "reports", "sts.amazonaws.com"
            ),
        ),
    }
    assert others == {
        "gcp audience": "InvalidIdentityToken",
        "unknown key": "InvalidIdentityToken",
        "expired": "ExpiredTokenException",
        "another issuer": "InvalidIdentityToken",
    }
    refused = sum(1 for o in matrix.values() if o != "ok") + len(others)
    figures.add("token refusals", "sts_refused", refused)
    figures.record(
        "identity pinning",
        cross_identity_attempts=len(matrix) - len(tokens),
        cross_identity_accepted=sum(
            1 for (h, r), o in matrix.items() if h != r and o == "ok"
        ),
        forged_or_foreign_refused=len(others),
    )
