"""`/readyz`, `/healthz` and `/metrics` over plain HTTP on one port.

`Probes.answer` maps a request to its reply and knows nothing of sockets.
`serving` is the transport: a minimal HTTP/1.1 server on asyncio streams that
answers GET, one request per connection (`Connection: close`). Every
connection reads a bounded head within a deadline, and there is a bounded
number of them, so a slow or broken client costs the refresh loop nothing:
each connection is its own task on the same event loop, and none of them ever
waits without a deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Final

from sidecar import http_wire, prometheus, status
from sidecar.clock import Clock
from sidecar.prometheus import CollectorRegistry
from sidecar.refresh import Refresher

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_SECONDS: Final = 1.0
"""Probes are tiny; waiting longer would only delay the pod's termination."""

READ_TIMEOUT_SECONDS: Final = 5.0
"""For a request head to arrive, and then for the reply to be taken. The
kubelet and Prometheus send their few hundred bytes at once."""

MAX_CONNECTIONS: Final = 32
"""Open at once. Beyond it, the connection that has waited longest for its
request head is dropped: a probe that is ready to be answered never is."""

_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"


class ListenError(OSError):
    """The probe port cannot be bound."""


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    ready_margin_seconds: float
    stall_after_seconds: float
    """Liveness fails after this long without a completed tick."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str = _TEXT
    headers: tuple[tuple[str, str], ...] = ()


class Probes:
    """What each path answers, from the refresh state, the clock and metrics."""

    def __init__(
        self,
        *,
        refresher: Refresher,
        registry: CollectorRegistry,
        clock: Clock,
        settings: ProbeSettings,
    ) -> None:
        self._refresher = refresher
        self._registry = registry
        self._clock = clock
        self._settings = settings
        self._routes: dict[str, Callable[[Mapping[str, str]], Reply]] = {
            "/readyz": self._readyz,
            "/healthz": self._healthz,
            "/metrics": self._metrics,
        }

    def answer(self, method: str, target: str, headers: Mapping[str, str]) -> Reply:
        """The reply to `method target`; `headers` have lower-case names."""
        route = self._routes.get(target.partition("?")[0])
        if route is None:
            return Reply(404, b"not found; the paths are /readyz, /healthz, /metrics\n")
        if method != "GET":
            return Reply(405, b"only GET is allowed\n", headers=(("Allow", "GET"),))
        return route(headers)

    def _readyz(self, headers: Mapping[str, str]) -> Reply:
        ready, body = status.readiness(
            self._refresher.states,
            now=self._clock.wall(),
            margin_seconds=self._settings.ready_margin_seconds,
        )
        return _json(200 if ready else 503, body)

    def _healthz(self, headers: Mapping[str, str]) -> Reply:
        live, body = status.liveness(
            self._refresher.states,
            now=self._clock.wall(),
            since_progress=self._clock.monotonic() - self._refresher.last_progress,
            stall_after=self._settings.stall_after_seconds,
        )
        return _json(200 if live else 503, body)

    def _metrics(self, headers: Mapping[str, str]) -> Reply:
        # Prometheus's Accept header picks the text format or OpenMetrics.
        encode, content_type = prometheus.encoder_for(headers.get("accept", ""))
        return Reply(200, encode(self._registry), content_type)


def _json(code: int, body: dict[str, Any]) -> Reply:
    return Reply(code, json.dumps(body).encode(), _JSON)


def encode_reply(reply: Reply) -> bytes:
    """The reply as bytes on the wire, head and body."""
    reason = http_wire.REASONS.get(reply.status, "")
    head = http_wire.encode_head(
        f"HTTP/1.1 {reply.status} {reason}".rstrip(),
        [
            ("Content-Type", reply.content_type),
            ("Content-Length", str(len(reply.body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
            *reply.headers,
        ],
    )
    return head + reply.body


class _Connections:
    """The open connections, so that the server can drop the one that has
    waited longest for its request, and end them all when it stops.

    Connections end by having their transport aborted, never by having their
    task cancelled: the reader then sees the end of the stream, and the
    handler returns as it does for a client that hung up.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._reading: dict[asyncio.Task[None], None] = {}
        """Connections still waiting for their request head, oldest first."""

    def admit(self, task: asyncio.Task[None], writer: asyncio.StreamWriter) -> bool:
        if len(self._open) >= self._limit:
            if not self._reading:
                return False
            oldest = next(iter(self._reading))
            self._open[oldest].transport.abort()
            self.discard(oldest)
        self._open[task] = writer
        self._reading[task] = None
        return True

    def answering(self, task: asyncio.Task[None]) -> None:
        self._reading.pop(task, None)

    def discard(self, task: asyncio.Task[None]) -> None:
        self._open.pop(task, None)
        self._reading.pop(task, None)

    async def close_all(self) -> None:
        tasks = list(self._open)
        for writer in self._open.values():
            writer.transport.abort()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_SECONDS)


