"""A small stand-in for kube-apiserver on 127.0.0.1, so that tests drive
kubernetes-asyncio over real HTTP.

It keeps the semantics the webhook relies on:
- one resourceVersion counter for every object, bumped by each write;
  `metadata.generation` moves only when the spec does;
- a list answers the objects and the current resourceVersion;
- a watch replays each change after the requested resourceVersion, then
  streams new ones; a resourceVersion older than the last compaction gets an
  ERROR event with 410 Gone; `timeoutSeconds` ends the stream cleanly;
  `allowWatchBookmarks=true` lets `bookmark()` reach it;
- the status subresource writes only `.status`, drops the fields the CRD's
  status schema does not declare (as structural pruning does), and answers
  409 to a stale resourceVersion;
- a TokenReview answers for the tokens a test issued, and pods are read by name;
- pods are listed (in pages, with `limit` and `continue`) and watched across
  namespaces; a pod put again under the same name is a new pod (DELETED, then
  ADDED with a new uid), `update_pod` changes one in place (MODIFIED);
- ReplicaSets are read by name and listed;
- Leases are read, created (409 when one exists) and replaced (409 when the
  resourceVersion sent is not the current one), as leader election needs;
- every request must carry the admin bearer token.

Tests steer it: `broken[resource] = status` fails a resource's requests
(lists and watches; for "leases", every Lease call), `status_refused[name] =
status` fails the status writes of one WorkloadIdentity, `end_watches()` ends open
streams as their timeout would,
`drop_watches()` cuts them, `compact()` forgets the
history, `hold_watches()` keeps changes from watches (not from reads), `stop()`
and `start()` take the server away and bring it back on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from aiohttp import web
from kubernetes_asyncio.client import Configuration

ADMIN_TOKEN: Final = "fake-admin-token"
IDENTITIES: Final = "workloadidentities"
NAMESPACES: Final = "namespaces"
PODS: Final = "pods"
LEASES: Final = "leases"
KINDS: Final = {
    IDENTITIES: ("workloadidentity.dev/v1alpha1", "WorkloadIdentity"),
    NAMESPACES: ("v1", "Namespace"),
    PODS: ("v1", "Pod"),
}
IDENTITIES_PATH: Final = "/apis/workloadidentity.dev/v1alpha1/workloadidentities"
PODS_PATH: Final = "/api/v1/pods"
LEASES_PATH: Final = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

Obj = dict[str, Any]

CRD_FILE: Final = Path(__file__).parents[2] / "deploy/crd/workloadidentity.yaml"


def _status_schema() -> Obj:
    crd = yaml.safe_load(CRD_FILE.read_text())
    schema: Obj = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    status: Obj = schema["properties"]["status"]
    return status


STATUS_SCHEMA: Final = _status_schema()


def pruned(value: Any, schema: Mapping[str, Any]) -> Any:
    """`value` without the fields `schema` does not declare."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict) and "properties" in schema:
        known = schema["properties"]
        return {k: pruned(v, known[k]) for k, v in value.items() if k in known}
    if isinstance(value, list) and "items" in schema:
        return [pruned(item, schema["items"]) for item in value]
    return value


def status_body(code: int, reason: str, message: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


def failure(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(status_body(code, reason, message), status=code)


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig that points kubernetes-asyncio at this fake, and nowhere else."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "admin", "user": {"token": ADMIN_TOKEN}}],
                "contexts": [
                    {"name": "fake", "context": {"cluster": "fake", "user": "admin"}}
                ],
                "current-context": "fake",
            }
        )
    )
    return path


@dataclass
class Change:
    version: int
    resource: str
    type: str
    obj: Obj


@dataclass
class Watcher:
    resource: str
    bookmarks: bool
    request: web.Request
    queue: asyncio.Queue[Change | None] = field(default_factory=asyncio.Queue)


@dataclass
class ReviewedToken:
    username: str
    audiences: list[str]
    extra: dict[str, list[str]]


