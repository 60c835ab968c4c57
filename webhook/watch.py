"""List, then watch: keeps the Cache current from the API server.

A Reflector lists its resource and hands the whole list to its store, then
watches from the list's resourceVersion and hands over each change:

- BOOKMARK moves the resourceVersion on and changes nothing else;
- the server ending the stream (its timeoutSeconds) resumes the watch from
  the last resourceVersion seen, at once;
- 410 Gone (the history after that resourceVersion is compacted) lists again;
- any other failure (a refused or dropped connection, a 5xx, a stream that
  ends early) resumes after a capped, jittered backoff;
- after `unready_after` seconds of nothing but failures the resource is marked
  unsynced, so /readyz fails rather than admit pods by stale rules, and the
  next success lists afresh.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Protocol

import aiohttp
from kubernetes_asyncio import watch
from kubernetes_asyncio.client.exceptions import ApiException

from webhook.cache import IDENTITIES, NAMESPACES, Cache
from webhook.identities import (
    API_VERSION,
    KIND,
    Identity,
    IdentityError,
    parse_identity,
)
from webhook.kube import (
    GROUP,
    PLURAL,
    VERSION,
    Kube,
    api_error,
    call_json,
    describe_error,
    unavailable,
)
from webhook.namespaces import NamespaceInfo, describe_namespace

log = logging.getLogger(__name__)

ListCall = Callable[..., Awaitable[Any]]
"""A kubernetes-asyncio list method, which also watches with `watch=True`."""

Trim = Callable[[Mapping[str, Any]], Mapping[str, Any]]
"""Keeps only the fields a store reads, for resources with large objects."""

CHANGES: Final = frozenset({"ADDED", "MODIFIED", "DELETED"})


@dataclass(frozen=True, slots=True)
class WatchSettings:
    timeout_seconds: int = 300
    """Server-side timeout of one watch request. Each request asks for a random
    value between this and twice it, as client-go does, so that replicas do
    not reconnect in step."""
    backoff_initial: float = 0.5
    """Seconds before the first retry after a failure; doubles per failure."""
    backoff_max: float = 30.0
    """Cap of the retry delay, so a recovered API server is noticed soon."""
    unready_after: float = 60.0
    """Seconds of failures after which the resource counts as stale: the
    webhook turns unready rather than decide by rules it cannot refresh."""
    list_timeout: float = 60.0
    """Seconds for one full list, which can be large."""
    connect_timeout: float = 10.0
    """Seconds to open a connection; the read timeout of a watch is its
    server-side timeout plus this, which catches a stream that hangs."""


class Backoff:
    """Capped exponential backoff with jitter: the n-th delay is random in
    [d/2, d] where d = min(cap, initial * 2**n), so replicas spread out but
    never retry at once in a tight loop."""

    def __init__(
        self, initial: float, cap: float, *, rng: Callable[[], float] = random.random
    ) -> None:
        self.initial = initial
        self.cap = cap
        self._rng = rng
        self._failures = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.initial * 2.0 ** min(self._failures, 32))
        self._failures += 1
        return ceiling / 2 + self._rng() * ceiling / 2

    def reset(self) -> None:
        self._failures = 0


class Store(Protocol):
    """Where a Reflector delivers one resource's objects (plain dicts)."""

    resource: str

    def replace(self, objects: Sequence[Mapping[str, Any]]) -> None:
        """The complete set as listed: whatever is not in it is gone."""

    def apply(self, change: str, obj: Mapping[str, Any]) -> None:
        """One ADDED, MODIFIED or DELETED object."""


