"""What `workloads` reports on, read once: pods, namespaces, identities and
the workloads of the pods, from the API server or from manifest files.

From files, pods come from Pod documents and Lists (`kubectl get pods -A -o
yaml`); Namespace and ReplicaSet documents in the same files are used too, so
`kubectl get namespaces,replicasets,pods -A -o yaml` is a complete input.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import yaml
from kubernetes_asyncio.client.exceptions import ApiException

from webhook.identities import (
    API_VERSION,
    KIND,
    LoadResult,
    load_identity_file,
    parse_identities,
)
from webhook.kube import GROUP, PLURAL, VERSION, Kube, call_json, describe_error
from webhook.namespaces import (
    NamespaceInfo,
    load_namespace_file,
    namespaces_from_documents,
)
from webhook.owners import Workload, replica_set_owners, workload_of
from webhook.pods import OwnerRef, PodRecord, pod_record, pods_from_documents
from webhook.watch import describe_object

log = logging.getLogger(__name__)

PAGE_SIZE: Final = 500


class InventoryError(Exception):
    """The inventory cannot be read; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Inventory:
    pods: list[PodRecord]
    namespaces: dict[str, NamespaceInfo]
    identities: LoadResult
    replica_sets: dict[tuple[str, str], OwnerRef] = field(default_factory=dict)
    """The controller of each ReplicaSet read, by (namespace, name)."""

    def workload(self, pod: PodRecord) -> Workload:
        owner = pod.owner
        if owner is not None and owner.kind == "ReplicaSet":
            return workload_of(pod, self.replica_sets.get((pod.namespace, owner.name)))
        return workload_of(pod)


# --- files ------------------------------------------------------------------


def _documents(path: str) -> list[Any]:
    try:
        with open(path, encoding="utf-8") as stream:
            return list(yaml.safe_load_all(stream))
    except OSError as exc:
        raise InventoryError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise InventoryError(f"{path} is neither YAML nor JSON: {exc}") from exc


def read_files(
    pod_files: Sequence[str],
    *,
    identities_file: str,
    namespaces_file: str | None,
    webhook_namespace: str,
) -> Inventory:
    documents = [doc for path in pod_files for doc in _documents(path)]
    namespaces = namespaces_from_documents(
        documents, webhook_namespace=webhook_namespace
    )
    if namespaces_file:
        namespaces.update(
            load_namespace_file(namespaces_file, webhook_namespace=webhook_namespace)
        )
    return Inventory(
        pods=pods_from_documents(documents),
        namespaces=namespaces,
        identities=load_identity_file(identities_file),
        replica_sets=replica_set_owners(documents),
    )


# --- the API server ---------------------------------------------------------


async def list_all(
    kube: Kube, call: Callable[..., Awaitable[Any]], *args: Any
) -> list[dict[str, Any]]:
    """Every item of a list, read in pages."""
    items: list[dict[str, Any]] = []
    token = ""
    while True:
        paging: dict[str, Any] = {"limit": PAGE_SIZE}
        if token:
            paging["_continue"] = token
        body = await call_json(call, *args, request_timeout=60.0, **paging)
        items += [i for i in body.get("items") or [] if isinstance(i, dict)]
        token = (body.get("metadata") or {}).get("continue") or ""
        if not token:
            return items


async def _namespaces(
    kube: Kube, namespace: str | None, webhook_namespace: str
) -> dict[str, NamespaceInfo]:
    if namespace is None:
        objects = await list_all(kube, kube.core.list_namespace)
    else:
        try:
            objects = [
                await call_json(
                    kube.core.read_namespace, namespace, request_timeout=kube.timeout
                )
            ]
        except ApiException as exc:
            if exc.status != 404:
                raise
            raise InventoryError(f"namespace {namespace} does not exist") from exc
    described = (describe_object(o, webhook_namespace) for o in objects)
    return {info.name: info for info in described if info is not None}


async def _replica_sets(
    kube: Kube, namespace: str | None
) -> dict[tuple[str, str], OwnerRef]:
    try:
        if namespace is None:
            objects = await list_all(
                kube, kube.apps.list_replica_set_for_all_namespaces
            )
        else:
            objects = await list_all(
                kube, kube.apps.list_namespaced_replica_set, namespace
            )
    except ApiException as exc:
        log.warning(
            "cannot list ReplicaSets (%s): Deployments are named from their "
            "pods' pod-template-hash label",
            describe_error(exc),
        )
        return {}
    return replica_set_owners(objects)


def identities_of(objects: Iterable[dict[str, Any]]) -> LoadResult:
    # Items of a list may omit apiVersion and kind; the resource fixes them.
    return parse_identities(
        {"apiVersion": API_VERSION, "kind": KIND, **o} for o in objects
    )


async def read_cluster(
    kube: Kube, *, webhook_namespace: str, namespace: str | None = None
) -> Inventory:
    """One consistent-enough reading: identities, namespaces, ReplicaSets and
    pods (of `namespace` only, when given), each listed once."""
    what = "WorkloadIdentities"
    try:
        identities = identities_of(
            await list_all(
                kube, kube.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL
            )
        )
        what = "namespaces"
        namespaces = await _namespaces(kube, namespace, webhook_namespace)
        what = "pods"
        if namespace is None:
            objects = await list_all(kube, kube.core.list_pod_for_all_namespaces)
        else:
            objects = await list_all(kube, kube.core.list_namespaced_pod, namespace)
    except InventoryError:
        raise
    except Exception as exc:
        hint = (
            "; the account needs get and list on it (the webhook's ClusterRole has them)"
            if isinstance(exc, ApiException) and exc.status in (401, 403)
            else ""
        )
        raise InventoryError(
            f"cannot list {what}: {describe_error(exc)}{hint}"
        ) from exc
    records = (pod_record(o) for o in objects)
    return Inventory(
        pods=[r for r in records if r is not None],
        namespaces=namespaces,
        identities=identities,
        replica_sets=await _replica_sets(kube, namespace),
    )
