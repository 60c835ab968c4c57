"""The WorkloadIdentity CRD, and every WorkloadIdentity we ship checked
against it.

kubernetes-validate knows no custom kinds, so WorkloadIdentity objects are
validated here with jsonschema against the CRD's own openAPIV3Schema (unknown
fields rejected, as `kubectl apply --validate=strict` would), and the CEL
rules through Python equivalents that must cover every rule in the CRD.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import pytest
from deploy_support import DEPLOY, Obj, load_documents, of_kind, only, render

CRD_FILE = DEPLOY / "crd" / "workloadidentity.yaml"


def crd() -> Obj:
    return only(load_documents(CRD_FILE), "CustomResourceDefinition")


def version() -> Obj:
    versions = crd()["spec"]["versions"]
    assert [v["name"] for v in versions] == ["v1alpha1"]
    found: Obj = versions[0]
    return found


def schema() -> Obj:
    found: Obj = version()["schema"]["openAPIV3Schema"]
    return found


def walk(node: Obj, path: str = "") -> Iterator[tuple[str, Obj]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


def strict(node: Obj) -> Obj:
    """The schema with unknown fields rejected where the API server would
    prune them."""
    node = copy.deepcopy(node)
    for _, child in walk(node):
        preserves = child.get("x-kubernetes-preserve-unknown-fields", False)
        if child.get("type") == "object" and "properties" in child and not preserves:
            child["additionalProperties"] = False
    return node


# Python equivalents of the CRD's CEL rules, keyed by the rule text.
CEL: dict[str, Callable[[Obj], bool]] = {
    "self.provider != 'aws' || (has(self.aws) && has(self.aws.roleArn))": lambda spec: (
        spec["provider"] != "aws" or "roleArn" in spec.get("aws", {})
    ),
    "self.provider != 'gcp' || (has(self.gcp) && has(self.gcp.projectNumber)"
    " && has(self.gcp.poolId) && has(self.gcp.providerId))": lambda spec: (
        spec["provider"] != "gcp"
        or {"projectNumber", "poolId", "providerId"} <= set(spec.get("gcp", {}))
    ),
}


def problems(obj: Obj) -> list[str]:
    """Every reason the API server would refuse obj: 'path: message'."""
    validator = jsonschema.Draft202012Validator(strict(schema()))
    found = [
        ".".join(str(p) for p in error.absolute_path) + ": " + error.message
        for error in validator.iter_errors(obj)
    ]
    if found:
        return found
    spec_schema = schema()["properties"]["spec"]
    for rule in spec_schema["x-kubernetes-validations"]:
        if not CEL[rule["rule"]](obj["spec"]):
            found.append("spec" + rule.get("fieldPath", "") + ": " + rule["message"])
    return found


def identity(spec: Obj, name: str = "x") -> Obj:
    return {
        "apiVersion": "workloadidentity.dev/v1alpha1",
        "kind": "WorkloadIdentity",
        "metadata": {"name": name},
        "spec": spec,
    }


AWS: Obj = {
    "provider": "aws",
    "aws": {"roleArn": "arn:aws:iam::111122223333:role/s3-reader"},
    "scope": {"projects": {"restrict": True, "names": ["team-a"]}},
}
GCP: Obj = {
    "provider": "gcp",
    "gcp": {"projectNumber": "123456789012", "poolId": "pool", "providerId": "oidc"},
    "scope": {"projects": {"names": ["team-a"]}},
}


def with_(base: Obj, path: str, value: Any) -> Obj:
    """A copy of base with the dotted path set (or removed when value is ...)."""
    spec = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return spec


def test_resource_names_scope_and_version() -> None:
    spec = crd()["spec"]
    assert crd()["metadata"]["name"] == "workloadidentities.workloadidentity.dev"
    assert spec["group"] == "workloadidentity.dev"
    assert spec["scope"] == "Cluster"
    assert spec["names"]["kind"] == "WorkloadIdentity"
    assert spec["names"]["plural"] == "workloadidentities"
    assert spec["names"]["shortNames"] == ["wi"]
    assert version()["served"] is True
    assert version()["storage"] is True
    assert version()["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    columns = {c["name"]: c for c in version()["additionalPrinterColumns"]}
    assert list(columns) == ["Provider", "Projects", "Tags", "Installed", "Age"]
    assert columns["Provider"]["jsonPath"] == ".spec.provider"
    assert columns["Projects"]["jsonPath"] == ".spec.scope.projects.names"
    assert columns["Tags"]["jsonPath"] == ".spec.scope.tags.names"
    assert columns["Installed"]["jsonPath"].startswith(".status.")
    assert columns["Age"]["type"] == "date"


def test_schema_is_structural_and_defaults_are_valid() -> None:
    for path, node in walk(schema()):
        if path.startswith(".metadata."):
            continue
        assert "type" in node, f"{path or '<root>'} has no type"
        if "default" in node:
            jsonschema.validate(node["default"], node)


def test_schema_defaults_match_the_design() -> None:
    props = schema()["properties"]["spec"]["properties"]
    scope = props["scope"]["properties"]
    assert scope["projects"]["properties"]["restrict"]["default"] is True
    assert scope["tags"]["properties"]["restrict"]["default"] is False
    assert scope["tags"]["properties"]["matchAll"]["default"] is False
    assert props["aws"]["properties"]["audience"]["default"] == "sts.amazonaws.com"
    expiration = props["token"]["properties"]["expirationSeconds"]
    assert (expiration["minimum"], expiration["maximum"], expiration["default"]) == (
        10,
        86400,
        3600,
    )
    assert props["permissions"]["properties"]["mode"]["enum"] == ["managed", "existing"]
    assert props["permissions"]["properties"]["policyDocument"][
        "x-kubernetes-preserve-unknown-fields"
    ]
    assert "default" not in props["scope"], "an identity without scope matches no pod"


def test_status_fields() -> None:
    status = schema()["properties"]["status"]["properties"]
    assert status["installed"]["type"] == "boolean"
    assert status["installedGeneration"]["type"] == "integer"
    assert status["installedPermissionsHash"]["type"] == "string"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_every_cel_rule_has_a_python_equivalent_and_names_its_field() -> None:
    rules = schema()["properties"]["spec"]["x-kubernetes-validations"]
    assert {r["rule"] for r in rules} == set(CEL)
    messages = " ".join(r["message"] for r in rules)
    for field in ("spec.aws.roleArn", "spec.gcp.projectNumber", "spec.gcp.poolId"):
        assert field in messages


def test_a_full_identity_from_the_design_is_valid() -> None:
    spec = {
        "description": "Read and write the app bucket",
        "provider": "aws",
        "aws": {
            "roleArn": "arn:aws:iam::111122223333:role/s3-bucket-access",
            "region": "eu-west-1",
            "audience": "sts.amazonaws.com",
        },
        "scope": {
            "projects": {"restrict": True, "names": ["payments"]},
            "tags": {"restrict": False, "names": ["s3"], "matchAll": False},
        },
        "token": {"expirationSeconds": 3600},
        "permissions": {
            "mode": "managed",
            "policyDocument": {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            },
        },
    }
    assert problems(identity(spec)) == []
    assert problems(identity(AWS)) == []
    assert problems(identity(GCP)) == []
    gov = with_(AWS, "aws.roleArn", "arn:aws-us-gov:iam::111122223333:role/x")
    assert problems(identity(gov)) == []


def test_shipped_identities_are_valid() -> None:
    shipped = [
        *load_documents(DEPLOY / "examples" / "identities.yaml"),
        *of_kind(render("overlays/local-example"), "WorkloadIdentity"),
    ]
    assert shipped
    for obj in shipped:
        assert problems(obj) == [], obj["metadata"]["name"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (with_(AWS, "provider", "azure"), "spec.provider"),
        (with_(AWS, "provider", ...), "spec"),
        (
            with_(AWS, "aws.roleArn", "arn:aws:iam::1111:role/short-account"),
            "spec.aws.roleArn",
        ),
        (
            with_(AWS, "aws.roleArn", "arn:aws:iam::111122223333:user/bob"),
            "spec.aws.roleArn",
        ),
        (with_(AWS, "aws", ...), "spec.aws"),
        (with_(AWS, "aws.roleArn", ...), "spec.aws"),
        (with_(AWS, "aws.audience", ""), "spec.aws.audience"),
        (with_(GCP, "gcp.projectNumber", 123456789012), "spec.gcp.projectNumber"),
        (with_(GCP, "gcp.projectNumber", "my-project"), "spec.gcp.projectNumber"),
        (with_(GCP, "gcp.poolId", ...), "spec.gcp"),
        (with_(GCP, "gcp", ...), "spec.gcp"),
        (with_(AWS, "token", {"expirationSeconds": 5}), "spec.token.expirationSeconds"),
        (
            with_(AWS, "token", {"expirationSeconds": 86401}),
            "spec.token.expirationSeconds",
        ),
        (
            with_(AWS, "token", {"expirationSeconds": "3600"}),
            "spec.token.expirationSeconds",
        ),
        (with_(AWS, "scope.projects.restrict", "yes"), "spec.scope.projects.restrict"),
        (with_(AWS, "scope.projects.names", "team-a"), "spec.scope.projects.names"),
        (with_(AWS, "scope.tags", {"matchall": True}), "spec.scope.tags"),
        (with_(AWS, "permissions", {"mode": "auto"}), "spec.permissions.mode"),
        (with_(AWS, "scopes", {}), "spec"),
    ],
)
def test_invalid_identities_are_refused_naming_the_field(spec: Obj, field: str) -> None:
    found = problems(identity(spec))
    assert found, "accepted"
    assert any(p.startswith(f"{field}:") or p.startswith(f"{field}.") for p in found), (
        found
    )
