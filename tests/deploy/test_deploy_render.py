"""Every kustomization renders, and every object in it is valid Kubernetes."""

from __future__ import annotations

import copy
from collections import Counter

import kubernetes_validate
import pytest
import yaml
from deploy_support import (
    DEPLOY,
    INSTALLS,
    K8S_VERSION,
    KUSTOMIZATIONS,
    SIGNING_SECRET,
    TLS_SECRET,
    Obj,
    of_kind,
    only,
    pod_templates,
    render,
    webhook_deployment,
)

# Kinds defined by CRDs, which kubernetes-validate has no schema for. Ours
# (WorkloadIdentity) is checked against our CRD in test_deploy_crd.py.
CRD_GROUPS = {"cert-manager.io", "monitoring.coreos.com", "workloadidentity.dev"}
CLUSTER_SCOPED = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "WorkloadIdentity",
}


def group_of(obj: Obj) -> str:
    api_version: str = obj["apiVersion"]
    return api_version.split("/")[0] if "/" in api_version else ""


def test_every_kustomization_in_deploy_is_covered() -> None:
    found = set()
    for path in DEPLOY.rglob("kustomization.yaml"):
        if yaml.safe_load(path.read_text()).get("kind") == "Component":
            continue
        found.add(path.parent.relative_to(DEPLOY).as_posix())
    assert found == set(KUSTOMIZATIONS)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_objects_validate_against_the_kubernetes_schemas(kustomization: str) -> None:
    errors = []
    for obj in render(kustomization):
        if group_of(obj) in CRD_GROUPS:
            continue
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            errors.append(f"{name}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{name}: {error.message}")
    assert not errors, "\n".join(errors)


def test_the_validator_rejects_a_misspelt_field() -> None:
    """Guards the test above: strict validation must catch unknown fields."""
    deployment = copy.deepcopy(webhook_deployment(render("base")))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicey"] = (
        "Always"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_namespaced_objects_name_their_namespace(kustomization: str) -> None:
    """`kubectl apply -k` would otherwise put them in the caller's namespace."""
    missing = [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in render(kustomization)
        if o["kind"] not in CLUSTER_SCOPED and not o["metadata"].get("namespace")
    ]
    assert not missing


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_no_two_objects_share_kind_namespace_and_name(kustomization: str) -> None:
    keys = Counter(
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
        for o in render(kustomization)
    )
    assert [k for k, n in keys.items() if n > 1] == []


@pytest.mark.parametrize("kustomization", INSTALLS)
def test_every_installation_has_the_crd_and_both_secrets_provided(
    kustomization: str,
) -> None:
    objects = render(kustomization)
    only(objects, "CustomResourceDefinition", "workloadidentities.workloadidentity.dev")
    signing_job = only(objects, "Job", "workload-identity-signing-key")
    args = pod_templates(signing_job)[0]["spec"]["containers"][0]["args"]
    assert args[0] == "signing-key"
    assert f"--secret={SIGNING_SECRET}" in args
    if kustomization == "overlays/cert-manager":
        certificate = only(objects, "Certificate", TLS_SECRET)
        assert certificate["spec"]["secretName"] == TLS_SECRET
    else:
        certgen = only(objects, "Job", "workload-identity-certgen")
        args = pod_templates(certgen)[0]["spec"]["containers"][0]["args"]
        assert args[0] == "tls"
        assert f"--secret={TLS_SECRET}" in args


@pytest.mark.parametrize("kustomization", [*INSTALLS, "examples"])
def test_config_maps_and_service_accounts_that_pods_use_are_rendered(
    kustomization: str,
) -> None:
    objects = render(kustomization)
    config_maps = {o["metadata"]["name"] for o in of_kind(objects, "ConfigMap")}
    accounts = {o["metadata"]["name"] for o in of_kind(objects, "ServiceAccount")}
    for obj in objects:
        for template in pod_templates(obj):
            spec = template["spec"]
            assert spec.get("serviceAccountName", "default") in accounts | {"default"}
            for volume in spec.get("volumes", []):
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in config_maps
                if "secret" in volume:
                    assert volume["secret"]["secretName"] in {
                        TLS_SECRET,
                        SIGNING_SECRET,
                    }
            for item in spec["containers"]:
                for source in item.get("envFrom", []):
                    assert source["configMapRef"]["name"] in config_maps


@pytest.mark.parametrize("kustomization", [*INSTALLS, "examples"])
def test_images_are_pinned_to_a_tag(kustomization: str) -> None:
    for obj in render(kustomization):
        for template in pod_templates(obj):
            for item in template["spec"]["containers"]:
                image = item["image"]
                tag = image.rsplit("/", 1)[-1].partition(":")[2]
                assert tag, f"{image} has no tag"
                assert tag != "latest"


def test_jobs_run_the_same_webhook_image_as_the_deployment() -> None:
    objects = render("overlays/self-signed")
    image = webhook_deployment(objects)["spec"]["template"]["spec"]["containers"][0]
    for kind in ("Job", "CronJob"):
        for obj in of_kind(objects, kind):
            for template in pod_templates(obj):
                assert template["spec"]["containers"][0]["image"] == image["image"]


def test_base_renders_without_any_certificate_machinery() -> None:
    """base is certificate-agnostic; an overlay must choose."""
    kinds = {o["kind"] for o in render("base")}
    assert not kinds & {"Job", "CronJob", "Certificate", "Issuer"}
