"""`python -m webhook workloads` from manifest files, and serve's drift flags."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.webhook.cluster_support import aws_identity, owner_ref
from tests.webhook.test_serve_kubernetes import free_port
from webhook.cli import build_parser, main
from webhook.cli_workloads import DriftUsageError, drift_settings

Obj = dict[str, Any]


def pod(
    name: str,
    namespace: str = "team-a",
    *,
    holds: str | None = None,
    owner: Obj | None = None,
    labels: dict[str, str] | None = None,
    phase: str = "Running",
) -> Obj:
    metadata: Obj = {"name": name, "namespace": namespace, "uid": f"uid-{name}"}
    if holds:
        metadata["annotations"] = {"workloadidentity.dev/aws": holds}
    if owner:
        metadata["ownerReferences"] = [{**owner, "controller": True}]
    if labels:
        metadata["labels"] = labels
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": phase},
    }


def namespace(name: str, project: str | None = None) -> Obj:
    labels = {"workloadidentity.dev/project": project} if project else {}
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A dump as `kubectl get namespaces,replicasets,pods -A -o yaml` writes
    it, and the identities: team-a and team-b are projects."""
    replica_set = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": "api-5c8d",
            "namespace": "team-a",
            "ownerReferences": [
                {**owner_ref("Deployment", "api", "api-uid"), "controller": True}
            ],
        },
    }
    rs_owner = owner_ref("ReplicaSet", "api-5c8d", "rs-uid")
    hashed = {"pod-template-hash": "5c8d"}
    dump = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            namespace("team-a", "team-a"),
            namespace("team-b", "team-b"),
            namespace("plain"),
            replica_set,
            pod("api-5c8d-ok", holds="s3-reader", owner=rs_owner, labels=hashed),
            pod("api-5c8d-new", owner=rs_owner, labels=hashed),
            pod("db-0", holds="s3-writer", owner=owner_ref("StatefulSet", "db", "db-uid")),
            pod("web-7f-x", "team-b", holds="gone", labels={"pod-template-hash": "7f"},
                owner=owner_ref("ReplicaSet", "web-7f", "rs2")),
            pod("idle", "plain"),
            pod("done", holds="gone", phase="Succeeded"),
            pod("coredns", "kube-system", holds="gone"),
        ],
    }  # fmt: skip
    identities = [
        aws_identity("s3-reader"),
        aws_identity("s3-writer", projects=["team-b"]),
        {**aws_identity("broken"), "spec": {"provider": "aws"}},
    ]
    paths = {"pods": tmp_path / "dump.yaml", "identities": tmp_path / "identities.yaml"}
    paths["pods"].write_text(yaml.safe_dump(dump))
    paths["identities"].write_text(yaml.safe_dump_all(identities))
    return paths


def run(files: dict[str, Path], *extra: str) -> tuple[int, str]:
    out = io.StringIO()
    argv = [
        "workloads",
        "--pods",
        str(files["pods"]),
        "--identities",
        str(files["identities"]),
    ]
    return main([*argv, *extra], out), out.getvalue()


def as_json(files: dict[str, Path], *extra: str) -> Obj:
    code, text = run(files, "-o", "json", *extra)
    assert code == 0
    found: Obj = json.loads(text)
    return found


def test_each_identity_lists_the_pods_that_hold_it_with_their_workload(
    files: dict[str, Path],
) -> None:
    report = as_json(files)
    holders = {i["name"]: i for i in report["identities"]}
    assert holders["s3-reader"] == {
        "name": "s3-reader",
        "provider": "aws",
        "exists": True,
        "pods": [
            {
                "namespace": "team-a",
                "name": "api-5c8d-ok",
                "workload": {"kind": "Deployment", "name": "api"},
            }
        ],
    }
    assert holders["gone"]["exists"] is False
    assert holders["gone"]["invalid"] is False
    # Named from the pod-template-hash: its ReplicaSet is not in the dump.
    assert holders["gone"]["pods"][0]["workload"] == {
        "kind": "Deployment",
        "name": "web",
    }
    assert [p["name"] for p in holders["gone"]["pods"]] == ["web-7f-x"], (
        "finished pods and system namespaces are left out"
    )
    assert holders["s3-writer"]["pods"][0]["workload"] == {
        "kind": "StatefulSet",
        "name": "db",
    }


def test_each_pod_shows_what_it_holds_against_what_the_rules_give_now(
    files: dict[str, Path],
) -> None:
    pods = {p["name"]: p for p in as_json(files)["pods"]}
    assert set(pods) == {"api-5c8d-ok", "api-5c8d-new", "db-0", "web-7f-x"}
    assert (
        pods["api-5c8d-ok"]["holds"]
        == pods["api-5c8d-ok"]["expected"]
        == {"aws": "s3-reader"}
    )
    assert pods["api-5c8d-ok"]["drift"] == []
    [missing] = pods["api-5c8d-new"]["drift"]
    assert missing["kind"] == "missing" and missing["identity"] == "s3-reader"
    assert missing["token"] is None
    assert missing["action"] == "run `kubectl -n team-a rollout restart deployment/api`"
    [stale] = pods["db-0"]["drift"]
    assert (stale["kind"], stale["holds"], stale["expected"]) == (
        "stale",
        "s3-writer",
        "s3-reader",
    )
    assert (
        "project 'team-a' is not in the project restriction ['team-b']"
        in stale["reason"]
    )
    assert stale["token"] == {
        "signingMode": None,
        "refusedAtNextRefresh": None,
        "expiresWithinSeconds": 3600,
        "note": "in issuer mode, /token refuses it a new token at its next refresh, "
        "and its current token expires within 3600 s (the identity's token lifetime)",
    }
    [orphaned] = pods["web-7f-x"]["drift"]
    assert orphaned["kind"] == "orphaned"