def _name(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return name if isinstance(name, str) else ""


Report = Callable[[Mapping[str, Any]], None]
"""Told of every WorkloadIdentity the watch delivers (see webhook.report)."""


class IdentityStore:
    """WorkloadIdentities into the cache. An invalid one is logged, counted and
    reported, and skipped; the others are served as if it did not exist."""

    resource = IDENTITIES

    def __init__(self, cache: Cache, *, report: Report | None = None) -> None:
        self._cache = cache
        self._report = report
        self._valid: dict[str, Identity] = {}
        self._invalid: dict[str, IdentityError] = {}

    def replace(self, objects: Sequence[Mapping[str, Any]]) -> None:
        known = self._invalid
        self._valid, self._invalid = {}, {}
        for obj in objects:
            self._put(obj, known)
        self._publish()
        log.info(
            "synced %d WorkloadIdentities (%d invalid, skipped)",
            len(self._valid),
            len(self._invalid),
        )

    def apply(self, change: str, obj: Mapping[str, Any]) -> None:
        name = _name(obj)
        if change == "DELETED":
            self._valid.pop(name, None)
            self._invalid.pop(name, None)
            log.info("WorkloadIdentity %s deleted", name)
        else:
            self._put(obj, self._invalid)
        self._publish()

    def _put(self, obj: Mapping[str, Any], known: Mapping[str, IdentityError]) -> None:
        name = _name(obj)
        # Items of a list may omit apiVersion and kind; the resource fixes them.
        document = {"apiVersion": API_VERSION, "kind": KIND, **obj}
        before = known.get(name)
        try:
            identity = parse_identity(document)
        except IdentityError as error:
            self._valid.pop(name, None)
            self._invalid[name] = error
            if before is None or str(before) != str(error):
                log.warning(
                    "%s; the identity is skipped until this is fixed, the others "
                    "are unaffected",
                    error,
                )
        else:
            self._valid[name] = identity
            self._invalid.pop(name, None)
            if before is not None:
                log.info("WorkloadIdentity %s is valid again", name)
            log.debug("WorkloadIdentity %s generation %d", name, identity.generation)
        if self._report is not None:
            self._report(document)

    def _publish(self) -> None:
        self._cache.set_identities(self._valid.values(), self._invalid.values())


class NamespaceStore:
    """Namespaces into the cache, as projects (or not)."""

    resource = NAMESPACES

    def __init__(self, cache: Cache, *, webhook_namespace: str) -> None:
        self._cache = cache
        self._webhook_namespace = webhook_namespace

    def replace(self, objects: Sequence[Mapping[str, Any]]) -> None:
        described = [describe_object(o, self._webhook_namespace) for o in objects]
        self._cache.set_namespaces({i.name: i for i in described if i is not None})
        log.info("synced %d namespaces", len(self._cache.namespaces))

    def apply(self, change: str, obj: Mapping[str, Any]) -> None:
        info = describe_object(obj, self._webhook_namespace)
        if info is None:
            return
        if change == "DELETED":
            self._cache.drop_namespace(info.name)
        else:
            self._cache.put_namespace(info)


def describe_object(
    obj: Mapping[str, Any], webhook_namespace: str
) -> NamespaceInfo | None:
    """A Namespace object (a dict) as a project, or None without a name."""
    name = _name(obj)
    if not name:
        return None
    labels = obj["metadata"].get("labels")
    return describe_namespace(
        name,
        labels if isinstance(labels, Mapping) else None,
        webhook_namespace=webhook_namespace,
    )


class NamespaceReader:
    """Reads one namespace straight from the API server, for a namespace the
    watch has not delivered yet (server.NamespaceLookup)."""

    def __init__(self, kube: Kube, *, webhook_namespace: str) -> None:
        self._kube = kube
        self._webhook_namespace = webhook_namespace

    async def __call__(self, name: str) -> NamespaceInfo | None:
        try:
            obj = await call_json(
                self._kube.core.read_namespace, name, request_timeout=self._kube.timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        log.info("namespace %s was not in the cache yet: read it directly", name)
        return describe_object(obj, self._webhook_namespace)


class WatchStreamError(Exception):
    """The watch stream carried something that is not a watch event."""


EXPECTED_FAILURES: Final = (
    ApiException,
    aiohttp.ClientError,
    TimeoutError,
    OSError,
    WatchStreamError,
)
"""Failures of the API server or the network; anything else is a bug, logged
with its traceback (and retried all the same)."""


class Reflector:
    """Keeps one Store current: list, then watch, then recover (module doc)."""

    def __init__(
        self,
        store: Store,
        list_call: ListCall,
        cache: Cache,
        *,
        settings: WatchSettings,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        page_size: int = 0,
        trim: Trim | None = None,
    ) -> None:
        self._store = store
        self._list_call = list_call
        self._page_size = page_size
        """List in pages of this many objects (0: in one request)."""
        self._trim = trim
        """Applied to each listed object as its page arrives, so that a large
        list is never held whole in memory."""
        self._cache = cache
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._backoff = Backoff(
            settings.backoff_initial, settings.backoff_max, rng=self._rng.random
        )
        self._synced = False
        self._stale = False
        """Marked unsynced after failing too long, and not listed since."""
        self._failing_since: float | None = None
        self.version: str | None = None
        """The last resourceVersion seen; None before the first list."""

    @property
    def resource(self) -> str:
        return self._store.resource

    async def run(self) -> None:
        """List and watch until cancelled."""
        self._cache.mark_unsynced(self.resource)
        while True:
            started = self._clock()
            try:
                if self.version is None:
                    await self._list()
                await self._watch()
            except ApiException as exc:
                if exc.status != 410:
                    await self._recover(exc, "error")
                    continue
                log.info(
                    "%s: resourceVersion %s is too old (410 Gone): listing again",
                    self.resource,
                    self.version,
                )
                self._restarted("gone")
                self.version = None
                # Not a failure to reach the API server, but a server that
                # answered 410 to every watch must not spin this loop either.
                await asyncio.sleep(self._backoff.next())
            except Exception as exc:
                await self._recover(exc, "error")
            else:
                if self._clock() - started >= self._settings.backoff_initial:
                    self._restarted("expired")
                    log.debug("%s: watch ended at %s", self.resource, self.version)
                else:
                    # Ended as soon as it began: back off, or an API server
                    # (or proxy) that closes every stream would spin this loop.
                    await self._recover(None, "dropped")

    async def _list(self) -> None:
        """One consistent list, in pages when page_size is set: every page of
        it is served at the resourceVersion of the first (a continue token
        that expired meanwhile answers 410, and the list starts over)."""
        objects: list[Mapping[str, Any]] = []
        version: str | None = None
        token = ""
        while True:
            paging: dict[str, Any] = (
                {"limit": self._page_size} if self._page_size else {}
            )
            if token:
                paging["_continue"] = token
            body = await call_json(
                self._list_call,
                request_timeout=self._settings.list_timeout,
                **paging,
            )
            metadata = body.get("metadata") if isinstance(body, dict) else None
            metadata = metadata if isinstance(metadata, dict) else {}
            items = body.get("items") if isinstance(body, dict) else None
            version = version or metadata.get("resourceVersion")
            if not isinstance(version, str) or not isinstance(items, list):
                raise WatchStreamError(
                    f"the {self.resource} list has no resourceVersion or items"
                )
            trim = self._trim
            objects += [trim(i) if trim else i for i in items if isinstance(i, Mapping)]
            token = metadata.get("continue") or ""
            if not self._page_size or not isinstance(token, str) or not token:
                break
        self._store.replace(objects)
        self._contact()
        level = logging.INFO if self._stale else logging.DEBUG
        log.log(level, "%s cache synced at resourceVersion %s", self.resource, version)
        self._synced = True
        self._stale = False
        self.version = version

    async def _watch(self) -> None:
        """Watch from self.version until the server ends the stream."""
        timeout = int(self._settings.timeout_seconds * (1 + self._rng.random()))

        async def connect(**kwargs: Any) -> aiohttp.ClientResponse:
            response: aiohttp.ClientResponse = await self._list_call(**kwargs)
            if response.status != 200:
                async with response:
                    raise api_error(response.status, await response.read())
            self._contact()
            return response

        async with watch.Watch() as stream:
            events = stream.stream(
                connect,
                resource_version=self.version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                _request_timeout=aiohttp.ClientTimeout(
                    sock_connect=self._settings.connect_timeout,
                    sock_read=timeout + self._settings.connect_timeout,
                ),
            )
            async for event in events:
                self._handle(event)

    def _handle(self, event: Any) -> None:
        obj = event.get("raw_object") if isinstance(event, dict) else None
        if not isinstance(obj, dict):
            raise WatchStreamError(f"not a watch event: {str(event)[:200]!r}")
        self._contact()
        self._backoff.reset()
        change = event.get("type")
        if change in CHANGES:
            self._store.apply(str(change), self._trim(obj) if self._trim else obj)
        elif change != "BOOKMARK":
            log.debug("%s: ignored a %s event", self.resource, change)
        metadata = obj.get("metadata")
        seen = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        if isinstance(seen, str) and seen:
            self.version = seen

    def _contact(self) -> None:
        self._failing_since = None

    def _restarted(self, reason: str) -> None:
        self._cache.metrics.watch_restarts.labels(self.resource, reason).inc()

    async def _recover(self, exc: BaseException | None, reason: str) -> None:
        """Count the failure, turn unready once failures have lasted too long
        (the next success then lists afresh), and wait before retrying."""
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        self._restarted(reason)
        failing_for = now - self._failing_since
        if self._synced and failing_for >= self._settings.unready_after:
            self._synced = False
            self._stale = True
            self.version = None
            self._cache.mark_unsynced(self.resource)
            log.error(
                "%s watch has failed for %.1f s: the webhook is not ready until "
                "it lists them again; check the API server and the webhook's RBAC",
                self.resource,
                failing_for,
            )
        delay = self._backoff.next()
        what = describe_error(exc) if exc is not None else "the stream closed at once"
        expected = exc is None or isinstance(exc, EXPECTED_FAILURES)
        level = logging.WARNING if exc is None or unavailable(exc) else logging.ERROR
        log.log(
            level,
            "%s watch: %s; retrying in %.2f s",
            self.resource,
            what,
            delay,
            exc_info=None if expected else exc,
        )
        await asyncio.sleep(delay)


def reflectors(
    kube: Kube,
    cache: Cache,
    *,
    webhook_namespace: str,
    settings: WatchSettings,
    report: Report | None = None,
) -> list[Reflector]:
    """One Reflector for WorkloadIdentities, one for Namespaces."""
    return [
        Reflector(
            IdentityStore(cache, report=report),
            partial(kube.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL),
            cache,
            settings=settings,
        ),
        Reflector(
            NamespaceStore(cache, webhook_namespace=webhook_namespace),
            kube.core.list_namespace,
            cache,
            settings=settings,
        ),
    ]
