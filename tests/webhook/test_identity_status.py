"""`.status` of a WorkloadIdentity: what install recorded, what is pending, and
conditions written through the status subresource of the fake API server."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from tests.webhook.cluster_support import aws_identity
from tests.webhook.fake_kube import IDENTITIES, FakeKube, Obj
from webhook.kube import Kube
from webhook.status import (
    Condition,
    permissions_hash,
    read_identity_status,
    record_installed,
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
