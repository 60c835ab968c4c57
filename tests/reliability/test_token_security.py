"""The issuer's /token against ServiceAccount tokens it must refuse, through
the real process over TLS: every refusal has its status, no token is issued,
and neither the token presented nor any other shows up in its log, its
answers or its metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.log_scan import secrets_in
from tests.reliability.cluster_rig import (
    Cluster,
    ClusterWebhook,
    LoopThread,
    ask_token,
    start_cluster,
    start_cluster_webhook,
)
from tests.reliability.support import (
    Figures,
    Processes,
    free_port,
    http_get,
    metric_labels,
    sample,
)
from tests.reliability.webhook_rig import aws_identity
from webhook.issuer import write_new_key
from webhook.tls import write_self_signed


@dataclass
class Issuer:
    cluster: Cluster
    webhook: ClusterWebhook

    def ask(
        self, token: str | None, identity: str, **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        status, answer = ask_token(self.webhook, token, identity=identity, **kwargs)
        assert "token" not in answer or status == 200
        return status, answer


@pytest.fixture
def issuer(tmp_path: Path, processes: Processes) -> Iterator[Issuer]:
    thread = LoopThread()
    try:
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        cluster = start_cluster(thread, audience=url)
        cluster.namespace("payments", "payments")
        cluster.namespace("billing", "billing")
        cluster.namespace("plain")
        cluster.identity(aws_identity("reports", projects=["payments"], tags=["app"]))
        cluster.identity(
            aws_identity("reports-admin", projects=["payments"], tags=["admin"])
        )
        cluster.identity(aws_identity("billing", projects=["billing"]))
        cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
        write_self_signed(str(cert), str(key), hosts=["127.0.0.1"])
        signing = tmp_path / "signing.pem"
        write_new_key(str(signing))
        webhook = start_cluster_webhook(
            processes,
            tmp_path,
            cluster,
            issuer_url=url,
            keys=[signing],
            tls=(cert, key),
            port=port,
        )
        signing_body = signing.read_text().splitlines()[1]
        webhook.process.forbidden.append(signing_body)
        yield Issuer(cluster, webhook)
    finally:
        thread.stop()


def test_tokens_that_must_not_buy_a_cloud_token_are_all_refused_and_never_logged(
    issuer: Issuer, figures: Figures
) -> None:
    cluster = issuer.cluster
    app = cluster.pod("payments", "app-1", tags="app")
    good = cluster.sa_token(app, namespace="payments")
    status, answer = issuer.ask(good, "reports")
    assert status == 200, answer  # the control: this one is entitled
    issued = answer["token"]

    refusals: list[tuple[str, int, str]] = []

    def refused(
        case: str, status: int, token: str | None, identity: str, **kw: Any
    ) -> None:
        got, body = issuer.ask(token, identity, **kw)
        assert got == status, (case, got, body)
        assert "token" not in body
        assert not secrets_in(json.dumps(body), [t for t in (token, issued) if t])
        refusals.append((case, got, body["error"]))

    # 401: the ServiceAccount token itself is no good.
    refused("no token", 401, None, "reports")
    refused("not a token", 401, "garbage", "reports")
    wrong = cluster.sa_token(
        app, namespace="payments", audiences=["https://kubernetes.default.svc"]
    )
    refused("wrong audience", 401, wrong, "reports")
    expired = cluster.sa_token(app, namespace="payments")
    cluster.expire(expired)
    refused("expired", 401, expired, "reports")
    unbound = cluster.sa_token(None, namespace="payments")
    refused("not bound to a pod", 401, unbound, "reports")
    other_account = cluster.sa_token(app, namespace="payments", service_account="other")
    refused("another service account", 401, other_account, "reports")
    gone = cluster.pod("payments", "app-2", tags="app")
    gone_token = cluster.sa_token(gone, namespace="payments")
    cluster.delete_pod("payments", "app-2")
    refused("pod deleted", 401, gone_token, "reports")
    recreated = cluster.pod("payments", "app-3", tags="app")
    recreated_token = cluster.sa_token(recreated, namespace="payments")
    cluster.pod("payments", "app-3", tags="app")  # same name, a new uid
    refused("pod recreated", 401, recreated_token, "reports")

    # 403: a valid token, for an identity the pod may not have now.
    billing = cluster.pod("billing", "invoice-1")
    billing_token = cluster.sa_token(billing, namespace="billing")
    refused("another namespace's identity", 403, billing_token, "reports")
    plain = cluster.pod("plain", "tool-1", tags="app")
    refused(
        "namespace of no project",
        403,
        cluster.sa_token(plain, namespace="plain"),
        "reports",
    )
    refused("replayed for another identity", 403, good, "reports-admin")
    refused("replayed for a GCP identity", 403, good, "reports", provider="gcp")
    cluster.retag_pod("payments", "app-1", "admin")
    refused("replayed after the pod left the scope", 403, good, "reports")

    # 400: not a request at all.
    refused("body nested too deep", 400, good, "reports", body=b"[" * 50_000)
    refused("body not JSON", 400, good, "reports", body=b"\xff\xfe")

    page = http_get(f"http://127.0.0.1:{issuer.webhook.metrics_port}/metrics")[1]
    counted = {
        outcome: sum(
            sample(
                page,
                "workload_identity_tokens_issued_total",
                provider=p,
                outcome=outcome,
            )
            for p in ("aws", "gcp", "unknown")
        )
        for outcome in ("issued", "unauthenticated", "forbidden", "bad_request")
    }
    by_status = {
        s: sum(1 for _, got, _ in refusals if got == s) for s in (400, 401, 403)
    }
    assert counted == {
        "issued": 1,
        "unauthenticated": by_status[401],
        "forbidden": by_status[403],
        "bad_request": by_status[400],
    }
    presented = [good, wrong, expired, unbound, other_account, gone_token]
    presented += [recreated_token, billing_token, issued]
    assert not secrets_in("\n".join(metric_labels(page)), presented)
    issuer.webhook.process.forbidden += presented
    figures.record(
        "token refusals",
        token_endpoint_refused=len(refusals),
        token_endpoint_cases=sorted({case for case, _, _ in refusals}),
        tokens_in_logs=0,
    )
