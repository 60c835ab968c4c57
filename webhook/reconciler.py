"""The drift report of a running webhook: on the replica that holds the drift
Lease, pods are watched and compared with the rules every `interval` seconds.

Each pass assesses every running pod (webhook.drift) against the cached
identities and namespaces, sets workload_identity_drift_pods{kind,identity},
and emits a Warning Event on the workload of each drift that was not there in
the previous pass. It reports; it never restarts or changes a pod.

Why a watch rather than a list per pass: the pods are needed on every pass,
and a watch costs the API server one stream instead of a list of every pod of
the cluster each time (a list without resourceVersion is served from etcd).
Only the Lease holder watches, and it keeps a small record per pod
(webhook.pods), listed in pages so that no list is held whole in memory.
Passes wait until identities, namespaces and pods are all synced, so that a
half-filled cache never reports drift. A pass shares the event loop with
admission: it works on a snapshot of the caches, in slices, and yields
between them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from webhook.cache import Cache
from webhook.drift import Assessment, DriftKind, drift_counts, survey
from webhook.drift_events import Finding, Notice, drift_event, notice_message, notice_of
from webhook.kube import Kube, call_json, describe_error
from webhook.leader import LeaseSettings
from webhook.owners import WorkloadResolver
from webhook.pods import PodRecord, PodStore, trim_pod
from webhook.watch import Reflector, WatchSettings

log = logging.getLogger(__name__)

NOT_SYNCED_POLL: Final = 0.5
"""Seconds between checks while the caches are not synced yet."""
SLICE: Final = 250
"""Pods assessed between two yields to the event loop (about 10 ms of work),
so that a pass over a large cluster never holds up admission or /token."""


@dataclass(frozen=True, slots=True)
class DriftSettings:
    interval: float = 60.0
    """Seconds between passes; 0 turns the drift report off."""
    leader_election: bool = True
    """Only the holder of the Lease reports; off: this replica always does
    (one replica only, or a local run)."""
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    page_size: int = 500
    """Pods per page of the initial list."""
    events: bool = True

    @property
    def enabled(self) -> bool:
        return self.interval > 0


DriftPodKey = tuple[str, str, DriftKind, str]
"""(pod uid, provider, kind, identity): one drift of one pod, to remember
when it was first seen."""


class DriftReconciler:
    """`run()` is the Lease holder's job: watch pods and report, until cancelled."""

    def __init__(
        self,
        kube: Kube,
        cache: Cache,
        *,
        webhook_namespace: str,
        watch: WatchSettings,
        settings: DriftSettings,
        instance: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kube = kube
        self._cache = cache
        self._webhook_namespace = webhook_namespace
        self._watch = watch
        self._settings = settings
        self._instance = instance or socket.gethostname()
        self._clock = clock
        self._workloads = WorkloadResolver(kube)
        self._lifetimes: dict[str, int] = {}
        self._since: dict[DriftPodKey, float] = {}
        self._notified: set[Notice] = set()
        self.passes = 0

    async def run(self) -> None:
        store = PodStore(self._cache, webhook_namespace=self._webhook_namespace)
        reflector = Reflector(
            store,
            self._kube.core.list_pod_for_all_namespaces,
            self._cache,
            settings=self._watch,
            page_size=self._settings.page_size,
            trim=trim_pod,
        )
        watching = asyncio.create_task(reflector.run())
        log.info("reporting drift every %g s", self._settings.interval)
        try:
            while True:
                cache = self._cache
                if not (cache.ready and cache.pods_synced):
                    await asyncio.sleep(min(self._settings.interval, NOT_SYNCED_POLL))
                    continue
                try:
                    await self.reconcile(store.pods())
                except Exception:
                    log.exception("the drift pass failed; the next one runs as usual")
                await asyncio.sleep(self._settings.interval)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            self._reset()

    def _reset(self) -> None:
        """Stop reporting: this replica's numbers would be stale."""
        self._cache.metrics.drift_pods.clear()
        self._cache.forget_pods()
        self._since.clear()
        self._notified.clear()
        self._lifetimes.clear()

    async def reconcile(self, pods: Iterable[PodRecord]) -> list[Assessment]:
        """One pass: assess, publish the gauge, tell about new drift."""
        cache = self._cache
        # One snapshot for the whole pass: the watches change the cache
        # while the pass yields.
        index, namespaces = cache.index, dict(cache.namespaces)
        invalid = frozenset(cache.invalid)
        self._lifetimes.update({i.name: i.expiration_seconds for i in index.identities})
        lifetimes = dict(self._lifetimes)
        ordered = sorted(pods, key=lambda p: p.key)
        assessments: list[Assessment] = []
        for start in range(0, len(ordered), SLICE):
            chunk = ordered[start : start + SLICE]
            assessments += survey(
                chunk, namespaces, index, invalid=invalid, lifetimes=lifetimes
            )
            await asyncio.sleep(0)
        counts = drift_counts(assessments)
        gauge = cache.metrics.drift_pods
        gauge.clear()
        for (kind, identity), pods_drifted in counts.items():
            gauge.labels(kind.value, identity).set(pods_drifted)
        await self._tell(assessments)
        self.passes += 1
        log.debug("drift pass %d: %s", self.passes, counts or "none")
        return assessments

    async def _tell(self, assessments: Sequence[Assessment]) -> None:
        now = self._clock()
        since: dict[DriftPodKey, float] = {}
        groups: dict[Notice, list[Finding]] = defaultdict(list)
        drifted = [a for a in assessments if a.drifts]
        for position, assessment in enumerate(drifted, 1):
            if position % SLICE == 0:
                await asyncio.sleep(0)
            workload = await self._workloads(assessment.pod)
            for drift in assessment.drifts:
                key = (
                    assessment.pod.uid,
                    drift.provider.value,
                    drift.kind,
                    drift.identity,
                )
                since[key] = self._since.get(key, now)
                finding = Finding(assessment, drift, workload, since[key])
                groups[notice_of(finding)].append(finding)
        self._since = since
        self._workloads.retain(a.pod for a in drifted)
        for notice in sorted(groups.keys() - self._notified):
            await self._notify(notice, groups[notice])
        self._notified = set(groups)

    async def _notify(self, notice: Notice, findings: Sequence[Finding]) -> None:
        log.warning("drift: %s", notice_message(findings))
        if not self._settings.events:
            return
        event = drift_event(notice, findings, instance=self._instance)
        try:
            await call_json(
                self._kube.core.create_namespaced_event,
                notice.namespace,
                event,
                request_timeout=self._kube.timeout,
            )
        except Exception as exc:
            # The log line and the gauge still tell; an Event is a courtesy.
            log.warning(
                "could not emit an event on %s/%s %s: %s",
                notice.namespace,
                notice.workload_kind,
                notice.workload_name,
                describe_error(exc),
            )
