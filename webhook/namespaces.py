"""Namespaces as projects: which project a namespace belongs to, if any."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from webhook.documents import DocumentFileError, read_documents

PROJECT_LABEL: Final = "workloadidentity.dev/project"
SYSTEM_NAMESPACES: Final = frozenset({"kube-system", "kube-public", "kube-node-lease"})


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    name: str
    project: str | None
    """The project label's value; None when the namespace is not a project."""
    excluded: str = ""
    """Why pods here are never injected (system or webhook namespace), or ""."""


def describe_namespace(
    name: str, labels: Mapping[str, str] | None, *, webhook_namespace: str
) -> NamespaceInfo:
    project = (labels or {}).get(PROJECT_LABEL) or None
    excluded = ""
    if name in SYSTEM_NAMESPACES:
        excluded = f"namespace {name} is a system namespace"
    elif name == webhook_namespace:
        excluded = f"namespace {name} is the webhook's own namespace"
    return NamespaceInfo(name=name, project=project, excluded=excluded)


def namespaces_from_documents(
    documents: Iterable[Any], *, webhook_namespace: str
) -> dict[str, NamespaceInfo]:
    found: dict[str, NamespaceInfo] = {}
    for document in documents:
        if not isinstance(document, Mapping):
            continue
        if document.get("kind") == "List":
            found.update(
                namespaces_from_documents(
                    document.get("items") or [], webhook_namespace=webhook_namespace
                )
            )
            continue
        if document.get("kind") != "Namespace":
            continue
        metadata = document.get("metadata") or {}
        name = metadata.get("name")
        if isinstance(name, str) and name:
            labels = metadata.get("labels")
            found[name] = describe_namespace(
                name,
                labels if isinstance(labels, Mapping) else None,
                webhook_namespace=webhook_namespace,
            )
    return found


class NamespaceFileError(DocumentFileError):
    """A namespaces file that cannot be read."""


def load_namespace_file(
    path: str, *, webhook_namespace: str
) -> dict[str, NamespaceInfo]:
    documents = read_documents(path, what="namespaces file", error=NamespaceFileError)
    return namespaces_from_documents(documents, webhook_namespace=webhook_namespace)
