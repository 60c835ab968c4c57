"""`python -m webhook serve` as a process, with the rules and the reviews the
reliability tests send it."""

from __future__ import annotations

import copy
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from tests.reliability.loadgen import UID_MARK
from tests.reliability.support import (
    HttpsClient,
    Process,
    Processes,
    free_port,
    http_get,
    wait_for,
)
from tests.webhook.large_pods import large_pod

PROJECT_LABEL: Final = "workloadidentity.dev/project"
ACCOUNT: Final = "111122223333"


def aws_identity(
    name: str,
    *,
    projects: list[str],
    tags: list[str] | None = None,
    account: str = ACCOUNT,
    lifetime: int = 3600,
    policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    scope: dict[str, Any] = {"projects": {"restrict": True, "names": projects}}
    if tags is not None:
        scope["tags"] = {"restrict": True, "names": tags}
    spec: dict[str, Any] = {
        "provider": "aws",
        "aws": {
            "roleArn": f"arn:aws:iam::{account}:role/{name}",
            "region": "eu-west-1",
        },
        "scope": scope,
        "token": {"expirationSeconds": lifetime},
    }
    if policy is not None:
        spec["permissions"] = {"mode": "managed", "policyDocument": policy}
    return {
        "apiVersion": "workloadidentity.dev/v1alpha1",
        "kind": "WorkloadIdentity",
        "metadata": {"name": name},
        "spec": spec,
    }


def gcp_identity(name: str, *, projects: list[str], tags: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "workloadidentity.dev/v1alpha1",
        "kind": "WorkloadIdentity",
        "metadata": {"name": name},
        "spec": {
            "provider": "gcp",
            "gcp": {
                "projectNumber": "123456789012",
                "poolId": "cluster-pool",
                "providerId": "cluster-oidc",
                "serviceAccountEmail": f"{name}@proj-one.iam.gserviceaccount.com",
                "projectId": "proj-one",
            },
            "scope": {
                "projects": {"restrict": True, "names": projects},
                "tags": {"restrict": True, "names": tags},
            },
        },
    }


IDENTITIES: Final = [
    aws_identity("payments-s3", projects=["payments"]),
    aws_identity("payments-sqs", projects=["payments"], tags=["queue"]),
    gcp_identity("payments-bq", projects=["payments"], tags=["bq"]),
    aws_identity("batch-s3", projects=["batch"]),
]


def namespace(name: str, project: str | None = None) -> dict[str, Any]:
    labels = {PROJECT_LABEL: project} if project else {}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}  # fmt: skip


NAMESPACES: Final = [
    namespace("payments", "payments"),
    namespace("batch", "batch"),
    namespace("plain"),
]


def write_rules(directory: Path) -> tuple[Path, Path]:
    identities = directory / "identities.yaml"
    identities.write_text(yaml.safe_dump_all(IDENTITIES))
    namespaces = directory / "namespaces.yaml"
    namespaces.write_text(yaml.safe_dump_all(NAMESPACES))
    return identities, namespaces


def pod(
    namespace: str = "payments",
    *,
    annotations: dict[str, str] | None = None,
    containers: int = 1,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "app-",
            "namespace": namespace,
            "annotations": dict(annotations or {}),
            "labels": {"app": "reports"},
        },
        "spec": {
            "serviceAccountName": "reports",
            "containers": [
                {
                    "name": f"app-{n}",
                    "image": "registry.example.com/app:1",
                    "env": [{"name": "MODE", "value": "batch"}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
                for n in range(containers)
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }


def review(
    obj: dict[str, Any],
    *,
    uid: str = UID_MARK,
    operation: str = "CREATE",
    api_version: str = "admission.k8s.io/v1",
) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": obj["metadata"]["namespace"],
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller"
            },
            "object": copy.deepcopy(obj),
            "dryRun": False,
        },
    }


def load_mix(*, large: bool = False) -> list[tuple[str, int]]:
    """The reviews a busy cluster sends, by weight: mostly pods to mutate, and
    every other way through the webhook."""
    mix: list[tuple[dict[str, Any], int]] = [
        (review(pod()), 40),
        (review(pod(annotations={"workloadidentity.dev/tags": "bq, queue"})), 15),
        (review(pod(containers=6)), 10),
        (review(pod("batch")), 10),
        (review(pod("plain")), 8),
        (review(pod(annotations={"workloadidentity.dev/inject": "false"})), 5),
        (review(pod(), operation="UPDATE"), 5),
        (review(pod(), api_version="admission.k8s.io/v1beta1"), 5),
        (review(pod(annotations={"workloadidentity.dev/tags": "typo"})), 2),
    ]
    if large:
        mix.append((review(large_pod("payments")), 1))
    return [(json.dumps(body, separators=(",", ":")), weight) for body, weight in mix]


@dataclass
class Webhook:
    process: Process
    port: int
    metrics_port: int
    cafile: Path

    def client(self, *, timeout: float = 30.0) -> HttpsClient:
        return HttpsClient(self.port, self.cafile, timeout=timeout)

    def metrics(self) -> str:
        status, page = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        assert status == 200, f"metrics answered {status}"
        return page

    def ready(self) -> bool:
        if not self.process.alive():
            raise AssertionError(f"the webhook exited:\n{self.process.log()[-3000:]}")
        client = self.client(timeout=2.0)
        try:
            return client.request("GET", "/readyz").status == 200
        except (OSError, ssl.SSLError):
            return False
        finally:
            client.close()


def start_webhook(
    processes: Processes,
    directory: Path,
    *,
    tls: tuple[Path, Path] | None = None,
    cafile: Path | None = None,
    log_level: str = "INFO",
    extra: tuple[str, ...] = (),
) -> Webhook:
    """Serve the reliability rules from files over TLS on free ports; return
    once /readyz answers 200."""
    identities, namespaces = write_rules(directory)
    state = directory / "state"
    port, metrics_port = free_port(), free_port()
    argv = [
        "-m", "webhook", "--log-level", log_level, "serve", "--shutdown-delay", "0",
        "--identities", str(identities), "--namespaces", str(namespaces),
        "--state-dir", str(state),
        "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
    ]  # fmt: skip
    if tls is not None:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    process = processes.python("webhook", *argv, *extra)
    webhook = Webhook(process, port, metrics_port, cafile or state / "tls.crt")
    wait_for(
        lambda: webhook.cafile.exists() and webhook.ready(),
        timeout=30,
        what="the webhook to be ready",
    )
    return webhook
