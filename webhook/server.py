"""HTTPS transport: the only module that knows aiohttp's server side.

Handlers read JSON, call one plain function and write JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from webhook import admission
from webhook.cache import Cache
from webhook.issuer import DISCOVERY_PATH, JWKS_PATH, Issuer
from webhook.metrics import WebhookMetrics
from webhook.namespaces import NamespaceInfo
from webhook.sidecar_spec import SidecarSettings
from webhook.tls import ReloadingContext

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 3 * 1024 * 1024
"""The API server's own request limit is 3 MiB; a larger body is no pod."""

BODY_TIMEOUT_SECONDS: Final = 10.0
"""A request body must arrive within this long. The API server sends a review
at once and gives up after the webhook's timeoutSeconds (5 in deploy/, 30 at
most); without a limit a client that stalls mid-body keeps its connection, and
the TLS buffers behind it (about 300 KiB), for good."""

IDLE_TIMEOUT_SECONDS: Final = 120.0
"""A connection with no request in progress (idle between requests, or whose
headers have not all arrived) is closed after this long; aiohttp's default is
an hour. Longer than the API server keeps idle webhook connections (90 s), so
it is never the webhook that closes a connection about to be reused."""


class NamespaceLookup(Protocol):
    """Reads one namespace directly, for a namespace the cache has not seen yet."""

    async def __call__(self, name: str) -> NamespaceInfo | None: ...


class Lifecycle:
    """Whether a stop has begun. From then on /readyz answers 503, so the
    Service takes this pod out of its endpoints, while the requests the API
    server still sends here (it learns of the change a few seconds late) are
    answered as usual."""

    def __init__(self) -> None:
        self.stopping = False


@dataclass(frozen=True, slots=True)
class Services:
    cache: Cache
    settings: SidecarSettings
    issuer: Issuer
    metrics: WebhookMetrics
    lookup_namespace: NamespaceLookup | None = None
    lifecycle: Lifecycle = field(default_factory=Lifecycle)


SERVICES: Final = web.AppKey("services", Services)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        content_type="application/json",
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


