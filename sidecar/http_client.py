"""One HTTPS request and its answer: what issuer mode needs, and no more.

The pod's ServiceAccount token travels in the request, so the client is narrow
on purpose: https only, the certificate verified against the configured trust,
the URL's host as SNI and for the name check, never a proxy, never a redirect,
one request per connection, a bounded answer and one deadline for it all.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from sidecar.http_wire import Head, ProtocolError, encode_head, read_body, read_head

USER_AGENT: Final = "workload-identity-sidecar"
_NO_BODY_STATUSES: Final = frozenset({204, 304})


class RequestError(Exception):
    """No usable answer: the message says what went wrong, in a few words."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes


async def post(
    url: str,
    body: bytes,
    *,
    headers: Sequence[tuple[str, str]],
    ssl_context: ssl.SSLContext,
    max_body: int,
) -> Answer:
    """POST `body` to the https `url` and return the answer, whatever its status.

    Raises RequestError when no complete answer arrives. The caller bounds the
    time, with `asyncio.timeout` around the whole call.
    """
    host, port, target, authority = _parts(url)
    head = encode_head(
        f"POST {target} HTTP/1.1",
        [
            ("Host", authority),
            ("User-Agent", USER_AGENT),
            ("Accept", "application/json"),
            *headers,
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ],
    )
    try:
        return await _exchange(
            host, port, head + body, ssl_context=ssl_context, max_body=max_body
        )
    except ssl.SSLCertVerificationError as exc:
        raise RequestError(
            f"the TLS certificate was not accepted ({exc.verify_message})"
        ) from exc
    except (ssl.SSLError, OSError) as exc:
        raise RequestError(_describe_os_error(exc)) from exc
    except asyncio.IncompleteReadError as exc:
        raise RequestError(
            "the connection closed before the answer was complete"
        ) from exc
    except ProtocolError as exc:
        raise RequestError(f"the answer is not valid HTTP/1.1 ({exc})") from exc


def _parts(url: str) -> tuple[str, int, str, str]:
    """(host, port, request target, Host header) of an https URL."""
    parts = urlsplit(url)
    try:
        port = parts.port or 443
    except ValueError as exc:
        raise RequestError(f"the URL {url!r} has an invalid port") from exc
    if parts.scheme != "https" or not parts.hostname:
        raise RequestError(f"the URL {url!r} is not an https URL with a host")
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    authority = parts.netloc.rpartition("@")[2]
    return parts.hostname, port, target, authority


async def _exchange(
    host: str,
    port: int,
    request: bytes,
    *,
    ssl_context: ssl.SSLContext,
    max_body: int,
) -> Answer:
    reader, writer = await asyncio.open_connection(
        host, port, ssl=ssl_context, server_hostname=host
    )
    try:
        writer.write(request)
        await writer.drain()
        status, head = await _read_status(reader)
        payload = (
            b""
            if status in _NO_BODY_STATUSES
            else await read_body(reader, head, max_bytes=max_body)
        )
    finally:
        # The whole answer has been read, or nothing more is wanted from it:
        # no TLS close_notify round trip is worth waiting for.
        writer.transport.abort()
    return Answer(status, payload)


async def _read_status(reader: asyncio.StreamReader) -> tuple[int, Head]:
    while True:
        head = await read_head(reader)
        version, _, rest = head.start_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise ProtocolError(f"malformed status line {head.start_line[:40]!r}")
        status = int(code)
        if status == 101:
            raise ProtocolError("the issuer switched protocols unasked")
        if not 100 <= status < 200:
            return status, head
        # An interim answer (103 Early Hints); the final one follows.


def _describe_os_error(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc})"
    return exc.strerror or str(exc) or type(exc).__name__
