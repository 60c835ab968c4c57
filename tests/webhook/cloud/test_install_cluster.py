"""`install`, `verify` and `status` with `--source kubernetes`: identities read
from the (fake) API server, the install record kept in each WorkloadIdentity's
status, AWS played by moto's server. Everything listens on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

from tests.webhook.cloud.support import LoopThread, aws_document, s3_policy
from tests.webhook.cloud.test_install_aws import (
    ISSUER,
    _limited_user,
    aws_keys,  # noqa: F401  (autouse: moto's admin keys for every test here)
    iam,
    managed,
)
from tests.webhook.fake_kube import IDENTITIES, FakeKube, Obj, write_kubeconfig
from webhook.cli import main
from webhook.cloud import cluster_state

T = TypeVar("T")


class Cluster:
    """The fake API server on the test's loop thread, driven from the test."""

    def __init__(self, loop_thread: LoopThread, kubeconfig: Path) -> None:
        self.fake = FakeKube()
        self._loop = loop_thread.loop
        self.call(self.fake.start)
        self.kubeconfig = write_kubeconfig(kubeconfig, self.fake.url)

    def call(self, work: Callable[[], Any]) -> Any:
        """Run `work` on the fake's loop: it is not safe from another thread."""

        async def step() -> Any:
            result = work()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(step(), self._loop).result(10)

    def put(self, document: Obj) -> None:
        self.call(lambda: self.fake.put_identity(document))

    def status(self, name: str) -> Obj:
        found: Obj = self.call(
            lambda: json.loads(json.dumps(self.fake.objects[IDENTITIES][name]))
        )
        return found.get("status") or {}

    def status_writes(self) -> int:
        return int(
            self.call(
                lambda: sum(
                    method == "PUT" and path.endswith("/status")
                    for method, path, _ in self.fake.requests
                )
            )
        )

    def run(self, command: str, *extra: str) -> tuple[int, str]:
        out = io.StringIO()
        argv = [
            command,
            "--source",
            "kubernetes",
            "--kubeconfig",
            str(self.kubeconfig),
            "--issuer-url",
            ISSUER,
            *extra,
        ]
        return main(argv, out=out), out.getvalue()


@pytest.fixture
def cluster(tmp_path: Path, loop_thread: LoopThread) -> Iterator[Cluster]:
    made = Cluster(loop_thread, tmp_path / "kubeconfig")
    try:
        yield made
    finally:
        made.call(made.fake.stop)


def install(cluster: Cluster, moto: str, *extra: str) -> tuple[int, str]:
    return cluster.run("install", "--aws-endpoint-url", moto, *extra)


def status(cluster: Cluster) -> dict[str, Any]:
    code, out = cluster.run("status", "--output", "json")
    assert code == 0, out
    return {entry["name"]: entry for entry in json.loads(out)["identities"]}


def printer_column_installed(cluster: Cluster, name: str) -> object:
    """What `kubectl get workloadidentities` shows as Installed: the CRD's
    additionalPrinterColumns path `.status.installed`."""
    return cluster.status(name).get("installed")


def test_install_records_into_the_status_and_kubectl_shows_it_installed(
    cluster: Cluster, moto: str
) -> None:
    cluster.put(managed())
    assert printer_column_installed(cluster, "reports") is None
    assert status(cluster)["reports"]["state"] == "pending"

    code, out = install(cluster, moto)
    assert code == 0, out
    assert "iam CreateRole" in out
    assert "recorded in the WorkloadIdentities' status" in out
    assert iam(moto).get_role(RoleName="reports")["Role"]["RoleName"] == "reports"

    recorded = cluster.status("reports")
    assert printer_column_installed(cluster, "reports") is True
    assert recorded["installedGeneration"] == 1
    assert recorded["installedSnapshot"]["permissions"]["policyDocument"] == s3_policy()
    assert recorded["providerSetup"]["mode"] == "automatic"
    (condition,) = recorded["conditions"]
    assert (condition["type"], condition["status"]) == ("Installed", "True")
    assert status(cluster)["reports"]["state"] == "installed"
    assert status(cluster)["reports"]["summary"].startswith(
        "generation 1 installed at "
    )

    # Idempotent: nothing changes in the cloud, nothing is written again.
    writes = cluster.status_writes()
    code, again = install(cluster, moto)
    assert code == 0, again
    assert "up to date, nothing to change" in again
    assert cluster.status_writes() == writes


def test_a_permission_edit_is_pending_with_its_difference_until_installed(
    cluster: Cluster, moto: str
) -> None:
    cluster.put(managed())
    assert install(cluster, moto)[0] == 0
    cluster.put(managed("reports", "s3:GetObject", "s3:PutObject"))

    pending = status(cluster)["reports"]
    assert pending["state"] == "pending"
    assert any("s3:PutObject" in line for line in pending["difference"])

    code, out = install(cluster, moto)
    assert code == 0, out
    assert "iam PutRolePolicy" in out
    recorded = cluster.status("reports")
    assert recorded["installed"] is True
    assert recorded["installedGeneration"] == 2
    assert status(cluster)["reports"]["state"] == "installed"


