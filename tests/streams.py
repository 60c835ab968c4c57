"""Closing asyncio streams in tests so that nothing is left for the garbage
collector to report.

`writer.close()` only starts closing: a TLS transport still has its shutdown
to exchange, and a plain one drops its socket on a later turn of the loop. A
test whose loop ends first leaves the transport open, and the garbage
collector later reports it as an unclosed transport in whichever test happens
to be running, where `-W error` fails that innocent test.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

CLOSE_TIMEOUT_SECONDS = 5.0


async def close_stream(writer: asyncio.StreamWriter) -> None:
    """Close `writer` and wait until its transport is gone; a peer that has
    already left is no error here."""
    writer.close()
    with contextlib.suppress(ConnectionError, OSError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT_SECONDS)
