"""The install record in a cluster: each WorkloadIdentity's `.status`.

`install --source kubernetes` reads the identities from the API server and
records what it applied in their status, so `kubectl get workloadidentities`
shows the Installed column and `status --source kubernetes` needs no local
file. The field names are the CRD's (deploy/crd/workloadidentity.yaml); a
field the CRD does not declare would be pruned by the API server.

Install itself is synchronous (boto3, google-auth), while the Kubernetes client
is asyncio: the client lives on an event loop in a background thread, and the
store hands each write to it and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from webhook.cloud.state import Failure, IdentityGone, InstallRecord, RecordError
from webhook.identities import API_VERSION, KIND, LoadResult
from webhook.inventory import identities_of, list_all
from webhook.kube import (
    GROUP,
    PLURAL,
    VERSION,
    Kube,
    connect,
    describe_error,
    load_configuration,
)
from webhook.status import status_of, update_status, with_install_state

T = TypeVar("T")

CALL_TIMEOUT_SECONDS: Final = 60.0
"""For one list or one status write, retries on conflict included."""

MAX_MESSAGE: Final = 32_768
"""The CRD's limit on lastInstallFailure.message."""

_RECORD_FIELDS: Final = (
    "installedPermissionsHash",
    "installedGeneration",
    "installedSpecHash",
    "installedAt",
    "installedSnapshot",
    "providerSetup",
)


class ClusterError(Exception):
    """The API server could not be read or written; the message says what to do."""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def record_of(obj: Mapping[str, Any]) -> InstallRecord | None:
    """What `obj`'s status says install did, or None when install never ran."""
    metadata = _mapping(obj.get("metadata"))
    status = _mapping(obj.get("status"))
    name = str(metadata.get("name", ""))
    provider = str(_mapping(obj.get("spec")).get("provider", ""))
    failure = _mapping(status.get("lastInstallFailure"))
    permissions = status.get("installedPermissionsHash")
    if not failure and not (isinstance(permissions, str) and permissions):
        return None
    snapshot = status.get("installedSnapshot")
    return InstallRecord(
        identity=name,
        provider=provider,
        installed=dict(snapshot) if isinstance(snapshot, Mapping) else None,
        installed_hash=str(status.get("installedSpecHash") or ""),
        installed_permissions_hash=str(permissions or ""),
        installed_generation=_int(status.get("installedGeneration")),
        installed_at=str(status.get("installedAt") or ""),
        setup=dict(_mapping(status.get("providerSetup"))),
        failure=Failure(
            at=str(failure.get("at", "")),
            spec_hash=str(failure.get("specHash", "")),
            generation=_int(failure.get("generation")),
            message=str(failure.get("message", "")),
        )
        if failure
        else None,
    )


def status_with_record(obj: Mapping[str, Any], record: InstallRecord) -> dict[str, Any]:
    """`obj`'s status once `record` is written into it: the install fields, the
    last failure (gone after a success), `installed` and the `Installed`
    condition for the spec as it is now."""
    status = {
        key: value
        for key, value in _mapping(obj.get("status")).items()
        if key not in (*_RECORD_FIELDS, "lastInstallFailure")
    }
    if record.installed_permissions_hash:
        status.update(
            installedPermissionsHash=record.installed_permissions_hash,
            installedGeneration=record.installed_generation,
            installedSpecHash=record.installed_hash,
            installedAt=record.installed_at,
            installedSnapshot=dict(record.installed or {}),
            providerSetup=dict(record.setup),
        )
    if record.failure is not None:
        status["lastInstallFailure"] = {
            "at": record.failure.at,
            "generation": record.failure.generation,
            "specHash": record.failure.spec_hash,
            "message": record.failure.message[:MAX_MESSAGE],
        }
    status["observedGeneration"] = status_of(obj).generation
    updated = {**obj, "status": status}
    return with_install_state(updated) or status


class _Loop:
    """An event loop in a daemon thread, for a synchronous caller."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="kubernetes-client", daemon=True
        )
        self._thread.start()

    def run(self, work: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass(slots=True)
class ClusterStatusStore:
    """Install records in the status of each WorkloadIdentity (a StatusStore)."""

    kube: Kube
    objects: Mapping[str, Mapping[str, Any]]
    """The identities as listed, by name."""
    _loop: _Loop

    def load(self) -> dict[str, InstallRecord]:
        records = (record_of(obj) for obj in self.objects.values())
        return {record.identity: record for record in records if record is not None}

    def save(self, record: InstallRecord) -> None:
        """Write `record` into the identity's status; the object is read
        afresh first, and a lost race (409) reads and writes again.

        A failure is added to the install record as just read, so that a
        success another run recorded meanwhile is kept.
        """

        def change(obj: Mapping[str, Any]) -> dict[str, Any] | None:
            written = record
            fresh = record_of(obj)
            if record.failure is not None and fresh is not None:
                written = dataclasses.replace(fresh, failure=record.failure)
            status = status_with_record(obj, written)
            return None if status == obj.get("status") else status

        try:
            self._loop.run(
                update_status(self.kube, record.identity, change), CALL_TIMEOUT_SECONDS
            )
        except ApiException as exc:
            if exc.status == 404:
                raise IdentityGone(
                    f"WorkloadIdentity {record.identity} was deleted meanwhile"
                ) from exc
            raise RecordError(
                f"cannot write the status of {record.identity}: "
                f"{describe_error(exc)}{_hint(exc, 'update on workloadidentities/status')}"
            ) from exc
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise RecordError(
                f"cannot write the status of {record.identity}: "
                f"{describe_error(exc)}; run install again"
            ) from exc


def _hint(exc: ApiException, needs: str) -> str:
    if exc.status == 401:
        return "; the API server refused the credentials: renew the kubeconfig's token"
    if exc.status == 403:
        return f"; the account needs {needs}"
    return "; try again"


@dataclass(frozen=True, slots=True)
class ClusterIdentities:
    """What the API server holds: the identities, the invalid ones, and where
    install records what it did."""

    loaded: LoadResult
    store: ClusterStatusStore


async def _list_identities(kube: Kube) -> list[dict[str, Any]]:
    try:
        return await list_all(
            kube, kube.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL
        )
    except Exception as exc:
        hint = (
            _hint(exc, "get and list on workloadidentities")
            if isinstance(exc, ApiException)
            else ""
        )
        raise ClusterError(
            f"cannot list WorkloadIdentities: {describe_error(exc)}{hint}"
        ) from exc


@contextlib.contextmanager
def cluster_identities(
    kubeconfig: str | None, *, in_cluster: bool
) -> Iterator[ClusterIdentities]:
    """The WorkloadIdentities of the cluster, for the duration of the block."""
    loop = _Loop()
    stack = contextlib.AsyncExitStack()
    try:
        configuration = loop.run(
            load_configuration(kubeconfig, in_cluster=in_cluster), CALL_TIMEOUT_SECONDS
        )
        kube = loop.run(stack.enter_async_context(connect(configuration)), 10)
        objects = [
            {"apiVersion": API_VERSION, "kind": KIND, **o}
            for o in loop.run(_list_identities(kube), CALL_TIMEOUT_SECONDS)
        ]
        by_name = {str(_mapping(o.get("metadata")).get("name", "")): o for o in objects}
        yield ClusterIdentities(
            identities_of(objects), ClusterStatusStore(kube, by_name, loop)
        )
    finally:
        with contextlib.suppress(Exception):
            loop.run(stack.aclose(), 10)
        loop.close()
