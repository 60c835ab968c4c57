"""Pods as the drift report reads them: a small record per pod, parsed from a
Pod object (a watch, a list, a manifest file).

The replica that reports drift watches every pod of the cluster, so it keeps
only what the report reads: the pod's name, uid and controller, its
`workloadidentity.dev/` annotations, whether it runs Windows, has finished or
is being deleted, and the signing mode of the sidecar the webhook gave it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from webhook.admission import MIRROR_ANNOTATION
from webhook.cache import PODS, Cache
from webhook.mutation import ANNOTATION_PREFIX, INJECT_ANNOTATION, opts_out
from webhook.namespaces import SYSTEM_NAMESPACES
from webhook.sidecar_spec import MARKER_ENV, SIDECAR_NAME

log = logging.getLogger(__name__)

TEMPLATE_HASH_LABEL: Final = "pod-template-hash"
FINISHED_PHASES: Final = frozenset({"Succeeded", "Failed"})
MODE_ENV: Final = "WI_MODE"


@dataclass(frozen=True, slots=True)
class OwnerRef:
    """The pod's controller, as its ownerReferences name it."""

    kind: str
    name: str
    uid: str = ""
    api_version: str = ""


@dataclass(frozen=True, slots=True)
class PodRecord:
    namespace: str
    name: str
    uid: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """Only the `workloadidentity.dev/` ones (and the mirror-pod marker)."""
    owner: OwnerRef | None = None
    template_hash: str = ""
    """The `pod-template-hash` label: a Deployment's ReplicaSet is named
    `<deployment>-<hash>`, which names the Deployment when the ReplicaSet
    cannot be read."""
    windows: bool = False
    finished: bool = False
    """Phase Succeeded or Failed: the pod runs no more."""
    terminating: bool = False
    signing_mode: str = ""
    """WI_MODE of the sidecar the webhook injected: issuer, key, or "" when
    the pod has no such sidecar."""

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def controller_of(references: Any) -> OwnerRef | None:
    """The ownerReference marked controller, else the only one there is."""
    refs = [_mapping(r) for r in _list(references)]
    chosen = next((r for r in refs if r.get("controller") is True), None)
    if chosen is None and len(refs) == 1:
        chosen = refs[0]
    if chosen is None or not chosen.get("kind") or not chosen.get("name"):
        return None
    return OwnerRef(
        kind=str(chosen["kind"]),
        name=str(chosen["name"]),
        uid=str(chosen.get("uid") or ""),
        api_version=str(chosen.get("apiVersion") or ""),
    )


def _ours(container: Mapping[str, Any]) -> bool:
    name = container.get("name")
    return (
        isinstance(name, str)
        and name.startswith(SIDECAR_NAME)
        and any(
            _mapping(e).get("name") == MARKER_ENV for e in _list(container.get("env"))
        )
    )


