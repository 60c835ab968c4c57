"""Tell admins about invalid WorkloadIdentities where they look.

Besides the log line and the workload_identity_identities_invalid gauge (kept
by the watch and the cache), an invalid identity gets the condition
`Valid: False` naming the field at fault, and a Warning event; once fixed it
gets `Valid: True`. An identity that was never invalid is not written to, so
starting a replica costs no writes. For an installed identity the webhook also
keeps `installed` and the `Installed` condition in step with edits of
`spec.permissions`, so `kubectl get workloadidentities` shows a pending install
without anyone running `status`.

Writes run in the background, one identity at a time, never in the watch's
path. Every replica reports, and each write carries the resourceVersion it
read: the replica that loses the race reads again, finds the condition already
set and writes nothing, so each change yields one event.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from kubernetes_asyncio.client.exceptions import ApiException

from webhook.identities import API_VERSION, KIND, IdentityError, parse_identity
from webhook.kube import Kube, call_json, describe_error
from webhook.status import (
    CONDITION_VALID,
    status_of,
    timestamp,
    update_status,
    validity,
    with_condition,
    with_install_state,
)
from webhook.watch import Backoff

log = logging.getLogger(__name__)

EVENT_NAMESPACE: Final = "default"
"""Events about cluster-scoped objects go to `default`, as client-go's recorder
puts them, and `kubectl describe workloadidentity` finds them there."""

COMPONENT: Final = "workload-identity-webhook"

_MAX_EVENT_MESSAGE: Final = 1024


def parse_error(obj: Mapping[str, Any]) -> IdentityError | None:
    try:
        parse_identity(obj)
    except IdentityError as error:
        return error
    return None


@dataclass(frozen=True, slots=True)
class Reported:
    """What the webhook reports in one identity's status."""

    status: dict[str, Any] | None
    """The status to write, or None when it already says everything."""
    error: IdentityError | None
    """Why the identity is invalid, if it is."""
    validity_changed: bool
    """The `Valid` condition is among the changes (an event is due if invalid)."""


def reported_status(obj: Mapping[str, Any]) -> Reported:
    """`obj`'s status with its `Valid` condition, `installed` flag and
    `Installed` condition brought up to date with its current spec."""
    error = parse_error(obj)
    current = status_of(obj)
    raw = obj.get("status")
    status = raw if isinstance(raw, Mapping) else {}
    valid = None
    if error is not None or current.condition(CONDITION_VALID) is not None:
        valid = with_condition(status, validity(error, current.generation))
    installing = with_install_state({**obj, "status": valid or status})
    return Reported(installing or valid, error, valid is not None)


class IdentityReporter:
    """Records each identity's validity in its status, and an event when one
    turns invalid. Call it with every object the watch delivers; run `run()`."""

    def __init__(
        self,
        kube: Kube,
        *,
        instance: str | None = None,
        attempts: int = 3,
        backoff: Backoff | None = None,
    ) -> None:
        self._kube = kube
        self._instance = instance or socket.gethostname()
        self._attempts = attempts
        self._backoff = backoff or Backoff(1.0, 10.0)
        self._pending: dict[str, None] = {}
        """Names to look at, oldest first; a name reported twice is written once."""
        self._wake = asyncio.Event()

    def __call__(self, obj: Mapping[str, Any]) -> None:
        name = status_of(obj).name
        if reported_status(obj).status is None:
            self._pending.pop(name, None)
            return
        self._pending[name] = None
        self._wake.set()

    async def run(self) -> None:
        """Write what was reported, oldest first, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                name = next(iter(self._pending))
                del self._pending[name]
                await self._record(name)

    async def _record(self, name: str) -> None:
        read: dict[str, Any] = {}
        outcome: list[Reported] = []

        def change(fresh: Mapping[str, Any]) -> dict[str, Any] | None:
            # Decide on the object as just read: the one reported may be old.
            read.update(fresh)
            outcome[:] = [
                reported_status({"apiVersion": API_VERSION, "kind": KIND, **fresh})
            ]
            return outcome[0].status

        self._backoff.reset()
        for attempt in range(1, self._attempts + 1):
            try:
                written = await update_status(self._kube, name, change)
            except ApiException as exc:
                if exc.status == 404:
                    return  # deleted meanwhile: nothing left to report on
                failure: BaseException = exc
            except Exception as exc:
                failure = exc
            else:
                error = outcome[0].error if outcome else None
                if written:
                    log.debug(
                        "status of WorkloadIdentity %s: Valid=%s", name, not error
                    )
                if written and error is not None and outcome[0].validity_changed:
                    await self._emit(read, error)
                return
            if attempt < self._attempts:
                await asyncio.sleep(self._backoff.next())
        log.warning(
            "could not record the validity of WorkloadIdentity %s in its status: %s; "
            "the log and workload_identity_identities_invalid still report it",
            name,
            describe_error(failure),
        )

    async def _emit(self, obj: Mapping[str, Any], error: IdentityError) -> None:
        metadata = obj.get("metadata")
        metadata = metadata if isinstance(metadata, Mapping) else {}
        name = str(metadata.get("name", ""))
        now = timestamp()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{time.time_ns():x}"},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": name,
                "uid": metadata.get("uid"),
                "resourceVersion": metadata.get("resourceVersion"),
            },
            "type": "Warning",
            "reason": "InvalidSpec",
            "message": str(error)[:_MAX_EVENT_MESSAGE],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await call_json(
                self._kube.core.create_namespaced_event,
                EVENT_NAMESPACE,
                event,
                request_timeout=self._kube.timeout,
            )
        except Exception as exc:
            # The condition is written already; an event is a courtesy.
            log.warning(
                "could not emit an event for WorkloadIdentity %s: %s",
                name,
                describe_error(exc),
            )