class _Server:
    def __init__(
        self, probes: Probes, *, read_timeout: float, max_connections: int
    ) -> None:
        self._probes = probes
        self._read_timeout = read_timeout
        self.connections = _Connections(max_connections)

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is None or not self.connections.admit(task, writer):
            writer.transport.abort()
            return
        try:
            async with asyncio.timeout(self._read_timeout):
                reply = await self._reply_to_request(reader)
                self.connections.answering(task)
                writer.write(encode_reply(reply))
                await writer.drain()
            writer.close()
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            # Too slow, hung up, reset, or dropped to make room: no answer.
            log.debug("probe connection dropped: %s", type(exc).__name__)
            writer.transport.abort()
        except asyncio.CancelledError:
            # Only the loop's own shutdown cancels this task. Ending it
            # normally keeps asyncio's stream callback from reporting an error.
            writer.transport.abort()
        except Exception:
            log.exception("a probe request failed unexpectedly")
            writer.transport.abort()
        finally:
            self.connections.discard(task)

    async def _reply_to_request(self, reader: asyncio.StreamReader) -> Reply:
        try:
            head = await http_wire.read_head(reader)
            method, target = _request_line(head.start_line)
        except http_wire.ProtocolError as exc:
            reason = http_wire.REASONS.get(exc.status, "")
            return Reply(exc.status, f"{reason}: {exc}\n".encode())
        return self._probes.answer(method, target, head.headers)


def _request_line(line: str) -> tuple[str, str]:
    """(method, target) of `METHOD TARGET HTTP/1.x`; raises ProtocolError."""
    parts = line.split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1].startswith("/"):
        raise http_wire.ProtocolError("malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if version.startswith("HTTP/"):
            raise http_wire.ProtocolError(f"{version} is not served", status=505)
        raise http_wire.ProtocolError("malformed request line")
    return method, target


async def serve_probes(probes: Probes, *, host: str, port: int) -> None:
    """Serve `probes` on host:port until cancelled."""
    async with serving(probes, host=host, port=port):
        await asyncio.get_running_loop().create_future()


@asynccontextmanager
async def serving(
    probes: Probes,
    *,
    host: str,
    port: int,
    read_timeout: float = READ_TIMEOUT_SECONDS,
    max_connections: int = MAX_CONNECTIONS,
) -> AsyncIterator[int]:
    """Serve `probes` on host:port while the block runs; yields the bound port."""
    handler = _Server(
        probes, read_timeout=read_timeout, max_connections=max_connections
    )
    try:
        server = await asyncio.start_server(
            handler.handle, host, port, limit=http_wire.MAX_HEAD_BYTES
        )
    except OSError as exc:
        raise ListenError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose "
            "another --listen / WI_LISTEN"
        ) from exc
    try:
        sockets = server.sockets
        bound = int(sockets[0].getsockname()[1])
        names = ", ".join(_address(s.getsockname()) for s in sockets)
        log.info("serving /healthz, /readyz and /metrics on %s", names)
        yield bound
    finally:
        server.close()
        await handler.connections.close_all()
        with suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_SECONDS):
                await server.wait_closed()


def _address(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