def test_the_drift_summary_counts_pods_per_kind_and_identity(
    files: dict[str, Path],
) -> None:
    assert as_json(files)["drift"] == [
        {"kind": "missing", "identity": "s3-reader", "pods": 1},
        {"kind": "orphaned", "identity": "gone", "pods": 1},
        {"kind": "stale", "identity": "s3-writer", "pods": 1},
    ]


def test_filters_narrow_identities_pods_and_the_summary(files: dict[str, Path]) -> None:
    by_identity = as_json(files, "--identity", "s3-reader")
    assert [i["name"] for i in by_identity["identities"]] == ["s3-reader"]
    assert [p["name"] for p in by_identity["pods"]] == [
        "api-5c8d-new",
        "api-5c8d-ok",
        "db-0",
    ]
    assert by_identity["drift"] == [
        {"kind": "missing", "identity": "s3-reader", "pods": 1}
    ]
    # db-0's drift concerns s3-writer, which the filter leaves out.
    assert next(p for p in by_identity["pods"] if p["name"] == "db-0")["drift"] == []

    by_project = as_json(files, "--project", "team-b")
    assert [p["name"] for p in by_project["pods"]] == ["web-7f-x"]
    assert by_project["drift"] == [{"kind": "orphaned", "identity": "gone", "pods": 1}]

    by_namespace = as_json(files, "--namespace", "team-a", "--drift")
    assert [p["name"] for p in by_namespace["pods"]] == ["api-5c8d-new", "db-0"]

    everything = as_json(files, "--all")
    idle = next(p for p in everything["pods"] if p["name"] == "idle")
    assert "no workloadidentity.dev/project label" in idle["ineligible"]


def test_the_text_report_reads_as_a_report(files: dict[str, Path]) -> None:
    code, text = run(files)
    assert code == 0
    assert "Identities and the pods that hold them:" in text
    assert "  s3-reader (aws): 1 pod\n    team-a/api-5c8d-ok  Deployment/api\n" in text
    assert "  gone (aws, does not exist): 1 pod\n" in text
    assert "  broken (aws, invalid): no pods\n" not in text  # invalid: not loaded
    assert "Drift: 3 pods" in text
    assert (
        "MISSING team-a/api-5c8d-new (Deployment/api): the rules give it aws identity"
        in text
    )
    assert "    to fix: run `kubectl -n team-a rollout restart deployment/api`" in text
    assert "    tokens: in issuer mode, /token refuses it a new token" in text


def test_invalid_identities_are_named_as_a_warning(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run(files)
    assert code == 0
    assert (
        "warning: WorkloadIdentity broken: spec.aws: is required"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pods", "dump.yaml"], "--pods needs --identities FILE"),
        (
            ["--identities", "identities.yaml"],
            "--identities and --namespaces are read with --pods only",
        ),
        (
            ["--pods", "missing.yaml", "--identities", "identities.yaml"],
            "cannot read missing.yaml",
        ),
    ],
)
def test_usage_errors_say_what_to_change(
    files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(files["pods"].parent)
    code = main(["workloads", *argv], io.StringIO())
    err = capsys.readouterr().err
    assert message in err
    assert code in (1, 2)


def test_an_unreachable_cluster_is_reported_plainly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The API server's address is a loopback port that was free a moment ago."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": f"http://127.0.0.1:{free_port()}"},
                    }
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    assert main(["workloads", "--kubeconfig", str(kubeconfig)], io.StringIO()) == 1
    assert (
        "error: cannot list WorkloadIdentities: cannot reach the API server"
        in capsys.readouterr().err
    )


# --- serve's drift flags -----------------------------------------------------


def serve_args(*extra: str) -> Any:
    return build_parser().parse_args(["serve", "--source", "kubernetes", *extra])


def test_drift_settings_default_to_a_minute_under_leader_election() -> None:
    settings = drift_settings(serve_args("--webhook-namespace", "wi"))
    assert settings.interval == 60
    assert settings.leader_election is True
    assert (settings.lease.name, settings.lease.namespace) == (
        "workload-identity-drift",
        "wi",
    )
    assert (
        settings.lease.lease_duration,
        settings.lease.renew_deadline,
        settings.lease.retry_period,
    ) == (15, 10, 2)


def test_drift_flags_and_their_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WI_LEADER_ELECTION", "false")
    monkeypatch.setenv("WI_DRIFT_INTERVAL", "0")
    monkeypatch.setenv("WI_LEASE_NAMESPACE", "elsewhere")
    settings = drift_settings(
        serve_args("--lease-name", "mine", "--lease-duration", "3")
    )
    assert settings.leader_election is False
    assert not settings.enabled
    assert (settings.lease.name, settings.lease.namespace) == ("mine", "elsewhere")
    assert settings.lease.retry_period == 1.0
    assert drift_settings(serve_args("--leader-election")).leader_election is True


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--drift-interval", "soon"], "--drift-interval 'soon'"),
        (["--drift-interval", "-1"], "--drift-interval '-1'"),
        (
            ["--lease-duration", "1"],
            "--lease-duration '1': give whole seconds, 2 or more",
        ),
    ],
)
def test_drift_flags_that_cannot_work_are_refused(
    extra: list[str], message: str
) -> None:
    with pytest.raises(DriftUsageError, match=message):
        drift_settings(serve_args(*extra))