class FakeKube:
    def __init__(self) -> None:
        self.version = 100
        self.objects: dict[str, dict[str, Obj]] = {IDENTITIES: {}, NAMESPACES: {}}
        self.pods: dict[tuple[str, str], Obj] = {}
        self.replica_sets: dict[tuple[str, str], Obj] = {}
        self.leases: dict[tuple[str, str], Obj] = {}
        self.lease_writes: list[tuple[str, str | None]] = []
        """(verb, holderIdentity) of each Lease create or replace that succeeded."""
        self.history: list[Change] = []
        self.compacted = 0
        self.held: list[Change] | None = None
        self.watchers: list[Watcher] = []
        self.broken: dict[str, int] = {}
        """Resource -> HTTP status that its lists and watches answer."""
        self.status_refused: dict[str, int] = {}
        """WorkloadIdentity name -> HTTP status that writes of its status answer."""
        self.tokens: dict[str, ReviewedToken] = {}
        self.reviews: list[Obj] = []
        """The spec of each TokenReview received, without its token."""
        self.events: list[Obj] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    # --- lifecycle --------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def configuration(self) -> Configuration:
        """A client configuration built by hand: nothing is read from a
        kubeconfig or the environment of a pod."""
        return Configuration(
            host=self.url,
            api_key={"BearerToken": ADMIN_TOKEN},
            api_key_prefix={"BearerToken": "Bearer"},
        )

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1, or the one used before."""
        app = web.Application(middlewares=[self._guard])
        app.add_routes(
            [
                web.get(IDENTITIES_PATH, self._list_identities),
                web.get(IDENTITIES_PATH + "/{name}", self._get_identity),
                web.put(IDENTITIES_PATH + "/{name}/status", self._put_status),
                web.get("/api/v1/namespaces", self._list_namespaces),
                web.get("/api/v1/namespaces/{name}", self._get_namespace),
                web.get("/api/v1/namespaces/{namespace}/pods/{name}", self._get_pod),
                web.get(PODS_PATH, self._list_pods),
                web.get("/api/v1/namespaces/{namespace}/pods", self._list_pods),
                web.get("/apis/apps/v1/replicasets", self._list_replica_sets),
                web.get(
                    "/apis/apps/v1/namespaces/{namespace}/replicasets",
                    self._list_replica_sets,
                ),
                web.get(
                    "/apis/apps/v1/namespaces/{namespace}/replicasets/{name}",
                    self._get_replica_set,
                ),
                web.get(LEASES_PATH + "/{name}", self._get_lease),
                web.post(LEASES_PATH, self._create_lease),
                web.put(LEASES_PATH + "/{name}", self._replace_lease),
                web.post("/api/v1/namespaces/{namespace}/events", self._post_event),
                web.post(
                    "/apis/authentication.k8s.io/v1/tokenreviews", self._token_review
                ),
            ]
        )
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.1
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening; open watches are cut."""
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- what tests change ------------------------------------------------

    def _bump(self) -> int:
        self.version += 1
        return self.version

    def _record(self, resource: str, kind: str, obj: Obj) -> None:
        change = Change(self.version, resource, kind, copy.deepcopy(obj))
        self.history.append(change)
        if self.held is not None:
            self.held.append(change)
            return
        for watcher in self.watchers:
            if watcher.resource == resource:
                watcher.queue.put_nowait(change)

    def put(self, resource: str, obj: Obj) -> Obj:
        """Create or replace an object; returns it as stored."""
        obj = copy.deepcopy(obj)
        api_version, kind = KINDS[resource]
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", kind)
        metadata = obj.setdefault("metadata", {})
        name = metadata["name"]
        current = self.objects[resource].get(name)
        if current is None:
            metadata["uid"] = str(uuid.uuid4())
            metadata["generation"] = 1
            metadata["creationTimestamp"] = "2026-01-01T00:00:00Z"
        else:
            for key in ("uid", "creationTimestamp", "generation"):
                metadata[key] = current["metadata"][key]
            if obj.get("spec") != current.get("spec"):
                metadata["generation"] += 1
            obj.setdefault("status", current.get("status"))
            if obj["status"] is None:
                del obj["status"]
        metadata["resourceVersion"] = str(self._bump())
        self.objects[resource][name] = obj
        self._record(resource, "ADDED" if current is None else "MODIFIED", obj)
        return copy.deepcopy(obj)

    def put_identity(self, obj: Obj) -> Obj:
        return self.put(IDENTITIES, obj)

    def put_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> Obj:
        return self.put(
            NAMESPACES, {"metadata": {"name": name, "labels": dict(labels or {})}}
        )

    def delete(self, resource: str, name: str) -> None:
        obj = self.objects[resource].pop(name)
        obj["metadata"]["resourceVersion"] = str(self._bump())
        self._record(resource, "DELETED", obj)

    def put_pod(
        self,
        namespace: str,
        name: str,
        *,
        annotations: Mapping[str, str] | None = None,
        service_account: str = "default",
        labels: Mapping[str, str] | None = None,
        owner: Obj | None = None,
        phase: str = "Running",
        spec: Obj | None = None,
    ) -> Obj:
        """Create a pod; one of the same name is replaced by a new pod (new
        uid), as a deletion and a creation. `owner` is its controller's
        ownerReference; `spec` adds to or overrides the default spec."""
        metadata: Obj = {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "annotations": dict(annotations or {}),
            "labels": dict(labels or {}),
            "creationTimestamp": "2026-01-01T00:00:00Z",
        }
        if owner is not None:
            metadata["ownerReferences"] = [{"controller": True, **owner}]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": {
                "serviceAccountName": service_account,
                "containers": [{"name": "app", "image": "app"}],
                **(spec or {}),
            },
            "status": {"phase": phase},
        }
        if (namespace, name) in self.pods:
            self.delete_pod(namespace, name)
        metadata["resourceVersion"] = str(self._bump())
        self.pods[(namespace, name)] = pod
        self._record(PODS, "ADDED", pod)
        return copy.deepcopy(pod)

    def update_pod(
        self,
        namespace: str,
        name: str,
        *,
        annotations: Mapping[str, str] | None = None,
        phase: str | None = None,
    ) -> Obj:
        """Change a pod in place: its annotations (replaced) or its phase."""
        pod = self.pods[(namespace, name)]
        if annotations is not None:
            pod["metadata"]["annotations"] = dict(annotations)
        if phase is not None:
            pod["status"] = {"phase": phase}
        pod["metadata"]["resourceVersion"] = str(self._bump())
        self._record(PODS, "MODIFIED", pod)
        return copy.deepcopy(pod)

    def delete_pod(self, namespace: str, name: str) -> None:
        pod = self.pods.pop((namespace, name))
        pod["metadata"]["resourceVersion"] = str(self._bump())
        self._record(PODS, "DELETED", pod)

    def put_replica_set(self, namespace: str, name: str, *, owner: Obj | None) -> Obj:
        """A ReplicaSet, owned by `owner` (an ownerReference) if given."""
        metadata: Obj = {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": str(self._bump()),
        }
        if owner is not None:
            metadata["ownerReferences"] = [{"controller": True, **owner}]
        replica_set = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": metadata,
        }
        self.replica_sets[(namespace, name)] = replica_set
        return copy.deepcopy(replica_set)

    def lease_holder(self, namespace: str, name: str) -> str | None:
        lease = self.leases.get((namespace, name))
        if lease is None:
            return None
        holder = (lease.get("spec") or {}).get("holderIdentity")
        return holder if isinstance(holder, str) else None

    def issue_token(
        self,
        *,
        audiences: Iterable[str],
        namespace: str = "team-a",
        service_account: str = "default",
        pod: Mapping[str, Any] | None = None,
    ) -> str:
        """A ServiceAccount token the TokenReview accepts; bound to `pod` if given."""
        token = "sa-" + secrets.token_urlsafe(24)
        extra: dict[str, list[str]] = {}
        if pod is not None:
            extra = {
                "authentication.kubernetes.io/pod-name": [pod["metadata"]["name"]],
                "authentication.kubernetes.io/pod-uid": [pod["metadata"]["uid"]],
            }
        self.tokens[token] = ReviewedToken(
            username=f"system:serviceaccount:{namespace}:{service_account}",
            audiences=list(audiences),
            extra=extra,
        )
        return token

    def bookmark(self) -> None:
        """Send a BOOKMARK at the current resourceVersion to watches that allow it."""
        for watcher in self.watchers:
            if watcher.bookmarks:
                api_version, kind = KINDS[watcher.resource]
                obj = {
                    "apiVersion": api_version,
                    "kind": kind,
                    "metadata": {"resourceVersion": str(self.version)},
                }
                watcher.queue.put_nowait(
                    Change(self.version, watcher.resource, "BOOKMARK", obj)
                )

    def compact(self) -> None:
        """Forget the history: a watch from before now gets 410 Gone."""
        self.history.clear()
        self.compacted = self.version

    def hold_watches(self) -> None:
        """Keep changes from open watches until `release_watches()`."""
        self.held = []

    def release_watches(self) -> None:
        held, self.held = self.held or [], None
        for change in held:
            for watcher in self.watchers:
                if watcher.resource == change.resource:
                    watcher.queue.put_nowait(change)

    def end_watches(self) -> None:
        """End every open watch cleanly, as its timeoutSeconds would."""
        for watcher in list(self.watchers):
            watcher.queue.put_nowait(None)

    def drop_watches(self) -> None:
        """Cut every open watch mid-stream, as a lost connection would."""
        for watcher in list(self.watchers):
            transport = watcher.request.transport
            if transport is not None:
                transport.abort()
            watcher.queue.put_nowait(None)

    def requests_to(
        self, path: str, *, watch: bool | None = None
    ) -> list[dict[str, str]]:
        """Query strings of the requests made to `path` (lists or watches)."""
        return [
            query
            for method, seen, query in self.requests
            if seen == path
            and (watch is None or (query.get("watch", "").lower() == "true") is watch)
        ]

    # --- the API ----------------------------------------------------------

    @web.middleware
    async def _guard(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.query)))
        if request.headers.get("Authorization") != f"Bearer {ADMIN_TOKEN}":
            return failure(401, "Unauthorized", "Unauthorized")
        return await handler(request)

    async def _list_identities(self, request: web.Request) -> web.StreamResponse:
        return await self._list_or_watch(request, IDENTITIES)

    async def _list_namespaces(self, request: web.Request) -> web.StreamResponse:
        return await self._list_or_watch(request, NAMESPACES)

    async def _list_or_watch(
        self, request: web.Request, resource: str
    ) -> web.StreamResponse:
        if resource in self.broken:
            code = self.broken[resource]
            return failure(code, "InternalError", f"{resource} are broken for now")
        if request.query.get("watch", "").lower() == "true":
            return await self._watch(request, resource)
        api_version, kind = KINDS[resource]
        return web.json_response(
            {
                "apiVersion": api_version,
                "kind": f"{kind}List",
                "metadata": {"resourceVersion": str(self.version)},
                "items": [
                    copy.deepcopy(o) for _, o in sorted(self.objects[resource].items())
                ],
            }
        )

    async def _watch(self, request: web.Request, resource: str) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.version)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        bookmarks = request.query.get("allowWatchBookmarks", "").lower() == "true"
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if since < self.compacted:
            await self._send(
                response,
                "ERROR",
                status_body(
                    410,
                    "Expired",
                    f"too old resource version: {since} ({self.compacted})",
                ),
            )
            return response
        watcher = Watcher(resource, bookmarks, request)
        for past in self.history:
            if past.resource == resource and past.version > since:
                watcher.queue.put_nowait(past)
        self.watchers.append(watcher)
        deadline = time.monotonic() + timeout
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    change = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if change is None:  # ended, or dropped with its transport
                    return response
                await self._send(response, change.type, change.obj)
        finally:
            self.watchers.remove(watcher)
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, kind: str, obj: Obj) -> None:
        line = json.dumps({"type": kind, "object": obj}) + "\n"
        await response.write(line.encode())

    def _found(self, resource: str, name: str) -> Obj | None:
        found = self.objects[resource].get(name)
        return copy.deepcopy(found) if found is not None else None

    async def _get_identity(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = self._found(IDENTITIES, name)
        if found is None:
            return failure(404, "NotFound", f'workloadidentities "{name}" not found')
        return web.json_response(found)

    async def _put_status(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.json()
        current = self.objects[IDENTITIES].get(name)
        if current is None:
            return failure(404, "NotFound", f'workloadidentities "{name}" not found')
        if name in self.status_refused:
            code = self.status_refused[name]
            return failure(code, "InternalError", "the status write was refused")
        sent = (body.get("metadata") or {}).get("resourceVersion")
        if sent != current["metadata"]["resourceVersion"]:
            return failure(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on workloadidentities "{name}": '
                "the object has been modified",
            )
        current["status"] = pruned(copy.deepcopy(body.get("status")), STATUS_SCHEMA)
        current["metadata"]["resourceVersion"] = str(self._bump())
        self._record(IDENTITIES, "MODIFIED", current)
        return web.json_response(copy.deepcopy(current))

    async def _list_pods(self, request: web.Request) -> web.StreamResponse:
        """All pods, or one namespace's; watches cover all namespaces only."""
        if PODS in self.broken:
            return failure(
                self.broken[PODS], "InternalError", "pods are broken for now"
            )
        if request.query.get("watch", "").lower() == "true":
            return await self._watch(request, PODS)
        namespace = request.match_info.get("namespace")
        pods = [
            copy.deepcopy(pod)
            for key, pod in sorted(self.pods.items())
            if namespace is None or key[0] == namespace
        ]
        start = int(request.query.get("continue") or 0)
        limit = int(request.query.get("limit") or 0) or len(pods)
        page = pods[start : start + limit]
        metadata: Obj = {"resourceVersion": str(self.version)}
        if start + limit < len(pods):
            metadata["continue"] = str(start + limit)
        return web.json_response(
            {"apiVersion": "v1", "kind": "PodList", "metadata": metadata, "items": page}
        )

    async def _get_replica_set(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        found = self.replica_sets.get(key)
        if found is None:
            return failure(404, "NotFound", f'replicasets.apps "{key[1]}" not found')
        return web.json_response(copy.deepcopy(found))

    async def _list_replica_sets(self, request: web.Request) -> web.Response:
        namespace = request.match_info.get("namespace")
        items = [
            copy.deepcopy(o)
            for key, o in sorted(self.replica_sets.items())
            if namespace is None or key[0] == namespace
        ]
        return web.json_response(
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSetList",
                "metadata": {"resourceVersion": str(self.version)},
                "items": items,
            }
        )

    def _lease_failure(self) -> web.Response | None:
        if LEASES in self.broken:
            return failure(
                self.broken[LEASES], "InternalError", "leases are broken for now"
            )
        return None

    async def _get_lease(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        broken = self._lease_failure()
        if broken is not None:
            return broken
        found = self.leases.get(key)
        if found is None:
            return failure(
                404, "NotFound", f'leases.coordination.k8s.io "{key[1]}" not found'
            )
        return web.json_response(copy.deepcopy(found))

    async def _create_lease(self, request: web.Request) -> web.Response:
        broken = self._lease_failure()
        if broken is not None:
            return broken
        body = await request.json()
        namespace = request.match_info["namespace"]
        metadata = body.setdefault("metadata", {})
        key = (namespace, metadata.get("name", ""))
        if key in self.leases:
            return failure(
                409,
                "AlreadyExists",
                f'leases.coordination.k8s.io "{key[1]}" already exists',
            )
        metadata.update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            resourceVersion=str(self._bump()),
            creationTimestamp="2026-01-01T00:00:00Z",
        )
        body.setdefault("apiVersion", "coordination.k8s.io/v1")
        body.setdefault("kind", "Lease")
        self.leases[key] = body
        self.lease_writes.append(
            ("create", (body.get("spec") or {}).get("holderIdentity"))
        )
        return web.json_response(copy.deepcopy(body), status=201)

    async def _replace_lease(self, request: web.Request) -> web.Response:
        broken = self._lease_failure()
        if broken is not None:
            return broken
        body = await request.json()
        key = (request.match_info["namespace"], request.match_info["name"])
        current = self.leases.get(key)
        if current is None:
            return failure(
                404, "NotFound", f'leases.coordination.k8s.io "{key[1]}" not found'
            )
        sent = (body.get("metadata") or {}).get("resourceVersion")
        if sent != current["metadata"]["resourceVersion"]:
            return failure(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on leases.coordination.k8s.io "{key[1]}": '
                "the object has been modified; please apply your changes to the "
                "latest version and try again",
            )
        metadata = body.setdefault("metadata", {})
        for field_name in ("uid", "creationTimestamp", "namespace", "name"):
            metadata[field_name] = current["metadata"][field_name]
        metadata["resourceVersion"] = str(self._bump())
        self.leases[key] = body
        self.lease_writes.append(
            ("replace", (body.get("spec") or {}).get("holderIdentity"))
        )
        return web.json_response(copy.deepcopy(body))

    async def _get_namespace(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = self._found(NAMESPACES, name)
        if found is None:
            return failure(404, "NotFound", f'namespaces "{name}" not found')
        return web.json_response(found)

    async def _get_pod(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        pod = self.pods.get(key)
        if pod is None:
            return failure(404, "NotFound", f'pods "{key[1]}" not found')
        return web.json_response(copy.deepcopy(pod))

    async def _post_event(self, request: web.Request) -> web.Response:
        event = await request.json()
        event.setdefault("metadata", {})["namespace"] = request.match_info["namespace"]
        self.events.append(event)
        return web.json_response(event, status=201)

    async def _token_review(self, request: web.Request) -> web.Response:
        body = await request.json()
        spec = body.get("spec") or {}
        wanted = list(spec.get("audiences") or [])
        self.reviews.append({k: v for k, v in spec.items() if k != "token"})
        known = self.tokens.get(spec.get("token", ""))
        status: Obj
        if known is None:
            status = {"authenticated": False, "error": "invalid bearer token"}
        else:
            granted = (
                [a for a in wanted if a in known.audiences]
                if wanted
                else known.audiences
            )
            if not granted:
                status = {
                    "authenticated": False,
                    "error": "token audiences "
                    f"{known.audiences} is invalid for the target audiences {wanted}",
                }
            else:
                status = {
                    "authenticated": True,
                    "user": {
                        "username": known.username,
                        "uid": str(uuid.uuid4()),
                        "groups": ["system:serviceaccounts", "system:authenticated"],
                        "extra": known.extra,
                    },
                    "audiences": granted,
                }
        return web.json_response(
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "metadata": {},
                "spec": {"audiences": wanted},
                "status": status,
            },
            status=201,
        )


async def eventually(
    check: Callable[[], bool], *, within: float = 5.0, what: str = "condition"
) -> None:
    """Wait until `check()` holds, polling every 10 ms."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(
    jobs: Iterable[Callable[[], Awaitable[None]]],
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run background jobs for the block; cancel and await them after it."""

    async def job_task(job: Callable[[], Awaitable[None]]) -> None:
        await job()

    tasks = [asyncio.create_task(job_task(job)) for job in jobs]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                raise result
