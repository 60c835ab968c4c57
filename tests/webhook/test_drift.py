"""Drift decisions as pure functions: a pod and the rules in, what it holds
against what it should hold out. No API server involved."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from tests.webhook.cluster_support import aws_identity
from webhook.drift import (
    Assessment,
    Drift,
    DriftKind,
    assess,
    drift_counts,
    survey,
    token_note,
)
from webhook.drift_events import Finding, drift_event, notice_message, notice_of
from webhook.identities import Provider, parse_identity
from webhook.namespaces import NamespaceInfo, describe_namespace
from webhook.owners import Workload, advice, deployment_by_name, workload_of
from webhook.pods import OwnerRef, PodRecord, pod_record, pods_from_documents, trim_pod
from webhook.scope import IdentityIndex

WEBHOOK_NAMESPACE = "workload-identity-system"


def identities(*documents: dict[str, Any]) -> IdentityIndex:
    return IdentityIndex(parse_identity(d) for d in documents)


def gcp_identity(name: str, *, projects: Sequence[str] = ("team-a",)) -> dict[str, Any]:
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
            },
            "scope": {"projects": {"restrict": True, "names": list(projects)}},
        },
    }


def project(name: str = "team-a", label: str | None = "team-a") -> NamespaceInfo:
    labels = {"workloadidentity.dev/project": label} if label else None
    return describe_namespace(name, labels, webhook_namespace=WEBHOOK_NAMESPACE)


def pod(
    name: str = "app-1",
    *,
    namespace: str = "team-a",
    annotations: Mapping[str, str] | None = None,
    **fields: Any,
) -> PodRecord:
    return PodRecord(
        namespace=namespace,
        name=name,
        uid=f"uid-{name}",
        annotations=dict(annotations or {}),
        **fields,
    )


def holding(
    aws: str | None = None, gcp: str | None = None, **more: str
) -> dict[str, str]:
    found = dict(more)
    if aws:
        found["workloadidentity.dev/aws"] = aws
    if gcp:
        found["workloadidentity.dev/gcp"] = gcp
    return found


def only_drift(assessment: Assessment) -> Drift:
    assert len(assessment.drifts) == 1, assessment.drifts
    return assessment.drifts[0]


# --- the three kinds ---------------------------------------------------------


def test_a_pod_that_holds_what_the_rules_give_it_has_no_drift() -> None:
    found = assess(
        pod(annotations=holding("s3-reader")),
        project(),
        identities(aws_identity("s3-reader")),
    )
    assert found.drifts == ()
    assert found.holds == found.expected == {Provider.AWS: "s3-reader"}


def test_a_pod_without_the_identity_its_scope_gives_is_missing_it() -> None:
    found = assess(pod(), project(), identities(aws_identity("s3-reader")))
    drift = only_drift(found)
    assert (drift.kind, drift.provider, drift.identity) == (
        DriftKind.MISSING,
        Provider.AWS,
        "s3-reader",
    )
    assert drift.held is None and drift.expected == "s3-reader"
    assert "created while the webhook was unavailable" in drift.reason


def test_a_pod_outside_a_narrowed_scope_holds_a_stale_identity_and_says_why() -> None:
    rules = identities(aws_identity("s3-reader", projects=["elsewhere"]))
    drift = only_drift(assess(pod(annotations=holding("s3-reader")), project(), rules))
    assert (drift.kind, drift.identity, drift.expected) == (
        DriftKind.STALE,
        "s3-reader",
        None,
    )
    assert (
        "project 'team-a' is not in the project restriction ['elsewhere']"
        in drift.reason
    )
    assert drift.token_lifetime == 3600


def test_a_pod_whose_rules_now_choose_another_identity_is_stale() -> None:
    rules = identities(aws_identity("s3-reader"), aws_identity("a-first"))
    drift = only_drift(assess(pod(annotations=holding("s3-reader")), project(), rules))
    assert (drift.kind, drift.identity, drift.expected) == (
        DriftKind.STALE,
        "s3-reader",
        "a-first",
    )
    assert "s3-reader still matches, but a-first sorts first and wins" in drift.reason


def test_a_pod_holding_a_deleted_identity_is_orphaned_and_the_new_choice_is_named() -> (
    None
):
    rules = identities(aws_identity("a-first"))
    drift = only_drift(assess(pod(annotations=holding("s3-reader")), project(), rules))
    assert (drift.kind, drift.identity, drift.expected) == (
        DriftKind.ORPHANED,
        "s3-reader",
        "a-first",
    )
    assert "no longer exists" in drift.reason
    assert drift.token_lifetime is None


def test_an_identity_that_turned_invalid_orphans_its_pods_with_that_cause() -> None:
    drift = only_drift(
        assess(
            pod(annotations=holding("s3-reader")),
            project(),
            identities(),
            invalid={"s3-reader"},
        )
    )
    assert drift.kind is DriftKind.ORPHANED
    assert "is invalid, so it serves no pod" in drift.reason


def test_an_orphaned_identity_keeps_the_lifetime_remembered_for_it() -> None:
    drift = only_drift(
        assess(
            pod(annotations=holding("s3-reader")),
            project(),
            identities(),
            lifetimes={"s3-reader": 900},
        )
    )
    assert drift.token_lifetime == 900


def test_each_provider_drifts_on_its_own() -> None:
    rules = identities(aws_identity("s3-reader"), gcp_identity("gcs-writer"))
    found = assess(pod(annotations=holding(gcp="gone")), project(), rules)
    assert {(d.provider, d.kind, d.identity) for d in found.drifts} == {
        (Provider.AWS, DriftKind.MISSING, "s3-reader"),
        (Provider.GCP, DriftKind.ORPHANED, "gone"),
    }


def test_an_identity_recorded_under_the_wrong_provider_is_stale() -> None:
    rules = identities(gcp_identity("gcs-writer"))
    found = assess(pod(annotations=holding(aws="gcs-writer")), project(), rules)
    aws = next(d for d in found.drifts if d.provider is Provider.AWS)
    assert aws.kind is DriftKind.STALE
    assert "gcs-writer is a gcp identity" in aws.reason


def test_live_tags_decide_as_they_do_for_token_refreshes() -> None:
    rules = identities(aws_identity("s3-reader", tags=["s3"]))
    tagged = holding("s3-reader", **{"workloadidentity.dev/tags": "s3, other"})
    assert assess(pod(annotations=tagged), project(), rules).drifts == ()
    untagged = holding("s3-reader", **{"workloadidentity.dev/tags": "other"})
    assert (
        only_drift(assess(pod(annotations=untagged), project(), rules)).kind
        is DriftKind.STALE
    )


# --- not eligible, not drift -------------------------------------------------


@pytest.mark.parametrize(
    ("record", "namespace", "reason"),
    [
        (
            pod(annotations={"workloadidentity.dev/inject": "false"}),
            project(),
            "opts out",
        ),
        (
            pod(annotations={"kubernetes.io/config.mirror": "x"}),
            project(),
            "static (mirror) pod",
        ),
        (pod(windows=True), project(), "Windows pod"),
        (pod(), project(label=None), "no workloadidentity.dev/project label"),
        (pod(), None, "no workloadidentity.dev/project label"),
        (pod(namespace="kube-system"), project("kube-system"), "system namespace"),
        (
            pod(namespace=WEBHOOK_NAMESPACE),
            project(WEBHOOK_NAMESPACE),
            "webhook's own namespace",
        ),
        (pod(terminating=True), project(), "being deleted"),
    ],
)
def test_a_pod_the_webhook_would_not_serve_is_not_eligible_and_not_drift(
    record: PodRecord, namespace: NamespaceInfo | None, reason: str
) -> None:
    found = assess(
        record,
        namespace,
        identities(
            aws_identity(
                "s3-reader", projects=["team-a", "kube-system", WEBHOOK_NAMESPACE]
            )
        ),
    )
    assert found.drifts == ()
    assert found.expected == {}
    assert reason in found.ineligible


def test_a_pod_that_opted_out_but_still_holds_an_identity_is_stale() -> None:
    annotations = holding("s3-reader", **{"workloadidentity.dev/inject": "false"})
    drift = only_drift(
        assess(
            pod(annotations=annotations),
            project(),
            identities(aws_identity("s3-reader")),
        )
    )
    assert drift.kind is DriftKind.STALE
    assert "opts out" in drift.reason


def test_a_pod_holding_an_identity_in_a_namespace_that_left_its_project_is_stale() -> (
    None
):
    drift = only_drift(
        assess(
            pod(annotations=holding("s3-reader")),
            project(label=None),
            identities(aws_identity("s3-reader")),
        )
    )
    assert drift.kind is DriftKind.STALE


def test_finished_pods_are_left_out_of_the_survey() -> None:
    rules = identities(aws_identity("s3-reader"))
    found = survey(
        [pod("done", finished=True), pod("running")], {"team-a": project()}, rules
    )
    assert [a.pod.name for a in found] == ["running"]


def test_counts_are_pods_per_kind_and_identity() -> None:
    rules = identities(
        aws_identity("s3-reader"), aws_identity("a-first", projects=["team-b"])
    )
    pods = [
        pod("a"),
        pod("b"),
        pod("c", annotations=holding("a-first")),
        pod("d", annotations=holding("gone")),
        pod("e", annotations=holding("s3-reader")),
    ]
    assessed = survey(pods, {"team-a": project()}, rules)
    assert drift_counts(assessed) == {
        (DriftKind.MISSING, "s3-reader"): 2,
        (DriftKind.STALE, "a-first"): 1,
        (DriftKind.ORPHANED, "gone"): 1,
    }


# --- tokens meanwhile --------------------------------------------------------


def test_the_token_note_depends_on_the_pods_signing_mode() -> None:
    stale = Drift(
        DriftKind.STALE, Provider.AWS, "s3-reader", "s3-reader", None, "x", 3600
    )
    issuer = token_note(stale, "issuer")
    assert issuer.startswith("/token refuses it a new token at its next refresh")
    assert "within 3600 s" in issuer
    assert "key mode" in token_note(stale, "key")
    assert token_note(stale, "").startswith("in issuer mode, ")
    missing = Drift(DriftKind.MISSING, Provider.AWS, "s3-reader", None, "s3-reader")
    assert token_note(missing, "issuer") == ""


# --- pods and their workloads ------------------------------------------------


def full_pod(**metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "api-7d9f-x2k",
            "namespace": "team-a",
            "uid": "u1",
            "resourceVersion": "9",
            "labels": {"app": "api", "pod-template-hash": "7d9f"},
            "annotations": {
                "workloadidentity.dev/aws": "s3-reader",
                "kubectl.kubernetes.io/last-applied-configuration": "{...}",
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "api-7d9f",
                    "uid": "rs",
                    "controller": True,
                }
            ],
            **metadata,
        },
        "spec": {
            "nodeSelector": {"kubernetes.io/os": "windows", "disk": "ssd"},
            "initContainers": [
                {
                    "name": "workload-identity",
                    "env": [
                        {"name": "WI_MODE", "value": "issuer"},
                        {
                            "name": "WI_TOKEN_DIR",
                            "value": "/var/run/secrets/workloadidentity.dev",
                        },
                    ],
                }
            ],
            "containers": [
                {"name": "app", "env": [{"name": "WI_MODE", "value": "key"}]}
            ],
        },
        "status": {"phase": "Running", "podIP": "10.0.0.1"},
    }


def test_a_trimmed_pod_reads_exactly_as_the_full_one() -> None:
    full = full_pod(deletionTimestamp="2026-01-01T00:00:00Z")
    trimmed = trim_pod(full)
    assert pod_record(trimmed) == pod_record(full)
    assert trimmed["metadata"]["resourceVersion"] == "9"
    assert set(trimmed["metadata"]) == {"namespace", "name", "resourceVersion"}


def test_the_pod_record_keeps_what_the_report_reads() -> None:
    record = pod_record(full_pod())
    assert record is not None
    assert record.annotations == {"workloadidentity.dev/aws": "s3-reader"}
    assert record.owner == OwnerRef("ReplicaSet", "api-7d9f", "rs", "apps/v1")
    assert record.windows and not record.terminating and not record.finished
    assert record.signing_mode == "issuer"  # the sidecar's, not the app's


def test_pods_are_read_from_lists_and_documents_alike() -> None:
    listed = {"apiVersion": "v1", "kind": "List", "items": [full_pod()]}
    other = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}
    assert [p.name for p in pods_from_documents([listed, other, None])] == [
        "api-7d9f-x2k"
    ]


def test_a_deployment_is_found_through_its_replica_set_or_the_template_hash() -> None:
    record = pod_record(full_pod())
    assert record is not None
    read = OwnerRef("Deployment", "api", "dep-uid", "apps/v1")
    assert workload_of(record, read) == Workload(
        "Deployment", "api", "team-a", "dep-uid", "apps/v1"
    )
    assert deployment_by_name(record) == Workload(
        "Deployment", "api", "team-a", "", "apps/v1"
    )
    assert workload_of(record) == Workload("Deployment", "api", "team-a", "", "apps/v1")


def test_a_bare_replica_set_a_controller_and_a_lone_pod_are_their_own_workloads() -> (
    None
):
    bare = pod(owner=OwnerRef("ReplicaSet", "frontend", "rs1"))
    assert str(workload_of(bare)) == "ReplicaSet/frontend"
    job = pod(owner=OwnerRef("Job", "migrate", "j1", "batch/v1"))
    assert workload_of(job) == Workload("Job", "migrate", "team-a", "j1", "batch/v1")
    assert workload_of(pod("lonely")) == Workload(
        "Pod", "lonely", "team-a", "uid-lonely", "v1"
    )


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("Deployment", "run `kubectl -n team-a rollout restart deployment/api`"),
        ("StatefulSet", "run `kubectl -n team-a rollout restart statefulset/api`"),
        ("DaemonSet", "run `kubectl -n team-a rollout restart daemonset/api`"),
        ("Job", "delete Job api and create it again"),
        ("Pod", "delete pod api and create it again"),
    ],
)
def test_the_advice_fits_the_kind_of_workload(kind: str, expected: str) -> None:
    assert expected in advice(Workload(kind, "api", "team-a"))


# --- events ------------------------------------------------------------------


def finding(
    drift: Drift,
    *,
    name: str = "api-1",
    mode: str = "issuer",
    since: float = 1_767_225_600.0,
) -> Finding:
    assessment = Assessment(
        pod(name, signing_mode=mode), "team-a", {}, {}, "", (drift,)
    )
    workload = Workload("Deployment", "api", "team-a", "dep-uid", "apps/v1")
    return Finding(assessment, drift, workload, since)


def test_a_pod_without_a_controller_is_named_as_itself() -> None:
    drift = Drift(DriftKind.MISSING, Provider.AWS, "s3-reader", None, "s3-reader")
    lone = Assessment(pod("lonely"), "team-a", {}, {}, "", (drift,))
    message = notice_message([Finding(lone, drift, workload_of(lone.pod), 0.0)])
    assert message.startswith(
        "Pod lonely should hold aws identity s3-reader but does not"
    )


def test_a_missing_event_names_the_identity_and_the_restart() -> None:
    drift = Drift(DriftKind.MISSING, Provider.AWS, "s3-reader", None, "s3-reader")
    findings = [finding(drift, name="api-1"), finding(drift, name="api-2")]
    event = drift_event(notice_of(findings[0]), findings, instance="replica-0")
    assert event["reason"] == "IdentityMissing"
    assert event["type"] == "Warning"
    assert event["metadata"]["namespace"] == "team-a"
    assert event["involvedObject"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "api",
        "namespace": "team-a",
        "uid": "dep-uid",
    }
    assert event["message"] == (
        "2 pods (api-1, api-2) of Deployment/api should hold aws identity s3-reader "
        "but do not: they were created while the webhook was unavailable, or before "
        "the identity covered them. To fix this, run "
        "`kubectl -n team-a rollout restart deployment/api`."
    )


def test_a_stale_event_says_when_the_last_token_expires_in_issuer_mode() -> None:
    drift = Drift(
        DriftKind.STALE,
        Provider.AWS,
        "s3-reader",
        "s3-reader",
        None,
        "scope narrowed",
        3600,
    )
    message = notice_message([finding(drift)])
    assert "1 pod (api-1) of Deployment/api holds aws identity s3-reader" in message
    assert "the rules give it no aws identity now: scope narrowed" in message
    assert (
        "In issuer mode, /token refuses it a new token at its next refresh, and "
        "its current token expires by 2026-01-01T01:00:00Z at the latest." in message
    )
    assert message.endswith("run `kubectl -n team-a rollout restart deployment/api`.")


def test_a_stale_event_in_key_mode_says_the_pods_keep_the_identity() -> None:
    drift = Drift(
        DriftKind.STALE, Provider.AWS, "s3-reader", "s3-reader", None, "x", 3600
    )
    message = notice_message([finding(drift, mode="key")])
    assert (
        "Its sidecar signs its own tokens (key mode), so it keeps this identity"
        in message
    )


def test_many_pods_are_named_a_few_at_a_time() -> None:
    drift = Drift(
        DriftKind.ORPHANED, Provider.GCP, "gone", "gone", None, "no longer exists"
    )
    message = notice_message([finding(drift, name=f"api-{i}") for i in range(5)])
    assert "5 pods (api-0, api-1, api-2 and 2 more)" in message
    assert "hold gcp identity gone, which no longer exists" in message


def test_a_pod_opted_out_by_label_is_not_drift() -> None:
    from webhook.drift import ineligible_reason
    from webhook.namespaces import NamespaceInfo
    from webhook.pods import pod_record

    record = pod_record(
        {
            "metadata": {
                "namespace": "team-a",
                "name": "p",
                "labels": {"workloadidentity.dev/inject": "false"},
            },
            "spec": {"containers": [{"name": "app", "image": "x"}]},
        }
    )
    assert record is not None
    assert "opts out" in ineligible_reason(record, NamespaceInfo("team-a", "team-a"))
