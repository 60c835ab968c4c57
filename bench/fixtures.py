"""What the benchmark sends: pods, AdmissionReviews and identity populations.

Every pod lives in project `payments`. Two identities serve it (one per
provider, both restricted to the tag `reports`); every other identity is a
filler spread over other projects and tags, so the answer for each pod is the
same whatever the population's size.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any, Final

from tests.webhook.large_pods import large_pod

PROJECT: Final = "payments"
NAMESPACE: Final = "payments-prod"
POD_TAG: Final = "reports"
TARGET_REVIEW_BYTES: Final = 8 * 1024
FILLER_PROJECTS: Final = 100
"""Fillers are spread over this many projects, the pod's own among them."""
_FILLER_TAGS: Final = tuple(f"team-{n:02d}" for n in range(50))


# --- pods ---------------------------------------------------------------------

_CA_ITEM: Final = {"key": "ca.crt", "path": "ca.crt"}


def _env(index: int) -> dict[str, str]:
    return {"name": f"FEATURE_FLAG_{index:02d}", "value": f"reports-v2-rollout-{index}"}


def _app_container(env_count: int) -> dict[str, Any]:
    return {
        "name": "app",
        "image": "registry.example.com/payments/reports:2.14.3",
        "imagePullPolicy": "IfNotPresent",
        "command": ["/app/reports", "serve"],
        "args": ["--listen=:8080", "--log-format=json"],
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": [
            {
                "name": "DB_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "reports-db", "key": "pw"}},
            },
            {
                "name": "POD_IP",
                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
            },
            *(_env(n) for n in range(env_count)),
        ],
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"memory": "512Mi"},
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http", "scheme": "HTTP"},
            "periodSeconds": 10,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
            "periodSeconds": 10,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/reports", "readOnly": True},
            {"name": "cache", "mountPath": "/var/cache/reports"},
            {
                "name": "kube-api-access-x2v7q",
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "readOnly": True,
            },
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }


def _log_shipper() -> dict[str, Any]:
    return {
        "name": "log-shipper",
        "image": "registry.example.com/platform/fluent-bit:3.1.9",
        "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
        "volumeMounts": [
            {"name": "cache", "mountPath": "/var/cache/reports", "readOnly": True},
            {
                "name": "kube-api-access-x2v7q",
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "readOnly": True,
            },
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }


def regular_pod(*, tagged: bool = True, env_count: int = 40) -> dict[str, Any]:
    """A Deployment's pod as the API server sends it: two containers, probes,
    defaults filled in. `tagged=False` gives the pod that matches nothing."""
    annotations = {
        "kubectl.kubernetes.io/default-container": "app",
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
    }
    if tagged:
        annotations["workloadidentity.dev/tags"] = POD_TAG
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "reports-7d9f8b6c5d-",
            "namespace": NAMESPACE,
            "labels": {
                "app.kubernetes.io/name": "reports",
                "app.kubernetes.io/part-of": "payments",
                "pod-template-hash": "7d9f8b6c5d",
            },
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "reports-7d9f8b6c5d",
                    "uid": "5d0c3a6e-1f1e-4c61-a3a4-3f1c2b9d7e10",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "serviceAccountName": "reports",
            "serviceAccount": "reports",
            "containers": [_app_container(env_count), _log_shipper()],
            "volumes": [
                {"name": "config", "configMap": {"name": "reports", "defaultMode": 420}},
                {"name": "cache", "emptyDir": {"medium": "Memory"}},
                {
                    "name": "kube-api-access-x2v7q",
                    "projected": {
                        "defaultMode": 420,
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [_CA_ITEM]}},
                        ],
                    },
                },
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "securityContext": {"fsGroup": 2000},
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "tolerations": [
                {
                    "key": f"node.kubernetes.io/{taint}",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
                for taint in ("not-ready", "unreachable")
            ],
        },
    }  # fmt: skip


def eighty_container_pod() -> dict[str, Any]:
    """The 80-container pod of tests/webhook/large_pods.py, tagged to match."""
    pod = large_pod(NAMESPACE)
    pod["metadata"]["annotations"] = {"workloadidentity.dev/tags": POD_TAG}
    return pod