def _sidecars(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for key in ("initContainers", "containers"):
        for container in _list(spec.get(key)):
            container = _mapping(container)
            if _ours(container):
                yield container


def _signing_mode(spec: Mapping[str, Any]) -> str:
    for container in _sidecars(spec):
        for entry in _list(container.get("env")):
            entry = _mapping(entry)
            if entry.get("name") == MODE_ENV and isinstance(entry.get("value"), str):
                return str(entry["value"])
    return ""


def _is_windows(spec: Mapping[str, Any]) -> bool:
    # As admission decides it: spec.os, or a node selector for Windows.
    if _mapping(spec.get("os")).get("name") == "windows":
        return True
    return _mapping(spec.get("nodeSelector")).get("kubernetes.io/os") == "windows"


def _kept_annotations(annotations: Mapping[str, Any]) -> dict[str, str]:
    return {
        str(k): str(v)
        for k, v in annotations.items()
        if isinstance(k, str)
        and (k.startswith(ANNOTATION_PREFIX) or k == MIRROR_ANNOTATION)
    }


def pod_record(obj: Mapping[str, Any]) -> PodRecord | None:
    """The record of a Pod object (or of a TrimmedPod), or None without a
    namespace and name."""
    if isinstance(obj, TrimmedPod):
        return obj.record
    metadata = _mapping(obj.get("metadata"))
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not isinstance(namespace, str) or not namespace or not isinstance(name, str):
        return None
    spec = _mapping(obj.get("spec"))
    labels = _mapping(metadata.get("labels"))
    return PodRecord(
        namespace=namespace,
        name=name,
        uid=str(metadata.get("uid") or ""),
        annotations=_kept_annotations(_mapping(metadata.get("annotations")))
        # A label opt-out counts as the annotation, as it does at admission.
        | ({INJECT_ANNOTATION: "false"} if opts_out(metadata) else {}),
        owner=controller_of(metadata.get("ownerReferences")),
        template_hash=str(labels.get(TEMPLATE_HASH_LABEL) or ""),
        windows=_is_windows(spec),
        finished=_mapping(obj.get("status")).get("phase") in FINISHED_PHASES,
        terminating=bool(metadata.get("deletionTimestamp")),
        signing_mode=_signing_mode(spec),
    )


class TrimmedPod(Mapping[str, Any]):
    """A pod reduced to its record, as a watch store receives it: it still
    reads as a (very small) Pod object, so a Reflector can take its
    resourceVersion, and pod_record returns the record without parsing again."""

    __slots__ = ("_object", "record")

    def __init__(self, record: PodRecord, resource_version: str) -> None:
        self.record = record
        self._object: dict[str, Any] = {
            "metadata": {
                "namespace": record.namespace,
                "name": record.name,
                "resourceVersion": resource_version,
            }
        }

    def __getitem__(self, key: str) -> Any:
        return self._object[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._object)

    def __len__(self) -> int:
        return len(self._object)


def trim_pod(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The Reflector's trim for pods: a list page is parsed into records as it
    arrives, so neither the whole list nor a parse of it happens at once."""
    record = pod_record(obj)
    if record is None:
        return {"metadata": {}}
    version = _mapping(obj.get("metadata")).get("resourceVersion")
    return TrimmedPod(record, str(version or ""))


def pods_from_documents(documents: Iterable[Any]) -> list[PodRecord]:
    """Pods in manifests: Pod documents, and the items of a List (what
    `kubectl get pods -A -o yaml` writes)."""
    found: list[PodRecord] = []
    for document in documents:
        if not isinstance(document, Mapping):
            continue
        if document.get("kind") in ("List", "PodList"):
            found += pods_from_documents(_list(document.get("items")))
        elif document.get("kind", "Pod") == "Pod":
            record = pod_record(document)
            if record is not None:
                found.append(record)
    return found


def served_namespace(namespace: str, webhook_namespace: str) -> bool:
    """Whether the webhook may ever inject pods of this namespace: not a
    system namespace, not its own. Pods elsewhere are not kept."""
    return namespace not in SYSTEM_NAMESPACES and namespace != webhook_namespace


class PodStore:
    """Pods into memory, as records; pods of namespaces the webhook never
    serves (system namespaces and its own) are not kept."""

    resource = PODS

    def __init__(self, cache: Cache, *, webhook_namespace: str) -> None:
        self._cache = cache
        self._webhook_namespace = webhook_namespace
        self._pods: dict[tuple[str, str], PodRecord] = {}

    def pods(self) -> list[PodRecord]:
        return list(self._pods.values())

    def __len__(self) -> int:
        return len(self._pods)

    def _keeps(self, record: PodRecord) -> bool:
        return served_namespace(record.namespace, self._webhook_namespace)

    def replace(self, objects: Sequence[Mapping[str, Any]]) -> None:
        records = (pod_record(o) for o in objects)
        self._pods = {r.key: r for r in records if r is not None and self._keeps(r)}
        self._cache.mark_pods_synced()
        log.info("synced %d pods", len(self._pods))

    def apply(self, change: str, obj: Mapping[str, Any]) -> None:
        record = pod_record(obj)
        if record is None or not self._keeps(record):
            return
        if change == "DELETED":
            self._pods.pop(record.key, None)
        else:
            self._pods[record.key] = record
