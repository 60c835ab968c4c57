"""`.status` of a WorkloadIdentity: what install recorded, what is pending, and
conditions written through the status subresource of the fake API server."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from tests.webhook.cluster_support import aws_identity
from tests.webhook.fake_kube import IDENTITIES, FakeKube, Obj
from webhook.cloud.cluster_state import record_of, status_with_record
from webhook.cloud.spec import install_snapshot
from webhook.cloud.state import InstallRecord
from webhook.identities import parse_identity
from webhook.kube import Kube
from webhook.report import reported_status
from webhook.status import (
    Condition,
    install_condition,
    permissions_hash,
    read_identity_status,
    update_status,
    validity,
    with_condition,
)

POLICY = {
    "mode": "managed",
    "policyDocument": {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
    },
}


async def record_installed(
    kube: Kube, name: str, *, generation: int, permissions: Obj
) -> None:
    """What `install --source kubernetes` writes after it applied `permissions`
    read at `generation`."""
    record = InstallRecord(name, "aws").succeeded(
        {}, "sha256:spec", permissions_hash(permissions), generation,
        {"mode": "automatic"},
    )  # fmt: skip
    await update_status(kube, name, lambda obj: status_with_record(obj, record))


def with_permissions(
    permissions: Obj, *, projects: tuple[str, ...] = ("team-a",)
) -> Obj:
    identity = aws_identity("s3-reader", projects=projects)
    identity["spec"]["permissions"] = permissions
    return identity


async def test_installed_permissions_read_as_not_pending_until_they_change(
    fake_kube: FakeKube, kube: Kube
) -> None:
    fake_kube.put_identity(with_permissions(POLICY))
    status = await read_identity_status(kube, "s3-reader")
    assert status.pending
    assert status.installed_permissions_hash is None

    await record_installed(kube, "s3-reader", generation=1, permissions=POLICY)
    status = await read_identity_status(kube, "s3-reader")
    assert not status.pending
    assert status.installed_generation == 1
    stored = fake_kube.objects[IDENTITIES]["s3-reader"]["status"]
    assert stored["installed"] is True
    assert stored["installedPermissionsHash"] == permissions_hash(POLICY)
    assert stored["observedGeneration"] == 1

    # A scope change takes effect at once; it leaves nothing to install.
    fake_kube.put_identity(with_permissions(POLICY, projects=("team-a", "team-b")))
    status = await read_identity_status(kube, "s3-reader")
    assert status.generation == 2
    assert not status.pending

    changed = {**POLICY, "policyDocument": {"Version": "2012-10-17", "Statement": []}}
    fake_kube.put_identity(with_permissions(changed))
    assert (await read_identity_status(kube, "s3-reader")).pending


async def test_recording_what_was_installed_while_the_spec_moved_on_reads_as_pending(
    fake_kube: FakeKube, kube: Kube
) -> None:
    fake_kube.put_identity(with_permissions(POLICY))
    fake_kube.put_identity(with_permissions({"mode": "existing"}))  # meanwhile
    await record_installed(kube, "s3-reader", generation=1, permissions=POLICY)
    status = await read_identity_status(kube, "s3-reader")
    assert status.pending
    assert fake_kube.objects[IDENTITIES]["s3-reader"]["status"]["installed"] is False


async def test_a_write_that_loses_a_race_is_redone_on_the_fresh_object(
    fake_kube: FakeKube, kube: Kube
) -> None:
    fake_kube.put_identity(aws_identity("s3-reader"))
    seen: list[str] = []
    theirs = Condition("Installed", "True", "Installed", "done", 1).to_dict(
        "2026-01-01T00:00:00Z"
    )

    def change(obj: Mapping[str, Any]) -> dict[str, Any] | None:
        seen.append(obj["metadata"]["resourceVersion"])
        if len(seen) == 1:  # another writer gets in between our read and write
            current = fake_kube.objects[IDENTITIES]["s3-reader"]
            fake_kube.put_identity({**current, "status": {"conditions": [theirs]}})
        return with_condition(obj.get("status") or {}, validity(None, 1))

    assert await update_status(kube, "s3-reader", change)
    assert len(seen) == 2 and seen[0] != seen[1]
    conditions = fake_kube.objects[IDENTITIES]["s3-reader"]["status"]["conditions"]
    assert [c["type"] for c in conditions] == ["Installed", "Valid"]


async def test_a_status_that_already_says_so_is_not_written(
    fake_kube: FakeKube, kube: Kube
) -> None:
    fake_kube.put_identity(aws_identity("s3-reader"))
    assert not await update_status(kube, "s3-reader", lambda obj: None)
    assert not [r for r in fake_kube.requests if r[0] == "PUT"]


async def test_a_missing_identity_is_a_404(kube: Kube) -> None:
    with pytest.raises(ApiException) as raised:
        await read_identity_status(kube, "nobody")
    assert raised.value.status == 404


def test_the_permissions_hash_ignores_key_order_and_spacing() -> None:
    reordered = {"policyDocument": POLICY["policyDocument"], "mode": "managed"}
    assert permissions_hash(reordered) == permissions_hash(POLICY)
    assert permissions_hash({}) == permissions_hash(None)
    assert permissions_hash({"mode": "existing"}) != permissions_hash(POLICY)


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    first = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    later = first + datetime.timedelta(hours=1)
    status = with_condition({}, validity(None, 1), now=first)
    assert status is not None
    assert with_condition(status, validity(None, 1), now=later) is None
    moved = with_condition(status, validity(None, 2), now=later)
    assert moved is not None
    assert moved["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert moved["conditions"][0]["observedGeneration"] == 2
    flipped = with_condition(
        moved, Condition("Valid", "False", "InvalidSpec", "x", 3), now=later
    )
    assert flipped is not None
    assert flipped["conditions"][0]["lastTransitionTime"] == "2026-01-01T01:00:00Z"


async def test_the_install_record_survives_the_crd_schema_and_reads_back_whole(
    fake_kube: FakeKube, kube: Kube
) -> None:
    """The fake prunes what the CRD's status schema does not declare, as the
    API server does: a field install writes but the CRD forgot would vanish."""
    fake_kube.put_identity(with_permissions(POLICY))
    snapshot = install_snapshot(
        parse_identity(with_permissions(POLICY)), "https://issuer.example"
    )
    record = InstallRecord("s3-reader", "aws").succeeded(
        snapshot, "sha256:spec", permissions_hash(POLICY), 1,
        {"mode": "automatic", "provider": "arn:aws:iam::1:oidc-provider/x"},
    )  # fmt: skip
    await update_status(kube, "s3-reader", lambda obj: status_with_record(obj, record))
    stored = fake_kube.objects[IDENTITIES]["s3-reader"]
    assert record_of(stored) == record
    assert set(stored["status"]) == {
        "installed",
        "installedGeneration",
        "installedPermissionsHash",
        "installedSpecHash",
        "installedAt",
        "installedSnapshot",
        "providerSetup",
        "observedGeneration",
        "conditions",
    }
    (condition,) = stored["status"]["conditions"]
    assert (condition["type"], condition["status"]) == ("Installed", "True")

    failed = record.failed("sha256:spec", 1, "AccessDenied: iam:CreateRole")
    await update_status(kube, "s3-reader", lambda obj: status_with_record(obj, failed))
    stored = fake_kube.objects[IDENTITIES]["s3-reader"]
    assert record_of(stored) == failed
    assert stored["status"]["lastInstallFailure"]["message"].startswith("AccessDenied")
    (condition,) = stored["status"]["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "InstallFailed")
    assert "iam:CreateRole" in condition["message"]

    # The next success clears the failure.
    again = failed.succeeded(snapshot, "sha256:spec", permissions_hash(POLICY), 1, {})
    await update_status(kube, "s3-reader", lambda obj: status_with_record(obj, again))
    stored = fake_kube.objects[IDENTITIES]["s3-reader"]
    assert "lastInstallFailure" not in stored["status"]
    assert stored["status"]["conditions"][0]["reason"] == "Installed"


def test_the_webhook_turns_installed_false_when_the_permissions_are_edited() -> None:
    """`kubectl get workloadidentities` reads `.status.installed`: the webhook
    keeps it current when an admin edits spec.permissions after an install."""
    installed = InstallRecord("s3-reader", "aws").succeeded(
        {}, "sha256:spec", permissions_hash(POLICY), 1, {}
    )
    obj = with_permissions(POLICY)
    obj["metadata"]["generation"] = 1
    obj["status"] = status_with_record(obj, installed)
    assert reported_status(obj).status is None  # nothing to bring up to date

    edited = with_permissions({**POLICY, "policyDocument": {"Statement": []}})
    edited["metadata"]["generation"] = 2
    edited["status"] = obj["status"]
    status = reported_status(edited).status
    assert status is not None
    assert status["installed"] is False
    (condition,) = status["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "Pending")
    assert "run `python -m webhook install --source kubernetes`" in condition["message"]
    assert reported_status({**edited, "status": status}).status is None

    # A scope edit leaves nothing to install.
    rescoped = with_permissions(POLICY, projects=("team-a", "team-b"))
    rescoped["metadata"]["generation"] = 3
    rescoped["status"] = obj["status"]
    status = reported_status(rescoped).status
    assert status is not None  # the condition now speaks for generation 3
    assert status["installed"] is True
    (condition,) = status["conditions"]
    assert (condition["status"], condition["observedGeneration"]) == ("True", 3)
    assert (
        condition["lastTransitionTime"]
        == obj["status"]["conditions"][0]["lastTransitionTime"]
    )


def test_an_identity_install_never_ran_for_gets_no_install_condition() -> None:
    assert install_condition(with_permissions(POLICY)) is None
    assert reported_status(with_permissions(POLICY)).status is None


def installed_object(document: Obj, generation: int = 1) -> Obj:
    """`document` at `generation`, with the status install writes for it."""
    obj = {**document, "metadata": {**document["metadata"], "generation": generation}}
    snapshot = install_snapshot(parse_identity(obj), "https://issuer.example")
    record = InstallRecord("s3-reader", "aws").succeeded(
        snapshot, "sha256:spec", permissions_hash(POLICY), generation, {}
    )
    return {**obj, "status": status_with_record(obj, record)}


def test_a_new_role_is_pending_install_like_new_permissions() -> None:
    """The Installed column covers the cloud target as well: a pod given the
    new role before install made it would get refused credentials."""
    obj = installed_object(with_permissions(POLICY))
    assert obj["status"]["installed"] is True
    moved = copy.deepcopy(obj)
    moved["metadata"]["generation"] = 2
    moved["spec"]["aws"]["roleArn"] = "arn:aws:iam::111122223333:role/other"
    status = reported_status(moved).status
    assert status is not None
    assert status["installed"] is False
    (condition,) = status["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "Pending")
    assert "cloud target or permissions changed" in condition["message"]


def test_a_failed_install_of_an_older_generation_reads_as_pending() -> None:
    obj = with_permissions(POLICY)
    obj["metadata"]["generation"] = 1
    failed = InstallRecord("s3-reader", "aws").failed("sha256:spec", 1, "denied")
    obj["status"] = status_with_record(obj, failed)
    (condition,) = obj["status"]["conditions"]
    assert condition["reason"] == "InstallFailed"

    obj["metadata"]["generation"] = 2  # edited since
    status = reported_status(obj).status
    assert status is not None
    (condition,) = status["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "Pending")
    assert "never installed" in condition["message"]


def test_conditions_that_are_not_a_list_are_replaced_not_fatal() -> None:
    obj = with_permissions(POLICY)
    obj["status"] = {"conditions": 5}
    status = status_with_record(
        obj, InstallRecord("s3-reader", "aws").failed("sha256:spec", 0, "denied")
    )
    assert [c["type"] for c in status["conditions"]] == ["Installed"]