class BodyRefused(Exception):
    """A request body that is not read to the end: too large, or too slow."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def response(self) -> web.Response:
        response = _error(self.status, str(self))
        response.force_close()  # the rest of the body is never read
        return response


async def read_body(request: web.Request) -> bytes:
    """The whole body, within MAX_BODY_BYTES and BODY_TIMEOUT_SECONDS."""
    too_large = f"body larger than {MAX_BODY_BYTES} bytes"
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise BodyRefused(413, too_large)  # before buffering any of it
    try:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyRefused(413, too_large) from None
    except TimeoutError:
        raise BodyRefused(
            408,
            f"the body did not arrive within {BODY_TIMEOUT_SECONDS:g} s; send it "
            "at once",
        ) from None


async def namespace_for(services: Services, name: str) -> NamespaceInfo | None:
    info = services.cache.namespaces.get(name)
    if info is not None or services.lookup_namespace is None or not name:
        return info
    # A namespace created a moment before its first pod may not have reached
    # the watch yet; read it once rather than answer as if it had no project.
    services.metrics.namespace_cache_misses.inc()
    info = await services.lookup_namespace(name)
    if info is not None:
        # The watch may have delivered the namespace meanwhile; its copy is
        # the newer one.
        info = services.cache.namespaces.setdefault(name, info)
    return info


async def answer_review(services: Services, body: Any) -> admission.Answer:
    """Decide one parsed body; MalformedReview propagates as a client error."""
    review = admission.parse_review(body)
    try:
        namespace = None
        if admission.needs_namespace(review):
            namespace = await namespace_for(services, review.namespace)
        answer = admission.decide(
            review,
            namespace=namespace,
            index=services.cache.index,
            settings=services.settings,
        )
    except admission.MalformedReview:
        raise
    except Exception:
        log.exception(
            "admission failed: uid=%s namespace=%s", review.uid, review.namespace
        )
        answer = admission.refuse(
            review,
            "workload-identity could not decide on this pod because of an internal "
            "error; retry, and see the webhook's logs if it persists",
        )
    if log.isEnabledFor(logging.DEBUG):  # describe() costs more than the check
        log.debug("admission %s", admission.describe(answer, review))
    labels = (answer.outcome.value, "true" if review.dry_run else "false")
    services.metrics.admission_requests.labels(*labels).inc()
    return answer


async def mutate_handler(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    started = time.perf_counter()
    if request.content_type != "application/json":
        return _error(
            415, f"content type {request.content_type!r}: send application/json"
        )
    try:
        raw = await read_body(request)
    except BodyRefused as refused:
        return refused.response()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "the body is not valid JSON")
    except RecursionError:
        return _error(400, "the body is nested too deeply")
    try:
        answer = await answer_review(services, body)
    except admission.MalformedReview as exc:
        return _error(400, str(exc))
    except RecursionError:
        return _error(400, "the body is nested too deeply")
    response = _json(answer.review)
    services.metrics.admission_duration.observe(time.perf_counter() - started)
    return response


class JsonAnswer(Protocol):
    """A plain function behind a route: request headers and body in, HTTP
    status and JSON body out."""

    async def __call__(
        self, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Any]: ...


def json_route(path: str, answer: JsonAnswer) -> web.RouteDef:
    """POST `path`, answered by `answer` (for create_app's extra_routes)."""

    async def handler(request: web.Request) -> web.Response:
        try:
            raw = await read_body(request)
        except BodyRefused as refused:
            return refused.response()
        status, body = await answer(request.headers, raw)
        return _json(body, status)

    return web.post(path, handler)


async def healthz(_: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    cache = services.cache
    body = {
        "workloadidentities": cache.identities_synced,
        "namespaces": cache.namespaces_synced,
        "stopping": services.lifecycle.stopping,
    }
    ready = cache.ready and not services.lifecycle.stopping
    return _json(body, 200 if ready else 503)


async def discovery(request: web.Request) -> web.Response:
    response = _json(request.app[SERVICES].issuer.discovery())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


async def jwks(request: web.Request) -> web.Response:
    response = _json(request.app[SERVICES].issuer.jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


def create_app(
    services: Services, *, extra_routes: list[web.RouteDef] | None = None
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SERVICES] = services
    app.add_routes(
        [
            web.post("/mutate", mutate_handler),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get(DISCOVERY_PATH, discovery),
            web.get(JWKS_PATH, jwks),
            *(extra_routes or []),
        ]
    )
    return app


def create_metrics_app(metrics: WebhookMetrics) -> web.Application:
    async def scrape(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"listen address {value!r} must be HOST:PORT, e.g. 0.0.0.0:8443"
        )
    return host.strip("[]"), int(port)


SHUTDOWN_TIMEOUT_SECONDS: Final = 10.0
"""How long a stop waits for requests in flight (twice: to finish, then to
close); well within the pod's terminationGracePeriodSeconds (30)."""


class InFlight:
    """Counts the requests being handled, so that a stop can let them finish.

    aiohttp's own shutdown marks every connection closing at once and from
    then on ignores what arrives on it, so a request whose body is still on
    its way would never finish. A stop therefore first closes the listener,
    waits here for the handlers to return, and only then lets aiohttp close
    the connections. Answers given meanwhile carry `Connection: close`, so
    clients take their next request elsewhere.
    """

    def __init__(self, lifecycle: Lifecycle | None = None) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.stopping = False
        self._lifecycle = lifecycle
        """Once it is stopping, each answer closes its connection too."""
        self.busy: set[object] = set()
        """The connections (aiohttp protocols) with a request being handled."""

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        self.count += 1
        self.idle.clear()
        self.busy.add(request.protocol)
        try:
            response = await handler(request)
            if self.stopping or (self._lifecycle and self._lifecycle.stopping):
                response.force_close()
            return response
        finally:
            self.busy.discard(request.protocol)
            self.count -= 1
            if not self.count:
                self.idle.set()

    def close_idle(self, runner: web.AppRunner) -> None:
        """Close the connections that wait for a next request; the others
        close after their answer."""
        if runner.server is None:
            return
        for connection in runner.server.connections:
            if connection in self.busy:
                connection.close()
            else:
                # close() alone leaves an idle kept-alive connection open in
                # aiohttp: it ends the wait for a request but not the transport.
                connection.force_close()

    async def drain(self) -> None:
        """Return once no request is in flight; answers close their connection
        from now on."""
        self.stopping = True
        await self.idle.wait()


IN_FLIGHT: Final = web.AppKey("in_flight", InFlight)


@contextlib.asynccontextmanager
async def running_site(
    app: web.Application,
    listen: str,
    ssl: ReloadingContext | None,
    lifecycle: Lifecycle | None = None,
) -> AsyncIterator[web.AppRunner]:
    in_flight = InFlight(lifecycle)
    app.middlewares.append(in_flight.middleware)
    app[IN_FLIGHT] = in_flight
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
        keepalive_timeout=IDLE_TIMEOUT_SECONDS,
    )
    await runner.setup()
    host, port = split_listen(listen)
    site = web.TCPSite(runner, host, port, ssl_context=ssl.context if ssl else None)
    await site.start()
    try:
        yield runner
    finally:
        await site.stop()  # new connections are refused from here on
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_SECONDS):
                await in_flight.drain()
        await runner.cleanup()


async def _linger(
    lifecycle: Lifecycle,
    runner: web.AppRunner,
    stop_now: asyncio.Event,
    tasks: list[asyncio.Task[None]],
    seconds: float,
) -> None:
    """Keep serving, unready, for `seconds`, or until another signal or a
    background job ends.

    Clients keep their connections across the Service's change, so each is
    told to go: idle ones are closed now, busy ones after their answer, and
    every answer from here on carries `Connection: close`. Their next request
    opens a new connection, which the Service sends to a ready replica once
    it knows, and to this one, still answering, until then.
    """
    lifecycle.stopping = True
    log.info(
        "stop requested: /readyz answers 503; serving %g s more while the API "
        "server stops sending requests here (signal again to skip the wait)",
        seconds,
    )
    runner.app[IN_FLIGHT].close_idle(runner)
    again = asyncio.create_task(stop_now.wait())
    await asyncio.wait(
        [again, *tasks], timeout=seconds, return_when=asyncio.FIRST_COMPLETED
    )
    again.cancel()
    await asyncio.gather(again, return_exceptions=True)


CERTIFICATE_CHECK_SECONDS: Final = 5.0
"""How often the serving certificate files are checked for a rotation: two
stat calls each time, and well within cert-manager's renewal margin."""


async def reload_certificates(
    tls: ReloadingContext, interval: float = CERTIFICATE_CHECK_SECONDS
) -> None:
    """Follow the certificate files until cancelled; connections in flight
    keep the certificate they were opened with."""
    while True:
        await asyncio.sleep(interval)
        tls.refresh()


async def serve(
    services: Services,
    *,
    listen: str,
    metrics_listen: str,
    tls: ReloadingContext,
    background: list[Callable[[], Coroutine[Any, Any, None]]] | None = None,
    extra_routes: list[web.RouteDef] | None = None,
    started: Callable[[list[tuple[str, int]]], None] | None = None,
    shutdown_delay: float = 0.0,
) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully: unready but still
    serving for `shutdown_delay` seconds (a second signal skips the rest of
    that wait), then refuse new connections and finish the requests in
    flight."""
    stop, stop_now = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            stop_now.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)

    app = create_app(services, extra_routes=extra_routes)
    async with (
        running_site(app, listen, tls, services.lifecycle) as main_runner,
        running_site(
            create_metrics_app(services.metrics), metrics_listen, None
        ) as metrics_runner,
    ):
        addresses = [a for r in (main_runner, metrics_runner) for a in r.addresses]
        log.info(
            "serving admission and issuer on https://%s, metrics on http://%s/metrics",
            listen,
            metrics_listen,
        )
        if started is not None:
            started([(str(a[0]), int(a[1])) for a in addresses])
        tasks = [asyncio.create_task(reload_certificates(tls))]
        tasks += [asyncio.create_task(job()) for job in background or []]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            [stopper, *tasks], return_when=asyncio.FIRST_COMPLETED
        )
        if stopper in done and shutdown_delay > 0:
            await _linger(
                services.lifecycle, main_runner, stop_now, tasks, shutdown_delay
            )
            done |= {task for task in tasks if task.done()}
        for task in [stopper, *tasks]:
            task.cancel()
        # Let the background jobs finish cancelling while the clients they
        # use (the Kubernetes API client) are still open.
        await asyncio.gather(stopper, *tasks, return_exceptions=True)
        for task in done:
            if task is stopper or task.cancelled():
                continue
            # A background job (a watch, the certificate reload) ended on its
            # own: the webhook must not go on serving without it.
            failure = task.exception()
            if failure is not None:
                raise failure
        log.info("shutting down: finishing requests in flight")
