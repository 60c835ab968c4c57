"""`python -m bench.client`: an HTTPS load generator in a process of its own.

The fallback when Debian's wrk is not installed, and the tool for runs that
need an exact request count. Each of `--concurrency` workers sends the body,
waits for the answer and sends again, until the duration has passed or the
count is reached; with `--new-connections` every request opens (and the
server closes) its own TLS connection. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REQUEST_TIMEOUT_SECONDS = 30.0


@dataclass(slots=True)
class _Tally:
    budget: int | None
    deadline: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    issued: int = 0

    def claim(self) -> bool:
        """Whether a worker may send one more request."""
        if time.perf_counter() >= self.deadline:
            return False
        if self.budget is not None and self.issued >= self.budget:
            return False
        self.issued += 1
        return True


async def _worker(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    tally: _Tally,
) -> None:
    while tally.claim():
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status >= 400:
                    tally.errors += 1
        except (aiohttp.ClientError, OSError, TimeoutError):
            tally.errors += 1
        tally.latencies.append(time.perf_counter() - started)


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run(args: argparse.Namespace, body: bytes) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=args.ca) if args.ca else None
    headers = {"Content-Type": "application/json"}
    for header in args.header:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    connector = aiohttp.TCPConnector(
        limit=args.concurrency, ssl=context or False, force_close=args.new_connections
    )
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    started = time.perf_counter()
    tally = _Tally(args.requests, started + args.seconds)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False
    ) as session:
        await asyncio.gather(
            *(
                _worker(session, args.url, body, headers, tally)
                for _ in range(args.concurrency)
            )
        )
    elapsed = time.perf_counter() - started
    ordered = sorted(tally.latencies)
    return {
        "requests": len(ordered),
        "seconds": elapsed,
        "p50": _percentile(ordered, 0.50),
        "p99": _percentile(ordered, 0.99),
        "errors": tally.errors,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__)
    parser.add_argument("url", help="https://127.0.0.1:PORT/PATH")
    parser.add_argument("--body", required=True, help="file whose bytes are POSTed")
    parser.add_argument("--ca", help="CA bundle that verifies the server")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="stop after this long"
    )
    parser.add_argument("--requests", type=int, help="stop after this many requests")
    parser.add_argument("--new-connections", action="store_true")
    parser.add_argument(
        "--header", action="append", default=[], help="NAME: VALUE (repeatable)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = asyncio.run(run(args, Path(args.body).read_bytes()))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
