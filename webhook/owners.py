"""The workload a pod belongs to, and how to give its pods new credentials.

A Deployment's pods are owned by a ReplicaSet, which the Deployment owns: the
workload is the Deployment, read from the ReplicaSet's ownerReferences (which
carry its uid, so that `kubectl describe deployment` shows our Events). When
the ReplicaSet cannot be read, the `pod-template-hash` label still names the
Deployment, as the Deployment controller names its ReplicaSets
`<deployment>-<hash>`. StatefulSets, DaemonSets and Jobs own their pods
directly; a pod without a controller is its own workload.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from kubernetes_asyncio.client.exceptions import ApiException

from webhook.kube import Kube, call_json, describe_error
from webhook.pods import OwnerRef, PodRecord, controller_of

log = logging.getLogger(__name__)

API_VERSIONS: Final = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "ReplicaSet": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
    "Pod": "v1",
}
ROLLOUT_KINDS: Final = frozenset({"Deployment", "StatefulSet", "DaemonSet"})


@dataclass(frozen=True, slots=True)
class Workload:
    kind: str
    name: str
    namespace: str
    uid: str = ""
    api_version: str = ""

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"

    def as_json(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name}


def _from_ref(ref: OwnerRef, namespace: str) -> Workload:
    return Workload(
        kind=ref.kind,
        name=ref.name,
        namespace=namespace,
        uid=ref.uid,
        api_version=ref.api_version or API_VERSIONS.get(ref.kind, ""),
    )


def deployment_by_name(pod: PodRecord) -> Workload | None:
    """The Deployment that the ReplicaSet's name and the pod's
    pod-template-hash point to (without its uid), or None."""
    owner = pod.owner
    suffix = f"-{pod.template_hash}"
    if owner is None or owner.kind != "ReplicaSet" or not pod.template_hash:
        return None
    if not owner.name.endswith(suffix) or owner.name == suffix:
        return None
    return Workload(
        "Deployment", owner.name.removesuffix(suffix), pod.namespace, "", "apps/v1"
    )


def workload_of(pod: PodRecord, replica_set_owner: OwnerRef | None = None) -> Workload:
    """The pod's workload; `replica_set_owner` is the controller of the pod's
    ReplicaSet, when it was read."""
    owner = pod.owner
    if owner is None:
        return Workload("Pod", pod.name, pod.namespace, pod.uid, "v1")
    if owner.kind == "ReplicaSet":
        if replica_set_owner is not None:
            return _from_ref(replica_set_owner, pod.namespace)
        guessed = deployment_by_name(pod)
        if guessed is not None:
            return guessed
    return _from_ref(owner, pod.namespace)


def advice(workload: Workload) -> str:
    """What gives the workload's pods the credentials the rules give them now:
    the webhook acts when a pod is created, so its pods must be re-created."""
    ns, kind, name = workload.namespace, workload.kind, workload.name
    if kind in ROLLOUT_KINDS:
        return f"run `kubectl -n {ns} rollout restart {kind.lower()}/{name}`"
    if kind == "Job":
        return (
            f"a Job's pods keep what they were admitted with: delete Job {name} and "
            "create it again, or let the next run of its CronJob pick the change up"
        )
    if kind == "ReplicaSet":
        return (
            f"delete the pods of ReplicaSet {name} (`kubectl -n {ns} delete pod "
            "...`) so that it re-creates them"
        )
    if kind == "Pod":
        return (
            f"delete pod {name} and create it again (`kubectl -n {ns} delete pod "
            f"{name}`, then apply its manifest)"
        )
    return f"re-create the pods of {kind} {name} the way its controller does it"


class WorkloadResolver:
    """Pods to workloads in a cluster: the ReplicaSets behind Deployments are
    read once each and remembered by uid (a ReplicaSet never changes owner)."""

    def __init__(self, kube: Kube) -> None:
        self._kube = kube
        self._owners: dict[tuple[str, str, str], OwnerRef | None] = {}
        self._warned = False

    async def __call__(self, pod: PodRecord) -> Workload:
        owner = pod.owner
        if owner is None or owner.kind != "ReplicaSet":
            return workload_of(pod)
        key = (pod.namespace, owner.name, owner.uid)
        if key not in self._owners:
            try:
                self._owners[key] = await self._read(pod.namespace, owner)
            except Exception as exc:
                # Not remembered: read again next time. Meanwhile the name
                # still points at the Deployment.
                if not self._warned:
                    log.warning(
                        "cannot read ReplicaSet %s/%s to find its Deployment: %s; "
                        "naming the Deployment from the pod-template-hash label",
                        pod.namespace,
                        owner.name,
                        describe_error(exc),
                    )
                    self._warned = True
                return workload_of(pod)
        return workload_of(pod, self._owners[key])

    def retain(self, pods: Iterable[PodRecord]) -> None:
        """Forget the ReplicaSets no pod in `pods` belongs to."""
        wanted = {
            (p.namespace, p.owner.name, p.owner.uid)
            for p in pods
            if p.owner is not None and p.owner.kind == "ReplicaSet"
        }
        self._owners = {k: v for k, v in self._owners.items() if k in wanted}

    async def _read(self, namespace: str, owner: OwnerRef) -> OwnerRef | None:
        try:
            found = await call_json(
                self._kube.apps.read_namespaced_replica_set,
                owner.name,
                namespace,
                request_timeout=self._kube.timeout,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        metadata = found.get("metadata") if isinstance(found, dict) else None
        metadata = metadata if isinstance(metadata, dict) else {}
        if owner.uid and metadata.get("uid") != owner.uid:
            return None  # a ReplicaSet of the same name, created since
        return controller_of(metadata.get("ownerReferences"))


def replica_set_owners(documents: Iterable[Any]) -> dict[tuple[str, str], OwnerRef]:
    """The controllers of the ReplicaSets among manifests, by (namespace, name)."""
    found: dict[tuple[str, str], OwnerRef] = {}
    for document in documents:
        if not isinstance(document, Mapping):
            continue
        if document.get("kind") in ("List", "ReplicaSetList"):
            items = document.get("items")
            found.update(replica_set_owners(items if isinstance(items, list) else []))
            continue
        if document.get("kind") != "ReplicaSet":
            continue
        metadata = document.get("metadata")
        metadata = metadata if isinstance(metadata, Mapping) else {}
        owner = controller_of(metadata.get("ownerReferences"))
        namespace, name = metadata.get("namespace"), metadata.get("name")
        if owner is not None and isinstance(namespace, str) and isinstance(name, str):
            found[(namespace, name)] = owner
    return found
