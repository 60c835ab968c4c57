"""The webhook Deployment, its Service, PDB and NetworkPolicy, and the
hardening of every pod the manifests run."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from deploy_support import (
    INSTALLS,
    SERVICE,
    SIGNING_SECRET,
    TLS_SECRET,
    WEBHOOK_NAMESPACE,
    Obj,
    container,
    interface_serve_env,
    interface_serve_flags,
    of_kind,
    only,
    parse_args,
    pod_templates,
    render,
    webhook_deployment,
)

ALL = ("base", *INSTALLS)


def webhook_pod(kustomization: str = "base") -> Obj:
    template: Obj = webhook_deployment(render(kustomization))["spec"]["template"]
    return template


def webhook_container(kustomization: str = "base") -> Obj:
    return container(webhook_pod(kustomization)["spec"], "webhook")


def port_number(item: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in item["ports"] if p["name"] == port)


def mount_of(item: Obj, pod_spec: Obj, secret: str) -> str:
    volume = next(
        v["name"]
        for v in pod_spec["volumes"]
        if v.get("secret", {}).get("secretName") == secret
    )
    mount = next(m for m in item["volumeMounts"] if m["name"] == volume)
    assert "subPath" not in mount, "subPath mounts never see a renewed Secret"
    assert mount.get("readOnly") is True
    path: str = mount["mountPath"]
    return path


@pytest.mark.parametrize("kustomization", ALL)
def test_two_replicas_spread_over_nodes_that_roll_without_a_gap(
    kustomization: str,
) -> None:
    deployment = webhook_deployment(render(kustomization))
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    spread = {c["topologyKey"]: c for c in pod["spec"]["topologySpreadConstraints"]}
    by_node = spread["kubernetes.io/hostname"]
    labels = pod["metadata"]["labels"]
    assert all(
        labels[k] == v for k, v in by_node["labelSelector"]["matchLabels"].items()
    )


@pytest.mark.parametrize("kustomization", ALL)
def test_a_disruption_budget_keeps_one_replica(kustomization: str) -> None:
    objects = render(kustomization)
    pdb = only(objects, "PodDisruptionBudget")
    assert pdb["metadata"]["namespace"] == WEBHOOK_NAMESPACE
    assert pdb["spec"]["minAvailable"] == 1
    labels = webhook_pod(kustomization)["metadata"]["labels"]
    assert all(
        labels[k] == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()
    )
    assert pdb["spec"]["minAvailable"] < webhook_deployment(objects)["spec"]["replicas"]


def test_probes_are_https_on_the_admission_port() -> None:
    item = webhook_container()
    liveness, readiness = item["livenessProbe"], item["readinessProbe"]
    assert liveness["httpGet"]["path"] == "/healthz"
    assert readiness["httpGet"]["path"] == "/readyz"
    for probe in (liveness, readiness):
        assert probe["httpGet"]["scheme"] == "HTTPS"
        assert port_number(item, probe["httpGet"]["port"]) == 8443
    ports = {p["name"]: p["containerPort"] for p in item["ports"]}
    assert ports == {"https": 8443, "metrics": 9090}


def test_resources_have_requests_and_limits() -> None:
    resources = webhook_container()["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}


def test_args_run_serve_in_cluster_mode_with_documented_flags() -> None:
    item = webhook_container()
    args = item["args"]
    assert args[0] == "serve"
    flags = parse_args(args[1:])
    unknown = set(flags) - interface_serve_flags()
    assert not unknown, f"flags not in docs/interfaces.md: {unknown}"
    assert flags["--source"] == ["kubernetes"]
    assert flags["--signing-mode"] == ["issuer"]
    assert flags["--listen"] == ["0.0.0.0:8443"]
    assert flags["--metrics-listen"] == ["0.0.0.0:9090"]

    issuer = urlsplit(flags["--issuer-service-url"][0])
    assert issuer.scheme == "https"
    assert issuer.hostname == f"{SERVICE}.{WEBHOOK_NAMESPACE}.svc"
    assert issuer.path == "/token"


def test_tls_and_signing_key_come_from_mounted_secrets() -> None:
    pod = webhook_pod()
    item = container(pod["spec"], "webhook")
    flags = parse_args(item["args"][1:])
    tls_dir = mount_of(item, pod["spec"], TLS_SECRET)
    signing_dir = mount_of(item, pod["spec"], SIGNING_SECRET)
    assert tls_dir == "/etc/workload-identity/tls"
    assert signing_dir == "/etc/workload-identity/signing"
    assert flags["--tls-cert"] == [f"{tls_dir}/tls.crt"]
    assert flags["--tls-key"] == [f"{tls_dir}/tls.key"]
    # The CA of the same Secret goes to the sidecars, to trust /token: both
    # overlays (cert-manager and the certgen Job) write ca.crt beside tls.crt.
    assert flags["--issuer-ca-bundle"] == [f"{tls_dir}/ca.crt"]
    # The self-signed overlay keeps ca.key in the same Secret: never mounted.
    (volume,) = [
        v
        for v in pod["spec"]["volumes"]
        if v.get("secret", {}).get("secretName") == TLS_SECRET
    ]
    assert sorted(i["key"] for i in volume["secret"]["items"]) == [
        "ca.crt",
        "tls.crt",
        "tls.key",
    ]
    assert "--signing-key" not in flags, (
        "set in the ConfigMap, so rotation needs no patch"
    )
    config_name = item["envFrom"][0]["configMapRef"]["name"]
    settings = only(render("base"), "ConfigMap", config_name)["data"]
    keys = settings["WI_SIGNING_KEYS"].split(",")
    assert keys
    assert all(path.startswith(f"{signing_dir}/") for path in keys)


def test_environment_is_documented_and_names_the_namespace() -> None:
    objects = render("base")
    item = webhook_container()
    env = {e["name"]: e for e in item["env"]}
    field = env["WI_WEBHOOK_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.namespace"
    config_name = item["envFrom"][0]["configMapRef"]["name"]
    config = only(objects, "ConfigMap", config_name)
    names = set(env) | set(config["data"])
    assert names <= interface_serve_env(), names - interface_serve_env()
    issuer = urlsplit(config["data"]["WI_ISSUER_URL"])
    assert issuer.scheme == "https"
    assert config["data"]["WI_SIDECAR_MODE"] == "native"
    assert config["data"]["WI_SIDECAR_IMAGE"].startswith("workload-identity-sidecar:")


@pytest.mark.parametrize("kustomization", [*ALL, "examples"])
def test_every_pod_is_hardened(kustomization: str) -> None:
    for obj in render(kustomization):
        for template in pod_templates(obj):
            spec = template["spec"]
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            assert not spec.get("hostNetwork"), where
            assert not spec.get("hostPID"), where
            for item in spec["containers"] + spec.get("initContainers", []):
                context = item["securityContext"]
                assert context["allowPrivilegeEscalation"] is False, where
                assert context["readOnlyRootFilesystem"] is True, where
                assert context["capabilities"]["drop"] == ["ALL"], where
                assert "add" not in context["capabilities"], where
                assert not context.get("privileged"), where
                assert "memory" in item["resources"]["limits"], where
                assert set(item["resources"]["requests"]) >= {"cpu", "memory"}, where


def test_service_exposes_admission_and_metrics() -> None:
    service = only(render("base"), "Service", SERVICE)
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"https": (443, "https"), "metrics": (9090, "metrics")}


def test_network_policy_opens_8443_to_all_and_metrics_to_monitoring_only() -> None:
    policy = only(render("base"), "NetworkPolicy")
    labels = webhook_pod()["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert all(labels[k] == v for k, v in selector.items())
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    by_port = {r["ports"][0]["port"]: r for r in policy["spec"]["ingress"]}
    assert set(by_port) == {8443, 9090}
    assert "from" not in by_port[8443]
    sources = by_port[9090]["from"]
    assert sources
    assert all(
        set(s) == {"namespaceSelector"} and s["namespaceSelector"] for s in sources
    )


def test_webhook_namespace_enforces_restricted_pod_security() -> None:
    namespace = only(render("base"), "Namespace", WEBHOOK_NAMESPACE)
    assert (
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        == "restricted"
    )


def test_priority_class_is_admitted_by_a_quota_in_the_namespace() -> None:
    quota = only(render("base"), "ResourceQuota")
    expression = quota["spec"]["scopeSelector"]["matchExpressions"][0]
    assert expression["scopeName"] == "PriorityClass"
    assert "system-cluster-critical" in expression["values"]
    assert int(quota["spec"]["hard"]["pods"]) >= 2 + 1  # replicas plus surge


def test_jobs_clean_up_after_themselves() -> None:
    for job in of_kind(render("overlays/self-signed"), "Job"):
        assert job["spec"]["ttlSecondsAfterFinished"] > 0
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
