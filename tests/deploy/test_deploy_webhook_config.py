"""The MutatingWebhookConfiguration: what the API server sends to the webhook.

Cases 05 (dry run), 13 (Jobs), 19 (never UPDATE) and 20 (never the system or
the webhook's own namespace) all depend on this registration.
"""

from __future__ import annotations

from typing import Any

import pytest
from deploy_support import (
    INSTALLS,
    SERVICE,
    TLS_SECRET,
    WEBHOOK_NAMESPACE,
    container,
    only,
    render,
    selects,
    the_webhook,
    webhook_deployment,
)

PROJECT_LABEL = "workloadidentity.dev/project"
NAME_LABEL = "kubernetes.io/metadata.name"
ALL = ("base", *INSTALLS)


@pytest.mark.parametrize("kustomization", ALL)
def test_only_pod_create_is_intercepted(kustomization: str) -> None:
    rules = the_webhook(kustomization)["rules"]
    assert len(rules) == 1
    rule = rules[0]
    assert rule["operations"] == ["CREATE"]
    assert rule["resources"] == ["pods"]  # no pods/ephemeralcontainers, no "*"
    assert rule["apiGroups"] == [""]
    assert rule["apiVersions"] == ["v1"]


@pytest.mark.parametrize("kustomization", ALL)
def test_dry_run_is_supported_and_failures_are_deliberate(kustomization: str) -> None:
    webhook = the_webhook(kustomization)
    assert webhook["sideEffects"] == "None"
    assert webhook["admissionReviewVersions"][0] == "v1"
    assert set(webhook["admissionReviewVersions"]) <= {"v1", "v1beta1"}
    assert webhook["failurePolicy"] == "Fail"
    assert webhook["reinvocationPolicy"] == "IfNeeded"
    assert 1 <= webhook["timeoutSeconds"] <= 10


@pytest.mark.parametrize("kustomization", ALL)
def test_namespace_selector_requires_a_project_and_excludes_system(
    kustomization: str,
) -> None:
    expressions = the_webhook(kustomization)["namespaceSelector"]["matchExpressions"]
    by_key = {e["key"]: e for e in expressions}
    assert by_key[PROJECT_LABEL]["operator"] == "Exists"
    excluded = by_key[NAME_LABEL]
    assert excluded["operator"] == "NotIn"
    assert {"kube-system", "kube-public", "kube-node-lease", WEBHOOK_NAMESPACE} <= set(
        excluded["values"]
    )


@pytest.mark.parametrize(
    ("labels", "sent"),
    [
        ({NAME_LABEL: "team-a", PROJECT_LABEL: "team-a"}, True),
        ({NAME_LABEL: "team-b"}, False),
        ({NAME_LABEL: "kube-system"}, False),
        ({NAME_LABEL: "kube-system", PROJECT_LABEL: "kube-system"}, False),
        ({NAME_LABEL: WEBHOOK_NAMESPACE}, False),
        ({NAME_LABEL: WEBHOOK_NAMESPACE, PROJECT_LABEL: WEBHOOK_NAMESPACE}, False),
        ({NAME_LABEL: "kube-node-lease", PROJECT_LABEL: "x"}, False),
        ({NAME_LABEL: "demo-app", PROJECT_LABEL: "demo"}, True),
    ],
)
def test_which_namespaces_the_api_server_sends(
    labels: dict[str, str], sent: bool
) -> None:
    """Case 20, including its variant with mislabelled system namespaces."""
    assert selects(the_webhook("base")["namespaceSelector"], labels) is sent


@pytest.mark.parametrize(
    ("labels", "sent"),
    [
        ({}, True),
        ({"app": "api"}, True),
        ({"workloadidentity.dev/inject": "true"}, True),
        ({"workloadidentity.dev/inject": "false"}, False),
    ],
)
def test_pods_labelled_inject_false_are_not_sent(
    labels: dict[str, str], sent: bool
) -> None:
    assert selects(the_webhook("base")["objectSelector"], labels) is sent


@pytest.mark.parametrize("kustomization", ALL)
def test_client_config_reaches_the_webhook_container(kustomization: str) -> None:
    objects = render(kustomization)
    client: dict[str, Any] = the_webhook(kustomization)["clientConfig"]
    assert "url" not in client
    service_ref = client["service"]
    assert service_ref["path"] == "/mutate"
    assert service_ref["namespace"] == WEBHOOK_NAMESPACE
    assert service_ref["name"] == SERVICE

    service = only(objects, "Service", SERVICE)
    assert service["metadata"]["namespace"] == WEBHOOK_NAMESPACE
    port = next(
        p for p in service["spec"]["ports"] if p["port"] == service_ref.get("port", 443)
    )
    pod = webhook_deployment(objects)["spec"]["template"]
    assert all(
        pod["metadata"]["labels"].get(k) == v
        for k, v in service["spec"]["selector"].items()
    )
    ports = {
        p["name"]: p["containerPort"]
        for p in container(pod["spec"], "webhook")["ports"]
    }
    assert ports[port["targetPort"]] == 8443


def test_cert_manager_injects_the_ca_of_the_serving_certificate() -> None:
    objects = render("overlays/cert-manager")
    config = only(objects, "MutatingWebhookConfiguration", "workload-identity")
    reference = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    namespace, name = reference.split("/")
    certificate = only(objects, "Certificate", name)
    assert certificate["metadata"]["namespace"] == namespace == WEBHOOK_NAMESPACE
    assert certificate["spec"]["secretName"] == TLS_SECRET
    assert set(certificate["spec"]["dnsNames"]) >= {
        f"{SERVICE}.{WEBHOOK_NAMESPACE}.svc",
        f"{SERVICE}.{WEBHOOK_NAMESPACE}.svc.cluster.local",
    }
    issuer = only(objects, "Issuer", certificate["spec"]["issuerRef"]["name"])
    assert "ca" in issuer["spec"]


def test_self_signed_job_patches_this_webhook_for_this_service() -> None:
    objects = render("overlays/self-signed")
    job = only(objects, "Job", "workload-identity-certgen")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--webhook-config=workload-identity" in args
    assert f"--service={SERVICE}" in args
    config = only(objects, "MutatingWebhookConfiguration", "workload-identity")
    assert "cert-manager.io/inject-ca-from" not in config["metadata"].get(
        "annotations", {}
    )


@pytest.mark.parametrize("kustomization", ALL)
def test_the_webhook_namespace_is_never_a_project(kustomization: str) -> None:
    namespace = only(render(kustomization), "Namespace", WEBHOOK_NAMESPACE)
    assert PROJECT_LABEL not in namespace["metadata"].get("labels", {})
