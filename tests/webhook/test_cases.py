"""The admission cases in tests/webhook/cases, each checked against its `expect`."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.webhook.casefiles import (
    TOKEN_DIR,
    Webhook,
    all_containers,
    assert_no_duplicate_env,
    container,
    env_entries,
    env_value,
    load_case,
    review_for,
    sidecars,
    token_mounts,
    token_volumes_of,
)
from webhook.sidecar_spec import SidecarMode, SidecarSettings

AWS_TOKEN = f"{TOKEN_DIR}/aws-token"
GCP_CONFIG = f"{TOKEN_DIR}/gcp-credentials.json"


def assert_mounted_once(pod: dict[str, Any], name: str) -> None:
    mounts = token_mounts(pod, container(pod, name))
    assert len(mounts) == 1, f"{name}: {mounts}"
    assert mounts[0]["mountPath"].rstrip("/") == TOKEN_DIR
    assert mounts[0].get("readOnly") is True
    assert "subPath" not in mounts[0] and "subPathExpr" not in mounts[0]


def assert_single_sidecar_first(pod: dict[str, Any]) -> None:
    found = sidecars(pod)
    assert len(found) == 1
    assert pod["spec"]["initContainers"][0] is found[0]
    assert found[0]["restartPolicy"] == "Always"
    assert len(token_volumes_of(pod)) == 1


def original_paths(review: dict[str, Any]) -> set[str]:
    pod = review["request"]["object"]
    paths = set()
    for key in ("containers", "initContainers"):
        for i, c in enumerate(pod["spec"].get(key, [])):
            for field in ("env", "volumeMounts"):
                for j, _ in enumerate(c.get(field) or []):
                    paths.add(f"/spec/{key}/{i}/{field}/{j}")
    for j, _ in enumerate(pod["spec"].get("volumes") or []):
        paths.add(f"/spec/volumes/{j}")
    return paths


def assert_user_items_untouched(admitted: Any) -> None:
    existing = original_paths(admitted.review)
    for op in admitted.patch:
        if op["op"] in ("replace", "remove"):
            assert not any(
                op["path"] == p or op["path"].startswith(p + "/") for p in existing
            ), op


def test_case_01_user_set_role_arn_is_kept_and_the_token_still_delivered() -> None:
    case = load_case("case-01")
    admitted = Webhook.for_case(case).admit(case["given"]["admission_review"])
    pod, response = admitted.pod, admitted.response
    assert response["allowed"] is True
    assert response["uid"] == case["given"]["admission_review"]["request"]["uid"]

    app, worker, exporter = (
        container(pod, n) for n in ("app", "worker", "metrics-exporter")
    )
    assert (
        env_value(app, "AWS_ROLE_ARN")
        == "arn:aws:iam::111122223333:role/legacy-reports"
    )
    [worker_arn] = env_entries(worker, "AWS_ROLE_ARN")
    assert worker_arn["valueFrom"]["configMapKeyRef"] == {
        "name": "reports-settings",
        "key": "role-arn",
    }
    assert_user_items_untouched(admitted)
    for name in ("app", "worker", "metrics-exporter"):
        assert (
            env_value(container(pod, name), "AWS_WEB_IDENTITY_TOKEN_FILE") == AWS_TOKEN
        )
        assert_mounted_once(pod, name)
    assert (
        env_value(exporter, "AWS_ROLE_ARN")
        == "arn:aws:iam::111122223333:role/s3-reader"
    )
    assert len(env_entries(exporter, "AWS_ROLE_SESSION_NAME")) == 1
    assert_no_duplicate_env(pod)
    assert env_entries(app, "AWS_REGION") == [
        {"name": "AWS_REGION", "value": "eu-west-1"}
    ]
    assert_single_sidecar_first(pod)
    assert pod["metadata"]["annotations"]["workloadidentity.dev/aws"] == "s3-reader"
    assert "workloadidentity.dev/gcp" not in pod["metadata"]["annotations"]

    warnings = admitted.warnings
    assert any("'app'" in w and "AWS_ROLE_ARN" in w for w in warnings)
    assert any("'worker'" in w and "AWS_ROLE_ARN" in w for w in warnings)
    assert not any("metrics-exporter" in w for w in warnings)


def _case_02_variant(case: dict[str, Any], variant: str) -> dict[str, Any]:
    review = copy.deepcopy(case["given"]["admission_review"])
    details = case["given"][variant]
    review["request"]["uid"] = details["uid"]
    review["request"]["object"]["metadata"]["annotations"] = details["differences"][
        "request.object.metadata.annotations"
    ]
    return review


def test_case_02_user_gcp_credential_is_kept_with_a_warning() -> None:
    case = load_case("case-02")
    webhook = Webhook.for_case(case)
    admitted = webhook.admit(case["given"]["admission_review"])
    pod = admitted.pod
    assert admitted.response["allowed"] is True
    etl, uploader = container(pod, "etl"), container(pod, "uploader")
    assert (
        env_value(etl, "GOOGLE_APPLICATION_CREDENTIALS") == "/secrets/gcp/sa-key.json"
    )
    assert_user_items_untouched(admitted)
    original_etl = case["given"]["admission_review"]["request"]["object"]["spec"][
        "containers"
    ][0]
    assert etl["volumeMounts"][:2] == original_etl["volumeMounts"]
    assert pod["spec"]["volumes"][0] == {
        "name": "etl-sa-key",
        "secret": {"secretName": "etl-sa-key", "defaultMode": 420},
    }
    assert env_value(etl, "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE") in (
        None,
        GCP_CONFIG,
    )
    assert env_value(uploader, "GOOGLE_APPLICATION_CREDENTIALS") == GCP_CONFIG
    assert env_value(uploader, "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE") == GCP_CONFIG
    assert_mounted_once(pod, "uploader")
    assert_single_sidecar_first(pod)
    assert pod["metadata"]["annotations"]["workloadidentity.dev/gcp"] == "bq-loader"
    assert any(
        "'etl'" in w and "GOOGLE_APPLICATION_CREDENTIALS" in w
        for w in admitted.warnings
    )
    assert not any("uploader" in w for w in admitted.warnings)

    skipped = webhook.admit(_case_02_variant(case, "variant_skip_container"))
    assert container(skipped.pod, "etl") == original_etl
    assert container(skipped.pod, "uploader") == uploader

    opted_out = webhook.admit(_case_02_variant(case, "variant_opt_out"))
    assert opted_out.response == {
        "uid": "9e0c7b44-1b7e-4c1d-9d51-000000000203",
        "allowed": True,
    }


def test_case_03_init_containers_get_credentials_after_the_sidecar() -> None:
    case = load_case("case-03")
    admitted = Webhook.for_case(case).admit(case["given"]["admission_review"])
    pod = admitted.pod
    for name in ("fetch-model", "warm-cache", "predictor", "queue-proxy"):
        c = container(pod, name)
        assert (
            env_value(c, "AWS_ROLE_ARN")
            == "arn:aws:iam::111122223333:role/model-store-reader"
        )
        assert env_value(c, "AWS_WEB_IDENTITY_TOKEN_FILE") == AWS_TOKEN
        assert_mounted_once(pod, name)
    assert_single_sidecar_first(pod)
    assert [c["name"] for c in pod["spec"]["initContainers"][1:]] == [
        "fetch-model",
        "warm-cache",
    ]
    probe = pod["spec"]["initContainers"][0]["startupProbe"]
    assert probe["httpGet"]["path"] == "/readyz"


def test_case_03_project_comes_from_the_namespace_label_not_its_name() -> None:
    case = load_case("case-03")
    given = case["given"]
    unlabelled = copy.deepcopy(given["namespaces"])
    del unlabelled[0]["metadata"]["labels"]["workloadidentity.dev/project"]
    assert (
        "patch"
        not in Webhook(given["identities"], unlabelled)
        .admit(given["admission_review"])
        .response
    )
    by_name = copy.deepcopy(given["identities"])
    by_name[0]["spec"]["scope"]["projects"]["names"] = ["ml-serving"]
    assert (
        "patch"
        not in Webhook(by_name, given["namespaces"])
        .admit(given["admission_review"])
        .response
    )


def test_case_05_dry_run_gets_the_same_patch() -> None:
    case = load_case("case-05")
    webhook = Webhook.for_case(case)
    dry = copy.deepcopy(case["given"]["admission_review"])
    dry["request"]["dryRun"] = True
    real = copy.deepcopy(dry)
    real["request"]["dryRun"] = False
    real["request"]["uid"] = "another-uid"
    a, b = webhook.admit(dry), webhook.admit(real)
    assert a.response["allowed"] is True and a.response["uid"] == dry["request"]["uid"]
    assert json.dumps(a.patch, sort_keys=True) == json.dumps(b.patch, sort_keys=True)
    assert a.patch


def test_case_06_reinvocation_injects_containers_added_later_and_nothing_twice() -> (
    None
):
    case = load_case("case-06")
    webhook = Webhook.for_case(case)
    first = webhook.admit(case["given"]["round_1"]["admission_review"])
    second = webhook.readmit(
        first,
        uid=case["given"]["round_2"]["uid"],
        extra=case["given"]["other_webhook_patch_after_round_1"],
    )
    assert second.response["allowed"] is True
    assert second.response["uid"] == case["given"]["round_2"]["uid"]
    pod = second.pod
    for name in ("app", "log-shipper", "shipper-config"):
        c = container(pod, name)
        assert (
            env_value(c, "AWS_ROLE_ARN")
            == "arn:aws:iam::111122223333:role/events-writer"
        )
        assert env_value(c, "AWS_WEB_IDENTITY_TOKEN_FILE") == AWS_TOKEN
        assert len(env_entries(c, "AWS_ROLE_SESSION_NAME")) == 1
        assert_mounted_once(pod, name)
    assert not any(op["path"].startswith("/spec/containers/0/") for op in second.patch)
    assert_single_sidecar_first(pod)
    names = [c["name"] for c in all_containers(pod)]
    assert len(names) == len(set(names))
    volumes = [v["name"] for v in pod["spec"]["volumes"]]
    assert len(volumes) == len(set(volumes))
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app", "log-shipper"]
    third = webhook.readmit(second, uid=case["given"]["round_3"]["uid"])
    assert third.patch == []


@pytest.mark.parametrize("variant", ["a", "b"])
def test_case_08_changed_tags_switch_or_drop_the_identity(variant: str) -> None:
    case = load_case("case-08")
    webhook = Webhook.for_case(case)
    first = webhook.admit(case["given"]["round_1"]["admission_review"])
    importer = container(first.pod, "importer")
    assert (
        env_value(importer, "AWS_ROLE_ARN")
        == "arn:aws:iam::111122223333:role/batch-writer"
    )
    assert (
        first.pod["metadata"]["annotations"]["workloadidentity.dev/aws"]
        == "batch-writer"
    )
    other = case["given"][f"other_webhook_patch_after_round_1_variant_{variant}"]
    second = webhook.readmit(first, uid="round-2", extra=other)
    assert second.response["allowed"] is True and second.response["uid"] == "round-2"
    pod = second.pod
    assert "batch-writer" not in json.dumps(pod)
    original = case["given"]["round_1"]["admission_review"]["request"]["object"]
    user_region = env_entries(container(original, "importer"), "AWS_REGION")
    assert env_entries(container(pod, "importer"), "AWS_REGION") == user_region
    assert pod["metadata"]["labels"] == original["metadata"]["labels"]
    for op in second.patch:
        assert "tags" not in op["path"] and "/labels" not in op["path"]
    if variant == "a":
        assert (
            env_value(container(pod, "importer"), "AWS_ROLE_ARN")
            == "arn:aws:iam::111122223333:role/readonly"
        )
        assert pod["metadata"]["annotations"]["workloadidentity.dev/aws"] == "readonly"
        assert_single_sidecar_first(pod)
    else:
        assert sidecars(pod) == []
        assert token_volumes_of(pod) == []
        assert not any(
            v["name"].startswith("workload-identity")
            for v in pod["spec"].get("volumes", [])
        )
        for c in all_containers(pod):
            assert not any(
                m["mountPath"].rstrip("/") == TOKEN_DIR
                for m in c.get("volumeMounts") or []
            )
            assert env_value(c, "AWS_WEB_IDENTITY_TOKEN_FILE") is None
        assert "workloadidentity.dev/aws" not in pod["metadata"].get("annotations", {})
    assert webhook.readmit(second, uid="round-3").patch == []


def test_case_10_the_patch_leaves_security_contexts_alone_and_the_sidecar_is_restricted() -> (
    None
):
    case = load_case("case-10")
    admitted = Webhook.for_case(case).admit(case["given"]["admission_review"])
    original = case["given"]["admission_review"]["request"]["object"]
    assert admitted.pod["spec"].get("securityContext") == original["spec"].get(
        "securityContext"
    )
    for c in original["spec"]["containers"]:
        assert container(admitted.pod, c["name"]).get("securityContext") == c.get(
            "securityContext"
        )
    [sidecar] = sidecars(admitted.pod)
    context = sidecar["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("mode", [SidecarMode.NATIVE, SidecarMode.LEGACY])
def test_case_13_job_pods_never_get_a_long_running_regular_container(
    mode: SidecarMode,
) -> None:
    case = load_case("case-13")
    webhook = Webhook.for_case(case, settings=SidecarSettings(mode=mode))
    admitted = webhook.admit(case["given"]["admission_review"])
    pod = admitted.pod
    assert [c["name"] for c in pod["spec"]["containers"]] == ["migrate"]
    init = pod["spec"]["initContainers"][0]
    if mode is SidecarMode.NATIVE:
        assert init["restartPolicy"] == "Always"
    else:
        assert "restartPolicy" not in init
        assert {"name": "WI_ONESHOT", "value": "true"} in init["env"]


def test_legacy_mode_adds_an_ordinary_sidecar_for_long_running_pods() -> None:
    case = load_case("case-01")
    webhook = Webhook.for_case(case, settings=SidecarSettings(mode=SidecarMode.LEGACY))
    admitted = webhook.admit(case["given"]["admission_review"])
    pod = admitted.pod
    assert pod["spec"]["initContainers"][0]["name"] == "workload-identity-init"
    assert pod["spec"]["containers"][-1]["name"] == "workload-identity"
    assert "restartPolicy" not in pod["spec"]["containers"][-1]
    assert webhook.readmit(admitted, uid="again").patch == []


def test_case_14_startup_probe_holds_the_app_until_the_tokens_are_valid() -> None:
    case = load_case("case-14")
    admitted = Webhook.for_case(case).admit(case["given"]["admission_review"])
    sidecar = admitted.pod["spec"]["initContainers"][0]
    assert sidecar["restartPolicy"] == "Always"
    probe = sidecar["startupProbe"]
    assert probe["httpGet"] == {"path": "/readyz", "port": 15090, "scheme": "HTTP"}
    # 120 one-second checks: the kubelet waits up to two minutes for a signer.
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 60


def test_case_15_the_token_is_mounted_as_a_directory_and_token_path_is_ignored() -> (
    None
):
    case = load_case("case-15")
    admitted = Webhook.for_case(case).admit(case["given"]["admission_review"])
    assert admitted.response["allowed"] is True
    for c in all_containers(admitted.pod):
        for mount in c.get("volumeMounts") or []:
            assert "subPath" not in mount and "subPathExpr" not in mount
    assert (
        env_value(container(admitted.pod, "legacy-sync"), "AWS_WEB_IDENTITY_TOKEN_FILE")
        == AWS_TOKEN
    )
    assert_mounted_once(admitted.pod, "legacy-sync")
    assert any(
        "workloadidentity.dev/token-path" in w and "ignored" in w
        for w in admitted.warnings
    )


def test_case_19_update_and_ephemeral_containers_are_never_mutated() -> None:
    case = load_case("case-19")
    webhook = Webhook.for_case(case)
    review = case["given"]["admission_review"]
    admitted = webhook.admit(review)
    assert admitted.response == {"uid": review["request"]["uid"], "allowed": True}
    injected = webhook.admit(review_for(review["request"]["object"] | {}, uid="create"))
    update = copy.deepcopy(review)
    update["request"]["object"] = injected.pod
    assert webhook.admit(update).response == {
        "uid": review["request"]["uid"],
        "allowed": True,
    }
    debug = copy.deepcopy(update)
    debug["request"]["subResource"] = "ephemeralcontainers"
    debug["request"]["object"]["spec"]["ephemeralContainers"] = [
        {"name": "debugger-x7k", "image": "busybox"}
    ]
    assert webhook.admit(debug).response == {
        "uid": review["request"]["uid"],
        "allowed": True,
    }
    for operation in ("DELETE", "CONNECT"):
        other = copy.deepcopy(review)
        other["request"]["operation"] = operation
        assert "patch" not in webhook.admit(other).response


@pytest.mark.parametrize("variant", ["main", "mislabelled"])
def test_case_20_system_and_webhook_namespaces_are_never_injected(variant: str) -> None:
    case = load_case("case-20")
    given = case["given"]
    namespaces = (
        given["namespaces"]
        if variant == "main"
        else given["variant_mislabelled_namespaces"]["namespaces"]
    )
    webhook = Webhook(
        given["identities"], namespaces, webhook_namespace="workload-identity-system"
    )
    for request in given["requests"]:
        review = review_for(
            request["object"], uid=request["uid"], namespace=request["namespace"]
        )
        admitted = webhook.admit(review)
        assert (
            admitted.response["allowed"] is True
            and admitted.response["uid"] == request["uid"]
        )
        if request["namespace"] == "team-a":
            assert (
                env_value(admitted.pod["spec"]["containers"][0], "AWS_ROLE_ARN")
                == "arn:aws:iam::111122223333:role/platform-wide"
            )
            assert (
                admitted.pod["metadata"]["annotations"]["workloadidentity.dev/aws"]
                == "platform-wide"
            )
        else:
            assert "patch" not in admitted.response


def _case_25_review(
    case: dict[str, Any], annotations: dict[str, str], uid: str
) -> dict[str, Any]:
    review = copy.deepcopy(case["given"]["admission_review_template"])
    review["request"]["uid"] = uid
    review["request"]["object"]["metadata"]["annotations"] = dict(annotations)
    return review


@pytest.mark.parametrize("reverse", [False, True])
def test_case_25_first_name_wins_per_provider_whatever_the_load_order(
    reverse: bool,
) -> None:
    case = load_case("case-25")
    identities = (
        case["given"]["identities"][::-1] if reverse else case["given"]["identities"]
    )
    webhook = Webhook(identities, case["given"]["namespaces"])
    expected = {
        "web-eu": ("alpha-reader", "gcp-storage-a"),
        "web-only": ("alpha-reader-2", "gcp-storage-a"),
        "untagged": ("zeta-writer", "gcp-storage-b"),
    }
    for pod in case["given"]["pods"]:
        admitted = webhook.admit(
            _case_25_review(case, pod["annotations"], pod["label"])
        )
        aws, gcp = expected[pod["label"]]
        annotations = admitted.pod["metadata"]["annotations"]
        assert (
            annotations["workloadidentity.dev/aws"],
            annotations["workloadidentity.dev/gcp"],
        ) == (aws, gcp)
        web = container(admitted.pod, "web")
        assert env_value(web, "AWS_ROLE_ARN") == f"arn:aws:iam::111122223333:role/{aws}"
        for name in (
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE",
        ):
            assert len(env_entries(web, name)) == 1
        assert len(sidecars(admitted.pod)) == 1
        sidecar_env = {
            e["name"]: e.get("value") for e in sidecars(admitted.pod)[0]["env"]
        }
        if gcp == "gcp-storage-a":
            assert (
                sidecar_env["WI_GCP_SERVICE_ACCOUNT"]
                == "storage-a@project-a.iam.gserviceaccount.com"
            )


def test_case_26_enabled_tag_restriction_with_no_tags_matches_nothing() -> None:
    case = load_case("case-26")
    webhook = Webhook.for_case(case)
    assert webhook.errors == ()
    for pod in case["given"]["pods"]:
        admitted = webhook.admit(
            _case_25_review(case, pod["annotations"], pod["label"])
        )
        etl = container(admitted.pod, "etl")
        assert env_value(etl, "AWS_ROLE_ARN") is None
        assert "workloadidentity.dev/aws" not in admitted.pod["metadata"]["annotations"]
        assert env_value(etl, "GOOGLE_APPLICATION_CREDENTIALS") == GCP_CONFIG
        assert (
            admitted.pod["metadata"]["annotations"]["workloadidentity.dev/gcp"]
            == "tags-off"
        )


def test_case_27_identities_without_project_names_serve_no_namespace_even_new_ones() -> (
    None
):
    case = load_case("case-27")
    given = case["given"]
    webhook = Webhook(
        given["identities"], given["namespaces"] + given["namespaces_created_later"]
    )
    for namespace in ("team-a", "team-b", "team-new"):
        review = copy.deepcopy(given["admission_review_template"])
        review["request"]["namespace"] = namespace
        review["request"]["uid"] = f"uid-{namespace}"
        review["request"]["object"]["metadata"]["namespace"] = namespace
        admitted = webhook.admit(review)
        assert admitted.response == {"uid": f"uid-{namespace}", "allowed": True}


def test_case_29_half_configured_gcp_identity_is_rejected_and_the_other_still_works() -> (
    None
):
    case = load_case("case-29")
    webhook = Webhook.for_case(case)
    [error] = webhook.errors
    assert "half-configured" in str(error) and "spec.gcp.providerId" in str(error)
    admitted = webhook.admit(case["given"]["admission_review"])
    uploader = container(admitted.pod, "uploader")
    assert env_value(uploader, "GOOGLE_APPLICATION_CREDENTIALS") == GCP_CONFIG
    assert env_value(uploader, "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE") == GCP_CONFIG
    env = {e["name"]: e.get("value") for e in sidecars(admitted.pod)[0]["env"]}
    assert (
        env["WI_GCP_AUDIENCE"]
        == "//iam.googleapis.com/projects/111122223333/locations/global/workloadIdentityPools/k8s-pool/providers/k8s-oidc"
    )
    assert (
        env["WI_GCP_SERVICE_ACCOUNT"] == "bq-reader@project-a.iam.gserviceaccount.com"
    )


def test_case_21_an_80_container_pod_gets_a_small_narrow_patch() -> None:
    from tests.webhook.large_pods import large_pod

    case = load_case("case-21")
    webhook = Webhook.for_case(case)
    pod = large_pod()
    review = review_for(pod, uid="large")
    assert len(json.dumps(review)) > 300 * 1024
    admitted = webhook.admit(review)
    assert admitted.response["allowed"] is True
    assert len(admitted.patch) <= 6 * 80 + 10
    for op in admitted.patch:
        assert (
            op["path"] not in ("/spec/containers", "/spec/initContainers")
            or op["op"] == "add"
        )
        assert not (
            op["op"] == "replace"
            and op["path"] in ("/spec/containers", "/spec/initContainers")
        )
    assert len(json.dumps(admitted.patch)) < 256 * 1024
    assert len(json.dumps(admitted.pod)) < 1024 * 1024
    user = [
        c
        for c in all_containers(admitted.pod)
        if c["name"].startswith(("init-", "step-"))
    ]
    assert len(user) == 80
    for c in user:
        for name in (
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_ROLE_SESSION_NAME",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE",
        ):
            assert len(env_entries(c, name)) == 1, (c["name"], name)
        assert len(token_mounts(admitted.pod, c)) == 1
    assert len(sidecars(admitted.pod)) == 1
    annotations = admitted.pod["metadata"]["annotations"]
    assert annotations["workloadidentity.dev/aws"] == "ci-cache"
    assert annotations["workloadidentity.dev/gcp"] == "ci-artifacts"


def test_tags_no_identity_of_the_project_uses_draw_a_warning() -> None:
    case = load_case("case-25")
    webhook = Webhook.for_case(case)
    admitted = webhook.admit(
        _case_25_review(case, {"workloadidentity.dev/tags": "web, wbe"}, "typo")
    )
    [warning] = [w for w in admitted.warnings if "used by no WorkloadIdentity" in w]
    assert "wbe" in warning
    assert "'web'" not in warning
    clean = webhook.admit(
        _case_25_review(case, {"workloadidentity.dev/tags": "web,eu"}, "ok")
    )
    assert clean.warnings == []


def test_a_misspelt_annotation_key_draws_a_warning() -> None:
    case = load_case("case-25")
    admitted = Webhook.for_case(case).admit(
        _case_25_review(case, {"workloadidentity.dev/tag": "web"}, "typo")
    )
    assert any(
        "workloadidentity.dev/tag " in w and "ignored" in w for w in admitted.warnings
    )


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            lambda r: (
                r["request"]["object"]["metadata"]
                .setdefault("annotations", {})
                .update({"kubernetes.io/config.mirror": "abc"})
            ),
            "mirror pod",
        ),
        (
            lambda r: r["request"].update({"namespace": "unlabelled"}),
            "namespace without a project",
        ),
        (
            lambda r: r["request"].update(
                {"kind": {"group": "apps", "version": "v1", "kind": "Deployment"}}
            ),
            "another kind",
        ),
        (lambda r: r["request"].update({"operation": "UPDATE"}), "UPDATE"),
        (
            lambda r: r["request"].update({"operation": "DELETE", "object": None}),
            "DELETE",
        ),
        (lambda r: r["request"].update({"operation": "CONNECT"}), "CONNECT"),
    ],
)
def test_requests_the_webhook_must_not_mutate_are_allowed_untouched(
    change: Any, why: str
) -> None:
    case = load_case("case-01")
    review = copy.deepcopy(case["given"]["admission_review"])
    change(review)
    admitted = Webhook.for_case(case).admit(review)
    assert admitted.response == {"uid": review["request"]["uid"], "allowed": True}, why
