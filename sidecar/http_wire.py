"""The little HTTP/1.1 that the probe server and the issuer client speak.

Both ends close the connection after one exchange (`Connection: close`), so
there is no keep-alive, pipelining or upgrade to handle. Everything read from
the peer is bounded: the header block in bytes and in fields, the body in
bytes. The caller bounds the time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

MAX_HEAD_BYTES: Final = 8192
"""Start line plus header fields; probes, scrapes and the issuer's answers
use a few hundred bytes."""
MAX_HEADERS: Final = 64

REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_HEX_DIGITS: Final = frozenset(b"0123456789abcdefABCDEF")


class ProtocolError(Exception):
    """The peer broke HTTP/1.1 or a limit; `status` is what a server answers."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Head:
    """A start line and its header fields, names in lower case."""

    start_line: str
    headers: dict[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)


async def read_head(
    reader: asyncio.StreamReader,
    *,
    max_bytes: int = MAX_HEAD_BYTES,
    max_headers: int = MAX_HEADERS,
) -> Head:
    """Read a start line and header fields up to the empty line.

    Raises ProtocolError for a malformed or oversized head, and
    asyncio.IncompleteReadError when the peer closes before the empty line.
    """
    lines: list[str] = []
    size = 0
    while True:
        line = await _read_line(reader, room=max_bytes - size)
        size += len(line)
        text = line.rstrip(b"\r\n")
        if not text:
            if lines:
                break
            continue  # RFC 9112 2.2: ignore empty lines before the start line
        if len(lines) > max_headers:
            raise ProtocolError(f"more than {max_headers} header fields", status=431)
        lines.append(text.decode("latin-1"))
    return Head(lines[0], _fields(lines[1:]))


async def _read_line(reader: asyncio.StreamReader, *, room: int) -> bytes:
    too_long = ProtocolError(
        f"the header block exceeds {MAX_HEAD_BYTES} bytes", status=431
    )
    if room <= 0:
        raise too_long
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as exc:
        raise too_long from exc
    if len(line) > room:
        raise too_long
    return line


def _fields(lines: list[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or not set(name) <= _TOKEN_CHARS:
            # Covers obsolete line folding and whitespace before the colon,
            # which RFC 9112 5.1 says to reject.
            raise ProtocolError("malformed header field")
        key = name.lower()
        value = value.strip(" \t")
        if key in fields:
            if key in ("content-length", "host", "transfer-encoding"):
                raise ProtocolError(f"repeated {name} header")
            fields[key] = f"{fields[key]}, {value}"
        else:
            fields[key] = value
    return fields


async def read_body(
    reader: asyncio.StreamReader, head: Head, *, max_bytes: int
) -> bytes:
    """The message body that follows `head` (a response's: framed by
    Content-Length, chunked, or the end of the connection)."""
    encoding = head.get("transfer-encoding").lower()
    if encoding:
        if encoding != "chunked":
            raise ProtocolError(f"unsupported Transfer-Encoding {encoding!r}")
        return await _read_chunked(reader, max_bytes=max_bytes)
    length_text = head.get("content-length")
    if length_text:
        if not length_text.isdigit():
            raise ProtocolError(f"invalid Content-Length {length_text!r}")
        length = int(length_text)
        if length > max_bytes:
            raise ProtocolError(f"a body of {length} bytes exceeds {max_bytes}")
        return await reader.readexactly(length)
    body = await reader.read(max_bytes + 1)
    while body and len(body) <= max_bytes:
        more = await reader.read(max_bytes + 1 - len(body))
        if not more:
            break
        body += more
    if len(body) > max_bytes:
        raise ProtocolError(f"the body exceeds {max_bytes} bytes")
    return body


async def _read_chunked(reader: asyncio.StreamReader, *, max_bytes: int) -> bytes:
    body = bytearray()
    while True:
        size_line = await _read_line(reader, room=MAX_HEAD_BYTES)
        size_text = size_line.split(b";", 1)[0].strip()
        if not size_text or not set(size_text) <= _HEX_DIGITS:
            raise ProtocolError("malformed chunk size")
        size = int(size_text, 16)
        if len(body) + size > max_bytes:
            raise ProtocolError(f"the body exceeds {max_bytes} bytes")
        if size == 0:
            break
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ProtocolError("a chunk does not end with CRLF")
    # Trailer fields, up to the empty line; nothing here uses them.
    room = MAX_HEAD_BYTES
    while (line := await _read_line(reader, room=room)).rstrip(b"\r\n"):
        room -= len(line)
    return bytes(body)


def encode_head(start_line: str, headers: list[tuple[str, str]]) -> bytes:
    """A start line and header fields, ready to send before the body."""
    lines = [start_line, *(f"{name}: {value}" for name, value in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")
