"""Load the cases in tests/webhook/cases and run admission on them."""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

from webhook.admission import decide, parse_review
from webhook.identities import parse_identities
from webhook.namespaces import NamespaceInfo, namespaces_from_documents
from webhook.scope import IdentityIndex
from webhook.sidecar_spec import SidecarSettings

CASES = Path(__file__).parent / "cases"
TOKEN_DIR = "/var/run/secrets/workloadidentity.dev"


def load_case(case_id: str) -> dict[str, Any]:
    return yaml.safe_load((CASES / f"{case_id}.yaml").read_text())


@dataclass
class Admitted:
    response: dict[str, Any]
    patch: list[dict[str, Any]]
    pod: dict[str, Any]
    review: dict[str, Any]

    @property
    def warnings(self) -> list[str]:
        return list(self.response.get("warnings", []))


class Webhook:
    """The admission decision over one case's identities and namespaces."""

    def __init__(
        self,
        identities: list[dict[str, Any]],
        namespaces: list[dict[str, Any]],
        *,
        webhook_namespace: str = "workload-identity-system",
        settings: SidecarSettings | None = None,
    ) -> None:
        loaded = parse_identities(identities)
        self.errors = loaded.errors
        self.index = IdentityIndex(loaded.identities)
        self.namespaces: dict[str, NamespaceInfo] = namespaces_from_documents(
            namespaces, webhook_namespace=webhook_namespace
        )
        self.settings = settings or SidecarSettings()

    @classmethod
    def for_case(cls, case: dict[str, Any], **kwargs: Any) -> Webhook:
        given = case["given"]
        environment = given.get("environment", {})
        return cls(
            given["identities"],
            given.get("namespaces", []),
            webhook_namespace=environment.get(
                "webhook_namespace", "workload-identity-system"
            ),
            **kwargs,
        )

    def admit(self, review: dict[str, Any]) -> Admitted:
        parsed = parse_review(review)
        answer = decide(
            parsed,
            namespace=self.namespaces.get(parsed.namespace),
            index=self.index,
            settings=self.settings,
        )
        response = json.loads(json.dumps(answer.review))["response"]
        patch: list[dict[str, Any]] = []
        if "patch" in response:
            assert response["patchType"] == "JSONPatch"
            patch = json.loads(base64.b64decode(response["patch"]))
        original = review["request"].get("object") or {}
        # Strict RFC 6902: jsonpatch raises on any op that cannot apply.
        pod = (
            jsonpatch.apply_patch(copy.deepcopy(original), patch)
            if patch
            else copy.deepcopy(original)
        )
        return Admitted(response, patch, pod, review)

    def readmit(
        self, admitted: Admitted, *, uid: str, extra: list[dict[str, Any]] | None = None
    ) -> Admitted:
        """Reinvocation: the mutated pod (plus another webhook's patch) again."""
        pod = jsonpatch.apply_patch(copy.deepcopy(admitted.pod), extra or [])
        review = copy.deepcopy(admitted.review)
        review["request"]["uid"] = uid
        review["request"]["object"] = pod
        return self.admit(review)


def review_for(
    pod: dict[str, Any],
    *,
    uid: str = "uid-1",
    namespace: str | None = None,
    operation: str = "CREATE",
    api_version: str = "admission.k8s.io/v1",
) -> dict[str, Any]:
    namespace = namespace or pod.get("metadata", {}).get("namespace", "default")
    return {
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": operation,
            "dryRun": False,
            "object": pod,
        },
    }


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [c for c in all_containers(pod) if c["name"] == name]
    assert len(matches) == 1, f"expected one container {name}, found {len(matches)}"
    return matches[0]


def env_entries(c: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e for e in c.get("env") or [] if e["name"] == name]


def env_value(c: dict[str, Any], name: str) -> str | None:
    entries = env_entries(c, name)
    assert len(entries) <= 1, f"{c['name']} has {len(entries)} entries {name}"
    return entries[0].get("value") if entries else None


def token_mounts(pod: dict[str, Any], c: dict[str, Any]) -> list[dict[str, Any]]:
    token_volumes = {v["name"] for v in token_volumes_of(pod)}
    return [m for m in c.get("volumeMounts") or [] if m["name"] in token_volumes]


def token_volumes_of(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        v
        for v in pod["spec"].get("volumes", [])
        if (v.get("emptyDir") or {}).get("medium") == "Memory"
        and v["name"].startswith("workload-identity")
    ]


def sidecars(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        c
        for c in all_containers(pod)
        if any(e["name"] == "WI_TOKEN_DIR" for e in c.get("env") or [])
    ]


def assert_no_duplicate_env(pod: dict[str, Any]) -> None:
    for c in all_containers(pod):
        names = [e["name"] for e in c.get("env") or []]
        assert len(names) == len(set(names)), f"{c['name']} has duplicate env {names}"
