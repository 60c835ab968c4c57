"""Load from a process of its own: AdmissionReviews over TLS, each with a unique
uid, and every answer checked.

    python -m tests.reliability.loadgen PLAN.json RESULT.json

The plan (a `Plan` as JSON) bounds the run by a number of requests and a
number of seconds, whichever comes first. The result counts answers and
failures by kind, latencies, and the certificates that new connections saw.
Failures are classified so that a test can tell a clean refusal (nobody
listening, or a connection closed before the request was read) from a lost
request (an answer cut off, or none at all in time).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import ssl
import sys
import time
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

UID_MARK: Final = "__UID__"
FAILURE_SAMPLES: Final = 20


@dataclass
class Plan:
    port: int
    cafile: str
    bodies: list[tuple[str, int]]
    """(AdmissionReview JSON with UID_MARK where the uid goes, weight)."""
    requests: int
    seconds: float
    connections: int = 8
    """Workers on keep-alive connections."""
    fresh_connections: int = 0
    """Workers that open a new connection (a full handshake) per request."""
    uid_prefix: str = "load"
    stop_file: str = ""
    """Stop early once this file exists."""
    until_refused: bool = False
    """A worker stops for good once a connection is refused (the server left)."""
    progress_file: str = ""
    uids_file: str = ""
    """Every answered uid, one a line (to match against the server's log)."""
    timeout: float = 30.0
    """Per request: a longer wait is a lost request."""
    check_every: int = 50
    """Every Nth answer is decoded in full (its JSON Patch too)."""
    seed: int = 0


@dataclass
class Result:
    sent: int = 0
    answered: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    failure_samples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    checked_in_full: int = 0
    certificates: list[str] = field(default_factory=list)
    """Fingerprints of the server certificates new connections were shown."""
    connections_opened: int = 0


class Lost(Exception):
    """A request that got no complete answer; `kind` says how."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Run:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.result = Result()
        self.context = ssl.create_default_context(cafile=plan.cafile)
        self.latencies = array("d")
        self.certificates: set[str] = set()
        self.deadline = time.monotonic() + plan.seconds
        self.counter = 0
        self.stopped = False
        weighted = [(text, weight) for text, weight in plan.bodies if weight > 0]
        self.templates = [text for text, _ in weighted]
        self.weights = [weight for _, weight in weighted]
        self.random = random.Random(plan.seed)  # noqa: S311 - picks bodies, no secret
        self.uids = open(plan.uids_file, "w") if plan.uids_file else None  # noqa: SIM115

    def claim(self) -> bool:
        """Take the next request of the plan, if there is one left."""
        if self.stopped or self.result.sent >= self.plan.requests:
            return False
        if time.monotonic() > self.deadline or (
            self.plan.stop_file and os.path.exists(self.plan.stop_file)
        ):
            self.stopped = True
        else:
            self.result.sent += 1
        return not self.stopped

    def unclaim(self) -> None:
        """Give back a claimed request that was never sent (no connection)."""
        self.result.sent -= 1

    def next_request(self, *, close: bool) -> tuple[str, bytes]:
        self.counter += 1
        uid = f"{self.plan.uid_prefix}-{self.counter}"
        template = self.random.choices(self.templates, self.weights)[0]
        body = template.replace(UID_MARK, uid).encode()
        head = (
            "POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        )
        return uid, head.encode() + body

    def failed(self, kind: str, detail: str) -> None:
        self.result.failures[kind] = self.result.failures.get(kind, 0) + 1
        if len(self.result.failure_samples) < FAILURE_SAMPLES:
            self.result.failure_samples.append(f"{kind}: {detail}"[:300])

    def answered(self, uid: str, body: bytes, started: float) -> None:
        elapsed = time.perf_counter() - started
        if (self.result.answered + 1) % self.plan.check_every == 0:
            check_in_full(body, uid)
            self.result.checked_in_full += 1
        self.latencies.append(elapsed)
        self.result.answered += 1
        if self.uids is not None:
            self.uids.write(uid + "\n")

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1",
                self.plan.port,
                ssl=self.context,
                server_hostname="127.0.0.1",
            ),
            self.plan.timeout,
        )
        self.result.connections_opened += 1
        return reader, writer


def check_in_full(body: bytes, uid: str) -> None:
    """Decode an answer as the API server would, patch included."""
    review = json.loads(body)
    response = review["response"]
    if review.get("kind") != "AdmissionReview" or response.get("uid") != uid:
        raise Lost("wrong_answer", f"not an AdmissionReview for {uid}")
    if "patch" in response:
        patch = json.loads(base64.b64decode(response["patch"]))
        if not isinstance(patch, list) or response.get("patchType") != "JSONPatch":
            raise Lost("wrong_answer", "the patch is not a JSON Patch")


async def exchange(
    run: Run,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    close: bool,
) -> bool:
    """One request on an open connection; whether the connection stays usable."""
    uid, request = run.next_request(close=close)
    started = time.perf_counter()
    try:
        writer.write(request)
        await writer.drain()
    except (ConnectionError, OSError) as exc:
        raise Lost("closed_before_response", f"write: {exc!r}") from exc
    try:
        async with asyncio.timeout(run.plan.timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            length, keep = _parse_head(head)
            body = await reader.readexactly(length)
    except TimeoutError as exc:
        raise Lost("timeout", f"no answer within {run.plan.timeout:g} s") from exc
    except asyncio.IncompleteReadError as exc:
        kind = "closed_before_response" if not exc.partial else "cut_off"
        raise Lost(kind, f"{len(exc.partial)} bytes then EOF") from exc
    except (ConnectionError, OSError, ssl.SSLError) as exc:
        raise Lost("closed_before_response", repr(exc)) from exc
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        raise Lost(f"status_{status}", body[:200].decode(errors="replace"))
    if b'"uid":"' + uid.encode() + b'"' not in body or b'"allowed":true' not in body:
        raise Lost("wrong_answer", body[:200].decode(errors="replace"))
    run.answered(uid, body, started)
    return keep and not close


def _parse_head(head: bytes) -> tuple[int, bool]:
    length = 0
    keep = True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
    return length, keep


def connect_failure(exc: BaseException) -> str:
    """How a connection attempt failed, before any request was sent: "refused"
    (nobody listening, or the listener closed during the handshake), or
    "handshake" (TLS refused, e.g. a certificate that does not verify)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "handshake"
    if isinstance(exc, ConnectionError | ssl.SSLEOFError | TimeoutError):
        return "refused"
    return "handshake"


async def keepalive_worker(run: Run) -> None:
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while run.claim():
        if connection is None:
            try:
                connection = await run.connect()
            except (OSError, TimeoutError) as exc:
                run.unclaim()
                kind = connect_failure(exc)
                run.failed(kind, repr(exc))
                if run.plan.until_refused and kind == "refused":
                    return
                await asyncio.sleep(0.05)
                continue
        reader, writer = connection
        try:
            if not await exchange(run, reader, writer, close=False):
                _close(writer)
                connection = None
        except Lost as lost:
            run.failed(lost.kind, str(lost))
            _close(writer)
            connection = None
    if connection is not None:
        _close(connection[1])


async def fresh_worker(run: Run) -> None:
    """A new connection per request, so each one is a TLS handshake."""
    while run.claim():
        try:
            reader, writer = await run.connect()
        except (OSError, TimeoutError) as exc:
            run.unclaim()
            kind = connect_failure(exc)
            run.failed(kind, repr(exc))
            if run.plan.until_refused and kind == "refused":
                return
            await asyncio.sleep(0.05)
            continue
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if der:
            run.certificates.add(hashlib.sha256(der).hexdigest()[:16])
        try:
            await exchange(run, reader, writer, close=True)
        except Lost as lost:
            run.failed(lost.kind, str(lost))
        _close(writer)


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.close()


async def report_progress(run: Run) -> None:
    path = Path(run.plan.progress_file)
    staging = path.with_suffix(".tmp")
    while True:
        staging.write_text(f"{run.result.answered} {run.result.sent}\n")
        os.replace(staging, path)
        await asyncio.sleep(0.2)


async def main(plan: Plan) -> Result:
    run = Run(plan)
    started = time.perf_counter()
    reporter = asyncio.create_task(report_progress(run)) if plan.progress_file else None
    workers = [keepalive_worker(run) for _ in range(plan.connections)]
    workers += [fresh_worker(run) for _ in range(plan.fresh_connections)]
    await asyncio.gather(*workers)
    if reporter is not None:
        reporter.cancel()
    if run.uids is not None:
        run.uids.close()
    result = run.result
    result.seconds = time.perf_counter() - started
    ordered = sorted(run.latencies)
    if ordered:
        result.p50_ms = ordered[len(ordered) // 2] * 1000
        result.p99_ms = ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)] * 1000
        result.max_ms = ordered[-1] * 1000
    result.certificates = sorted(run.certificates)
    return result


def load_result(path: Path) -> Result:
    return Result(**json.loads(path.read_text()))


def write_plan(plan: Plan, path: Path) -> Path:
    path.write_text(json.dumps(asdict(plan)))
    return path


def read_progress(path: Path) -> int:
    """Answers so far, as the generator last wrote them."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def run_from_files(plan_path: str, result_path: str) -> None:
    raw: dict[str, Any] = json.loads(Path(plan_path).read_text())
    raw["bodies"] = [tuple(item) for item in raw["bodies"]]
    plan = Plan(**raw)
    result = asyncio.run(main(plan))
    if plan.progress_file:
        Path(plan.progress_file).write_text(f"{result.answered} {result.sent}\n")
    Path(result_path).write_text(json.dumps(asdict(result)))


if __name__ == "__main__":
    run_from_files(sys.argv[1], sys.argv[2])