def test_a_failed_install_is_recorded_and_the_next_success_clears_it(
    cluster: Cluster, moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.put(managed())
    key, secret = _limited_user(
        moto,
        [
            "sts:GetCallerIdentity",
            "iam:Get*",
            "iam:CreateOpenIDConnectProvider",
            "iam:TagOpenIDConnectProvider",
        ],
    )
    with monkeypatch.context() as limited:
        limited.setenv("AWS_ACCESS_KEY_ID", key)
        limited.setenv("AWS_SECRET_ACCESS_KEY", secret)
        code, out = install(cluster, moto)
    assert code == 1, out

    recorded = cluster.status("reports")
    assert "iam:CreateRole" in recorded["lastInstallFailure"]["message"]
    (condition,) = recorded["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "InstallFailed")
    failed = status(cluster)["reports"]
    assert failed["state"] == "failed"
    assert "iam:CreateRole" in failed["summary"]

    requests.post(f"{moto}/moto-api/reset-auth", data=b"inf", timeout=10)  # admin again
    code, out = install(cluster, moto)
    assert code == 0, out
    recorded = cluster.status("reports")
    assert "lastInstallFailure" not in recorded
    assert recorded["installed"] is True


def test_an_invalid_identity_in_the_cluster_is_named_and_the_others_installed(
    cluster: Cluster, moto: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.put(managed())
    broken = aws_document("broken")
    broken["spec"]["aws"]["roleArn"] = "not-an-arn"
    cluster.put(broken)

    code, out = install(cluster, moto)
    assert code == 1, out
    assert "error: WorkloadIdentity broken: spec.aws.roleArn" in capsys.readouterr().err
    assert cluster.status("reports")["installed"] is True
    assert "installed" not in cluster.status("broken")


def test_dry_run_and_verify_write_nothing_to_the_cluster(
    cluster: Cluster, moto: str
) -> None:
    cluster.put(managed())
    code, out = install(cluster, moto, "--dry-run")
    assert code == 0, out
    assert "nothing was changed" in out
    assert cluster.status("reports") == {}

    assert cluster.status_writes() == 0

    assert install(cluster, moto)[0] == 0
    writes = cluster.status_writes()
    code, out = cluster.run("verify", "--aws-endpoint-url", moto)
    assert code == 0, out
    assert cluster.status_writes() == writes


def test_file_settings_left_in_the_environment_are_ignored_with_a_note(
    cluster: Cluster,
    moto: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster.put(managed())
    state = tmp_path / "state.json"
    monkeypatch.setenv("WI_STATE_FILE", str(state))
    monkeypatch.setenv("WI_IDENTITIES", str(tmp_path / "ids.yaml"))
    code, out = install(cluster, moto)
    assert code == 0, out
    assert "ignoring --identities and --state-file" in capsys.readouterr().err
    assert not state.exists()
    assert cluster.status("reports")["installed"] is True


def test_an_api_server_that_cannot_be_reached_is_an_error_that_says_so(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.call(cluster.fake.stop)
    code, _ = cluster.run("status")
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot list WorkloadIdentities" in err
    assert "cannot reach the API server" in err


def test_a_kubeconfig_that_does_not_exist_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-kubeconfig"
    code = main(
        ["status", "--source", "kubernetes", "--kubeconfig", str(missing),
         "--issuer-url", ISSUER],
        out=io.StringIO(),
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"kubeconfig {missing} does not exist" in err
    assert "--kubeconfig" in err


def test_one_identity_that_cannot_be_recorded_stops_none_of_the_others(
    cluster: Cluster, moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alpha is deleted between the list and its status write, beta's status
    writes are refused: gamma is still installed and recorded, and the run
    ends with its summary."""
    for name in ("alpha", "beta", "gamma"):
        cluster.put(managed(name))
    cluster.call(lambda: cluster.fake.status_refused.update(beta=500))
    listed = cluster_state.identities_of

    def list_then_delete(objects: Any) -> Any:
        loaded = listed(objects)
        cluster.call(lambda: cluster.fake.delete(IDENTITIES, "alpha"))
        return loaded

    monkeypatch.setattr(cluster_state, "identities_of", list_then_delete)
    code, out = install(cluster, moto)
    assert code == 1, out
    assert "installed, but not recorded: WorkloadIdentity alpha was deleted" in out
    assert "beta (aws)" in out and "installed in the cloud, but not recorded" in out
    assert "2 installed (2 changed), 1 failed: beta" in out
    assert cluster.status("gamma")["installed"] is True
    assert {r["RoleName"] for r in iam(moto).list_roles()["Roles"]} >= {
        "alpha",
        "beta",
        "gamma",
    }


def test_a_failure_keeps_the_success_another_run_recorded_meanwhile(
    cluster: Cluster, moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.put(managed())
    assert install(cluster, moto)[0] == 0
    installed = cluster.status("reports")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-key")  # this run fails
    requests.post(f"{moto}/moto-api/reset-auth", data=b"0", timeout=10)
    try:
        code, _ = install(cluster, moto)
    finally:
        requests.post(f"{moto}/moto-api/reset-auth", data=b"inf", timeout=10)
    assert code == 1
    after = cluster.status("reports")
    for field in ("installedSnapshot", "installedGeneration", "installedAt"):
        assert after[field] == installed[field]
    assert "lastInstallFailure" in after


def test_status_lists_an_invalid_identity_as_failed_and_exits_1(
    cluster: Cluster,
) -> None:
    cluster.put(managed())
    broken = aws_document("broken")
    broken["spec"]["aws"]["roleArn"] = "not-an-arn"
    cluster.put(broken)
    code, out = cluster.run("status", "--output", "json")
    assert code == 1
    listed = {e["name"]: e for e in json.loads(out)["identities"]}
    assert listed["broken"]["state"] == "failed"
    assert "spec.aws.roleArn" in listed["broken"]["summary"]
    assert listed["reports"]["state"] == "pending"


def test_no_kubeconfig_at_all_says_what_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code = main(
        ["status", "--source", "kubernetes", "--issuer-url", ISSUER],
        out=io.StringIO(),
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "no kubeconfig" in err and "--kubeconfig FILE" in err
