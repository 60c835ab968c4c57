"""The in-memory state every admission reads: identities and namespaces.

Sources (a file, or the Kubernetes API) replace snapshots here; readers take
the current snapshot without locks, since swapping a reference is atomic.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Final

from webhook.identities import Identity, IdentityError, Provider
from webhook.metrics import WebhookMetrics
from webhook.namespaces import NamespaceInfo
from webhook.scope import IdentityIndex

log = logging.getLogger(__name__)


IDENTITIES: Final = "workloadidentities"
NAMESPACES: Final = "namespaces"
PODS: Final = "pods"
"""Resource names, as the API server and the cache_synced metric spell them.
Pods are watched by the replica that reports drift only, and never count
towards readiness."""


class Cache:
    def __init__(self, metrics: WebhookMetrics) -> None:
        self.metrics = metrics
        self.index = IdentityIndex(())
        self.namespaces: dict[str, NamespaceInfo] = {}
        self.invalid: dict[str, IdentityError] = {}
        self.identities_synced = False
        self.namespaces_synced = False
        self.pods_synced = False

    @property
    def ready(self) -> bool:
        return self.identities_synced and self.namespaces_synced

    def set_identities(
        self, identities: Iterable[Identity], errors: Iterable[IdentityError]
    ) -> None:
        self.index = IdentityIndex(identities)
        self.invalid = {error.document: error for error in errors}
        for provider in Provider:
            count = sum(1 for i in self.index.identities if i.provider is provider)
            self.metrics.identities_loaded.labels(provider.value).set(count)
        self.metrics.identities_invalid.set(len(self.invalid))
        self.identities_synced = True
        self.metrics.cache_synced.labels(IDENTITIES).set(1)

    def set_namespaces(self, namespaces: dict[str, NamespaceInfo]) -> None:
        self.namespaces = dict(namespaces)
        self.namespaces_synced = True
        self.metrics.cache_synced.labels(NAMESPACES).set(1)

    def put_namespace(self, info: NamespaceInfo) -> None:
        self.namespaces[info.name] = info

    def drop_namespace(self, name: str) -> None:
        self.namespaces.pop(name, None)

    def mark_unsynced(self, resource: str) -> None:
        """`resource` is no longer known to be current (its watch has not
        recovered): the webhook reports not ready until it is listed again
        (pods: drift is not reported until they are listed again)."""
        if resource == IDENTITIES:
            self.identities_synced = False
        elif resource == NAMESPACES:
            self.namespaces_synced = False
        elif resource == PODS:
            self.pods_synced = False
        else:
            raise ValueError(f"unknown resource {resource!r}")
        self.metrics.cache_synced.labels(resource).set(0)

    def mark_pods_synced(self) -> None:
        self.pods_synced = True
        self.metrics.cache_synced.labels(PODS).set(1)

    def forget_pods(self) -> None:
        """This replica stopped watching pods (it no longer reports drift): the
        pods series goes away rather than read 0, which would look like a
        broken watch."""
        self.pods_synced = False
        with contextlib.suppress(KeyError):
            self.metrics.cache_synced.remove(PODS)
