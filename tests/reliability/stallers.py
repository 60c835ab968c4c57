"""Clients that hold a connection without finishing a request: silent after
the TCP handshake, stopped mid-headers, stopped mid-body, trickling the body a
byte at a time, or sending more than any request may carry."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from tests.reliability.support import SOAK, Process
from tests.streams import close_stream

T = TypeVar("T")

KINDS: Final = ("handshake", "headers", "body", "trickle")
HEAD: Final = (
    b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
)
BODY_WAIT: Final = 40.0
"""How long a stalled body may take to be cut off: the webhook's 10 s and room."""
IDLE_WAIT: Final = 200.0
"""Idle (120 s) and TLS handshake (60 s) limits, and room."""


@dataclass
class Held(Generic[T]):
    victims: T
    """What the clients served meanwhile got."""
    rss_held: int
    """The server's memory while the connections were held."""
    outcomes: dict[str, list[str]] = field(default_factory=dict)


async def _outcome(reader: asyncio.StreamReader, wait: float) -> str:
    """The status the server answered, "closed", or "open" after `wait`."""
    try:
        async with asyncio.timeout(wait):
            line = await reader.readline()
    except TimeoutError:
        return "open"
    except (ConnectionError, OSError, ssl.SSLError):
        return "closed"
    if not line:
        return "closed"
    parts = line.split()
    return parts[1].decode() if len(parts) > 1 else "closed"


async def _open(
    port: int, context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1",
        port,
        ssl=context,
        server_hostname="127.0.0.1" if context else None,
    )


async def stall(
    kind: str, port: int, context: ssl.SSLContext, released: asyncio.Event
) -> str:
    """Hold one connection as `kind` does; what became of it."""
    if kind == "handshake":
        reader, writer = await _open(port, None)  # TCP only: no ClientHello
    else:
        reader, writer = await _open(port, context)
    trickling: asyncio.Task[None] | None = None
    if kind == "headers":
        writer.write(HEAD)
    elif kind == "body":
        writer.write(HEAD + b"Content-Length: 100000\r\n\r\n" + b'{"apiVersion":')
    elif kind == "trickle":
        writer.write(HEAD + b"Content-Length: 100000\r\n\r\n")
        trickling = asyncio.create_task(_trickle(writer))
    try:
        await writer.drain()
        if kind in ("body", "trickle"):
            return await _outcome(reader, BODY_WAIT)
        if SOAK:
            return await _outcome(reader, IDLE_WAIT)
        await released.wait()
        return "held"
    finally:
        if trickling is not None:
            trickling.cancel()
        await close_stream(writer)


async def _trickle(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while True:
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.25)


async def oversized(port: int, context: ssl.SSLContext, *, chunked: bool) -> str:
    """A body larger than any review: declared up front, or streamed."""
    reader, writer = await _open(port, context)
    try:
        if chunked:
            writer.write(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"x" * 65536
            with contextlib.suppress(ConnectionError, OSError):
                for _ in range(64):  # 4 MiB, more than the 3 MiB limit
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
        else:
            writer.write(HEAD + b"Content-Length: 10485760\r\n\r\n{")
            await writer.drain()
        return await _outcome(reader, BODY_WAIT)
    finally:
        await close_stream(writer)


async def stalled_while(
    port: int,
    context: ssl.SSLContext,
    victims: Callable[[], T],
    *,
    server: Process,
    count: int,
) -> Held[T]:
    """Open `count` stalled connections (a quarter of each kind) and five
    oversized requests, run `victims()` in a thread meanwhile, and wait for
    what the server does with each stalled connection."""
    released = asyncio.Event()
    tasks: dict[str, list[asyncio.Task[str]]] = {kind: [] for kind in KINDS}
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        tasks[kind].append(asyncio.create_task(stall(kind, port, context, released)))
        if index % 50 == 49:
            await asyncio.sleep(0.05)  # let the handshakes through
    tasks["oversized"] = [
        asyncio.create_task(oversized(port, context, chunked=index % 2 == 1))
        for index in range(6)
    ]
    await asyncio.sleep(0.5)
    rss_held = server.rss()
    answered = await asyncio.to_thread(victims)
    rss_held = max(rss_held, server.rss())
    released.set()
    outcomes = {
        kind: [str(r) for r in await asyncio.gather(*group, return_exceptions=True)]
        for kind, group in tasks.items()
    }
    return Held(answered, rss_held, outcomes)
