"""Leader election on a Lease, so that one replica at a time does a job.

The election itself is kubernetes-asyncio's (`kubernetes_asyncio.leaderelection`
with its LeaseLock): a candidate takes the Lease when it is free or its holder
has not renewed it for `lease_duration` seconds, as measured on the
candidate's own clock, and the holder renews it every `retry_period` seconds.
Around it, this module adds what a long-running replica needs and the library
leaves to its caller:

- it stands again after losing the Lease (the library's `run` returns then);
- a failure to reach the API server (which the library raises rather than
  retries) ends the term at once, so a replica that cannot renew stops the
  job instead of running it beside the next leader;
- every call to the API server has a timeout (the library sets none);
- the job is awaited until it has stopped before another term can begin;
- on shutdown the holder frees the Lease, so that another replica takes over
  at its next retry instead of waiting for the Lease to expire;
- losing a race for the Lease (409 Conflict), which is how an election works,
  is logged at DEBUG rather than as an error with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.leaderelection.electionconfig import Config
from kubernetes_asyncio.leaderelection.leaderelection import LeaderElection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from webhook.kube import Kube, call_json, describe_error

log = logging.getLogger(__name__)

DEFAULT_LEASE_NAME: Final = "workload-identity-drift"
DEFAULT_LEASE_DURATION: Final = 15


def default_identity() -> str:
    """The pod's name (its hostname) and a random suffix, so that a restarted
    container never mistakes its predecessor's Lease for its own."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    name: str = DEFAULT_LEASE_NAME
    namespace: str = "workload-identity-system"
    identity: str = field(default_factory=default_identity)
    lease_duration: int = DEFAULT_LEASE_DURATION
    """Seconds a Lease lasts without renewal; whole seconds, as the Lease
    stores them. The library needs at least 1."""
    renew_deadline: float = 10.0
    """Seconds the holder keeps trying to renew before it gives up the job."""
    retry_period: float = 2.0
    """Seconds between attempts to take or renew the Lease (at least 1)."""
    release_on_cancel: bool = True
    """Free the Lease on shutdown, so another replica need not wait for it
    to expire."""


Job = Callable[[], Coroutine[Any, Any, None]]

_LIBRARY_LOGGERS: Final = (
    "kubernetes_asyncio.leaderelection.leaderelection",
    "kubernetes_asyncio.leaderelection.resourcelock.leaselock",
)
_LOST_RACE_MESSAGES: Final = ("failed to create lock", "failed to acquire lease")


class _LostRaceFilter(logging.Filter):
    """The library's records of a lost race for the Lease, turned into DEBUG
    records (and dropped unless DEBUG is on). Other failures pass unchanged;
    the library logs them first, so the lines that follow them lose nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        conflict = isinstance(error, ApiException) and error.status == 409
        if not conflict and not record.getMessage().endswith(_LOST_RACE_MESSAGES):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text = None, None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_LOST_RACE_FILTER: Final = _LostRaceFilter()


class _TimedCoordinationApi(client.CoordinationV1Api):
    """The Lease calls the library makes, each with a timeout."""

    def __init__(self, api_client: client.ApiClient, timeout: float) -> None:
        super().__init__(api_client)
        self._timeout = timeout

    def read_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", self._timeout)
        return super().read_namespaced_lease(*args, **kwargs)

    def create_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", self._timeout)
        return super().create_namespaced_lease(*args, **kwargs)

    def replace_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", self._timeout)
        return super().replace_namespaced_lease(*args, **kwargs)


class LeaderElector:
    """Runs `job` while this replica holds the Lease; `run()` until cancelled."""

    def __init__(
        self,
        kube: Kube,
        settings: LeaseSettings,
        job: Job,
        *,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._kube = kube
        self._settings = settings
        self._job = job
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self.leading = False
        self.terms = 0
        """How many times this replica has taken the Lease."""
        for name in _LIBRARY_LOGGERS:
            logging.getLogger(name).addFilter(_LOST_RACE_FILTER)

    @property
    def identity(self) -> str:
        return self._settings.identity

    def _election(self) -> LeaderElection:
        settings = self._settings
        lock = LeaseLock(
            settings.name,
            settings.namespace,
            settings.identity,
            self._kube.api_client,
        )
        lock.api_instance = _TimedCoordinationApi(
            self._kube.api_client,
            min(self._kube.timeout, settings.renew_deadline),
        )
        return LeaderElection(
            Config(
                lock=lock,
                lease_duration=settings.lease_duration,
                renew_deadline=settings.renew_deadline,
                retry_period=settings.retry_period,
                onstarted_leading=self._lead,
                onstopped_leading=self._stop,
            )
        )

    async def run(self) -> None:
        """Stand for election, lead, and stand again, until cancelled."""
        settings = self._settings
        log.info(
            "standing for Lease %s/%s as %s",
            settings.namespace,
            settings.name,
            settings.identity,
        )
        try:
            while True:
                try:
                    await self._election().run()
                except Exception as exc:
                    log.warning(
                        "Lease %s/%s: %s; standing again in %.0f s",
                        settings.namespace,
                        settings.name,
                        describe_error(exc),
                        settings.retry_period,
                    )
                await self._stop()
                await asyncio.sleep(settings.retry_period)
        except asyncio.CancelledError:
            held = self.leading
            await self._stop()
            if held and settings.release_on_cancel:
                await self.release()
            raise

    async def _lead(self) -> None:
        """The library's onstarted_leading, run as its own task."""
        self._task = asyncio.current_task()
        self.leading = True
        self.terms += 1
        log.info(
            "%s took Lease %s/%s",
            self.identity,
            self._settings.namespace,
            self._settings.name,
        )
        if self._on_change is not None:
            self._on_change(True)
        try:
            await self._job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the job run by the Lease holder failed")

    async def _stop(self) -> None:
        """End the job, if it runs, and wait until it has ended."""
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.leading:
            self.leading = False
            log.info("%s no longer holds the Lease: the job stopped", self.identity)
            if self._on_change is not None:
                self._on_change(False)

    async def release(self) -> None:
        """Free the Lease if this replica still holds it, so that another
        replica takes it at its next attempt."""
        settings = self._settings
        api = self._kube.coordination
        try:
            lease = await call_json(
                api.read_namespaced_lease,
                settings.name,
                settings.namespace,
                request_timeout=self._kube.timeout,
            )
            spec = lease.get("spec") if isinstance(lease, dict) else None
            if (
                not isinstance(spec, dict)
                or spec.get("holderIdentity") != self.identity
            ):
                return
            spec.pop("holderIdentity", None)
            spec["leaseDurationSeconds"] = 1
            await call_json(
                api.replace_namespaced_lease,
                settings.name,
                settings.namespace,
                lease,
                request_timeout=self._kube.timeout,
            )
        except Exception as exc:
            log.warning(
                "could not free Lease %s/%s (%s): another replica takes over "
                "once it expires",
                settings.namespace,
                settings.name,
                describe_error(exc),
            )
        else:
            log.info("freed Lease %s/%s", settings.namespace, settings.name)
