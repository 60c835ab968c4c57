"""deploy/examples: the demo's identities, namespace and app, the issuer
Ingress and the sample AdmissionReview."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

from deploy_support import (
    DEPLOY,
    REPO,
    SERVICE,
    WEBHOOK_NAMESPACE,
    load_documents,
    of_kind,
    only,
    render,
    selects,
    the_webhook,
)

EXAMPLES = DEPLOY / "examples"


def test_identities_are_exactly_the_two_demo_identities() -> None:
    """The demo loads this file: its content is part of the contract."""
    documents = load_documents(EXAMPLES / "identities.yaml")
    assert [d["kind"] for d in documents] == ["WorkloadIdentity"] * 2
    by_name = {d["metadata"]["name"]: d["spec"] for d in documents}
    assert set(by_name) == {"demo-s3", "demo-gcs"}

    aws = by_name["demo-s3"]
    assert aws["provider"] == "aws"
    assert aws["aws"] == {
        "roleArn": "arn:aws:iam::123456789012:role/demo-s3",
        "region": "us-east-1",
    }

    gcp = by_name["demo-gcs"]
    assert gcp["provider"] == "gcp"
    assert gcp["gcp"] == {
        "projectNumber": "123456789012",
        "poolId": "demo-pool",
        "providerId": "demo-oidc",
        "serviceAccountEmail": "demo-gcs@demo-project.iam.gserviceaccount.com",
        "projectId": "demo-project",
    }
    for spec in by_name.values():
        assert spec["scope"]["projects"] == {"restrict": True, "names": ["demo"]}
        assert spec["scope"].get("tags", {}).get("restrict", False) is False
        assert spec["token"] == {"expirationSeconds": 20}


def test_the_demo_namespace_is_project_demo_and_reaches_the_webhook() -> None:
    namespace = only(
        load_documents(EXAMPLES / "namespaces.yaml"), "Namespace", "demo-app"
    )
    labels = namespace["metadata"]["labels"]
    assert labels["workloadidentity.dev/project"] == "demo"
    assert selects(the_webhook("base")["namespaceSelector"], labels)


def test_the_demo_app_uses_both_sdks_without_credentials() -> None:
    documents = load_documents(EXAMPLES / "deployment.yaml")
    deployment = only(documents, "Deployment", "reports")
    assert deployment["metadata"]["namespace"] == "demo-app"
    spec = deployment["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "reports"
    account = only(documents, "ServiceAccount", "reports")
    assert account["metadata"]["namespace"] == "demo-app"

    [app] = spec["containers"]
    assert app["name"] == "app"
    command = [*app.get("command", []), *app.get("args", [])]
    assert command[0] in {"python", "python3"}, "`make demo` runs the command locally"
    program = " ".join(command[1:])
    paths = re.findall(r"/app/[\w./-]+", program)
    sources = [(EXAMPLES / "app" / p.removeprefix("/app/")).read_text() for p in paths]
    if command[1] == "-c":
        sources.append(command[2])
    assert sources, "the command names no program"
    for source in sources:
        compile(source, "app", "exec")  # a syntax error would crash-loop the pod
    assert any("import boto3" in source for source in sources)
    assert any("import google.auth" in source for source in sources)
    env = {e["name"] for e in app.get("env", [])}
    assert not {n for n in env if n.startswith(("AWS_", "GOOGLE_"))}, (
        "the webhook sets these"
    )


def test_the_examples_kustomization_holds_the_demo() -> None:
    objects = render("examples")
    assert {o["metadata"]["name"] for o in of_kind(objects, "WorkloadIdentity")} == {
        "demo-s3",
        "demo-gcs",
    }
    only(objects, "Namespace", "demo-app")
    deployment = only(objects, "Deployment", "reports")
    volumes = deployment["spec"]["template"]["spec"].get("volumes", [])
    for volume in volumes:
        if "configMap" in volume:
            config = only(objects, "ConfigMap", volume["configMap"]["name"])
            assert config["metadata"]["namespace"] == "demo-app"


def test_issuer_ingress_publishes_only_the_public_documents() -> None:
    ingress = only(load_documents(EXAMPLES / "issuer-ingress.yaml"), "Ingress")
    assert ingress["metadata"]["namespace"] == WEBHOOK_NAMESPACE
    [rule] = ingress["spec"]["rules"]
    paths = {p["path"]: p for p in rule["http"]["paths"]}
    assert set(paths) == {"/.well-known/openid-configuration", "/openid/v1/jwks"}
    for path in paths.values():
        assert path["pathType"] == "Exact"
        assert path["backend"]["service"] == {
            "name": SERVICE,
            "port": {"name": "https"},
        }

    config = only(render("base"), "ConfigMap")
    issuer = urlsplit(config["data"]["WI_ISSUER_URL"])
    assert rule["host"] == issuer.hostname
    assert issuer.hostname in ingress["spec"]["tls"][0]["hosts"]


def test_sample_admission_review_targets_the_demo_project() -> None:
    review = json.loads((EXAMPLES / "admission-review.json").read_text())
    assert review["apiVersion"] == "admission.k8s.io/v1"
    request = review["request"]
    assert request["operation"] == "CREATE"
    assert request["resource"] == {"group": "", "version": "v1", "resource": "pods"}
    assert request["namespace"] == "demo-app"
    assert request["object"]["kind"] == "Pod"


def test_files_the_makefile_names_exist() -> None:
    makefile = (REPO / "Makefile").read_text()
    for name in re.findall(r"deploy/[\w./-]+", makefile):
        assert (REPO / name).exists(), name
