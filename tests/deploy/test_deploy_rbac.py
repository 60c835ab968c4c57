"""RBAC: least privilege, no wildcards, no Secrets for the webhook."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from deploy_support import (
    INSTALLS,
    SIGNING_SECRET,
    TLS_SECRET,
    WEBHOOK_NAMESPACE,
    WEBHOOK_SA,
    Obj,
    of_kind,
    only,
    render,
)

ALL = ("base", *INSTALLS)
ROLE_KINDS = ("Role", "ClusterRole")
# (apiGroup, resource, verb, namespace or None for cluster-wide)
Grant = tuple[str, str, str, str | None]


def rules_bound_to(objects: tuple[Obj, ...], account: str) -> Iterator[tuple[Obj, Obj]]:
    """(role, rule) for every rule the ServiceAccount gets through a binding."""
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        for binding in of_kind(objects, kind):
            if not any(
                s["kind"] == "ServiceAccount"
                and s["name"] == account
                and s["namespace"] == WEBHOOK_NAMESPACE
                for s in binding["subjects"]
            ):
                continue
            ref = binding["roleRef"]
            role = only(objects, ref["kind"], ref["name"])
            yield from ((binding, rule) for rule in role["rules"])


def grants(objects: tuple[Obj, ...], account: str) -> set[Grant]:
    found = set()
    for binding, rule in rules_bound_to(objects, account):
        namespace = binding["metadata"].get("namespace")
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    found.add((group, resource, verb, namespace))
    return found


WEBHOOK_GRANTS: set[Grant] = {
    ("workloadidentity.dev", "workloadidentities", "get", None),
    ("workloadidentity.dev", "workloadidentities", "list", None),
    ("workloadidentity.dev", "workloadidentities", "watch", None),
    ("workloadidentity.dev", "workloadidentities/status", "update", None),
    ("workloadidentity.dev", "workloadidentities/status", "patch", None),
    ("", "namespaces", "get", None),
    ("", "namespaces", "list", None),
    ("", "namespaces", "watch", None),
    ("", "pods", "get", None),
    ("", "pods", "list", None),
    ("", "pods", "watch", None),
    ("apps", "replicasets", "get", None),
    ("authentication.k8s.io", "tokenreviews", "create", None),
    ("events.k8s.io", "events", "create", None),
    ("events.k8s.io", "events", "patch", None),
    ("", "events", "create", None),
    ("", "events", "patch", None),
    ("coordination.k8s.io", "leases", "get", WEBHOOK_NAMESPACE),
    ("coordination.k8s.io", "leases", "create", WEBHOOK_NAMESPACE),
    ("coordination.k8s.io", "leases", "update", WEBHOOK_NAMESPACE),
}


@pytest.mark.parametrize("kustomization", ALL)
def test_the_webhook_gets_exactly_what_it_needs(kustomization: str) -> None:
    assert grants(render(kustomization), WEBHOOK_SA) == WEBHOOK_GRANTS


@pytest.mark.parametrize("kustomization", ALL)
def test_the_webhook_never_reads_secrets(kustomization: str) -> None:
    resources = {g[1] for g in grants(render(kustomization), WEBHOOK_SA)}
    assert "secrets" not in resources


@pytest.mark.parametrize("kustomization", ALL)
def test_no_role_uses_a_wildcard_or_an_escalating_verb(kustomization: str) -> None:
    for kind in ROLE_KINDS:
        for role in of_kind(render(kustomization), kind):
            assert "aggregationRule" not in role
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], f"{role['metadata']['name']}: {rule}"
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
                assert "nonResourceURLs" not in rule


@pytest.mark.parametrize("kustomization", ALL)
def test_bindings_point_at_rendered_roles_and_accounts(kustomization: str) -> None:
    objects = render(kustomization)
    accounts = {
        (o["metadata"]["namespace"], o["metadata"]["name"])
        for o in of_kind(objects, "ServiceAccount")
    }
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        for binding in of_kind(objects, kind):
            only(objects, binding["roleRef"]["kind"], binding["roleRef"]["name"])
            for subject in binding["subjects"]:
                assert subject["kind"] == "ServiceAccount"
                assert (subject["namespace"], subject["name"]) in accounts


@pytest.mark.parametrize("kustomization", INSTALLS)
def test_jobs_touch_only_their_own_secrets_and_webhook(kustomization: str) -> None:
    """The bootstrap accounts may create Secrets (RBAC cannot limit create
    by name) but read and update only the two they manage, in their own
    namespace, and patch only this webhook's configuration."""
    objects = render(kustomization)
    for kind in ROLE_KINDS:
        for role in of_kind(objects, kind):
            for rule in role["rules"]:
                if "secrets" in rule["resources"]:
                    assert kind == "Role"
                    assert role["metadata"]["namespace"] == WEBHOOK_NAMESPACE
                    if set(rule["verbs"]) != {"create"}:
                        assert set(rule["resourceNames"]) <= {
                            TLS_SECRET,
                            SIGNING_SECRET,
                        }
                        assert set(rule["verbs"]) <= {"get", "update"}
                if "mutatingwebhookconfigurations" in rule["resources"]:
                    assert rule["resourceNames"] == ["workload-identity"]
                    assert set(rule["verbs"]) <= {"get", "patch"}