def review(pod: dict[str, Any], uid: str = "bench-0000") -> dict[str, Any]:
    """A CREATE AdmissionReview for `pod`, as the API server sends it."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": pod["metadata"]["namespace"],
            "operation": "CREATE",
            "dryRun": False,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "c4e1b1f6-7a63-4f0e-8f39-5a4e8a1c2b3d",
                "groups": [
                    "system:serviceaccounts",
                    "system:serviceaccounts:kube-system",
                    "system:authenticated",
                ],
            },
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            "object": pod,
        },
    }


def encode(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def eight_kb_pod(*, tagged: bool = True) -> dict[str, Any]:
    """The regular pod with as many env entries as bring its review to 8 KiB."""
    env_count = 0
    while len(encode(review(regular_pod(env_count=env_count + 1)))) <= (
        TARGET_REVIEW_BYTES
    ):
        env_count += 1
    return regular_pod(tagged=tagged, env_count=env_count)


def bodies() -> dict[str, bytes]:
    """The three request bodies the load runs send, by pod name."""
    return {
        "8 KB pod": encode(review(eight_kb_pod())),
        "80-container pod": encode(review(eighty_container_pod())),
        "no-match pod": encode(review(eight_kb_pod(tagged=False))),
    }


# --- identities and namespaces ------------------------------------------------


def _aws(name: str, *, projects: Any, tags: list[str]) -> dict[str, Any]:
    return _identity(
        name,
        "aws",
        {"roleArn": f"arn:aws:iam::111122223333:role/{name}", "region": "eu-west-1"},
        projects=projects,
        tags=tags,
    )


def _gcp(name: str, *, projects: Any, tags: list[str]) -> dict[str, Any]:
    return _identity(
        name,
        "gcp",
        {
            "projectNumber": "123456789012",
            "poolId": "k8s-pool",
            "providerId": "k8s-oidc",
            "serviceAccountEmail": "reports@payments-prod.iam.gserviceaccount.com",
            "projectId": "payments-prod",
        },
        projects=projects,
        tags=tags,
    )


def _identity(
    name: str,
    provider: str,
    settings: dict[str, str],
    *,
    projects: Any,
    tags: list[str],
) -> dict[str, Any]:
    return {
        "apiVersion": "workloadidentity.dev/v1alpha1",
        "kind": "WorkloadIdentity",
        "metadata": {"name": name},
        "spec": {
            "provider": provider,
            provider: settings,
            "scope": {
                "projects": projects,
                "tags": {"restrict": True, "names": tags},
            },
        },
    }


def _fillers(count: int) -> Iterator[dict[str, Any]]:
    # Names in random order, so the two serving identities sit somewhere in
    # the middle of their project's list rather than first.
    rng = random.Random(count)  # noqa: S311 - a reproducible population
    for index in range(count):
        name = f"{rng.choice('abcdefghijklmnopqrstuvwxyz')}{index:05d}-filler"
        tags = rng.sample(_FILLER_TAGS, 2)
        if index % 100 == 99:
            # One in a hundred serves every project: such identities are
            # candidates for every pod.
            projects: dict[str, Any] = {"restrict": False}
        else:
            project = index % FILLER_PROJECTS
            projects = {
                "restrict": True,
                "names": [PROJECT if project == 0 else f"project-{project:03d}"],
            }
        make = _aws if index % 2 else _gcp
        yield make(name, projects=projects, tags=tags)


def identity_documents(count: int) -> list[dict[str, Any]]:
    """`count` WorkloadIdentity documents: the two that serve the pods, and
    fillers spread over 100 projects (the pods' own included)."""
    if count < 2:
        raise ValueError("a population needs at least the two serving identities")
    serving = {"restrict": True, "names": [PROJECT]}
    return [
        _aws("payments-reports-s3", projects=serving, tags=[POD_TAG]),
        _gcp("payments-reports-gcs", projects=serving, tags=[POD_TAG]),
        *_fillers(count - 2),
    ]


def namespace_documents() -> list[dict[str, Any]]:
    names = [(NAMESPACE, PROJECT)] + [
        (f"team-{n:03d}", f"project-{n:03d}") for n in range(1, FILLER_PROJECTS)
    ]
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/metadata.name": name,
                    "workloadidentity.dev/project": project,
                },
            },
        }
        for name, project in names
    ]
