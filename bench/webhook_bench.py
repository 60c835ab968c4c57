"""The webhook under load: rates and latencies per pod, concurrency and
connection mode; the bare-handler floor; memory after many requests."""

from __future__ import annotations

import base64
import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bench import report
from bench.load import LoadGenerator, LoadResult, LoadSpec
from bench.plan import CONCURRENCIES, FIRST_MEMORY_READING, Plan
from bench.report import Row, Verdict
from bench.servers import ReferenceServer, WebhookServer
from bench.system import BenchError, Cores, cpu_seconds, rss_mib
from bench.workspace import SERVER_IDENTITIES, Workspace

SECTION: Final = f"webhook /mutate over TLS ({SERVER_IDENTITIES:,} identities loaded)"
SMALL: Final = "8 KB pod"
LARGE: Final = "80-container pod"
NO_MATCH: Final = "no-match pod"
REFERENCE: Final = "bare aiohttp handler"

RATE_TARGET: Final = 5_000.0
P99_TARGET: Final = 0.008
NEW_CONNECTION_RATE_TARGET: Final = 800.0
LARGE_COST_TARGET: Final = 5.0
MEMORY_GROWTH_TARGET: Final = 0.10
SETTLE_SECONDS: Final = 0.5
"""Pause before reading memory, so closing connections have been freed."""


@dataclass(frozen=True, slots=True)
class Point:
    """One load configuration; `pod` is REFERENCE for the bare handler."""

    pod: str
    new_connections: bool
    concurrency: int

    def describe(self) -> str:
        mode = "new connections" if self.new_connections else "kept-alive"
        return f"{self.pod}, {mode}, c{self.concurrency}"


KEY_POINT: Final = Point(SMALL, False, 16)
NEW_CONNECTION_POINT: Final = Point(SMALL, True, 16)
LARGE_POINT: Final = Point(LARGE, False, 16)
REFERENCE_POINT: Final = Point(REFERENCE, False, 16)


def points() -> list[Point]:
    return [
        Point(pod, new, concurrency)
        for pod in (SMALL, LARGE, NO_MATCH)
        for new in (False, True)
        for concurrency in CONCURRENCIES
    ]


def check_answers(workspace: Workspace, server: WebhookServer) -> dict[str, Any]:
    """Send each pod once and make sure the answer is the one the table is
    about (a patch for the matched pods, none for the other); the 8 KB pod's
    answer is returned for the bare handler to send."""
    answers = {}
    for pod, path in workspace.bodies.items():
        answer: dict[str, Any] = workspace.post_json(server.url, path.read_bytes())
        response = answer.get("response", {})
        patched = "patch" in response
        if not response.get("allowed") or patched == (pod == NO_MATCH):
            raise BenchError(
                f"the webhook's answer for the {pod} is not what the benchmark "
                f"expects: {json.dumps(response)[:500]}"
            )
        if patched:
            ops = json.loads(base64.b64decode(response["patch"]))
            if not ops:
                raise BenchError(f"the {pod} got an empty patch")
        answers[pod] = answer
    return answers[SMALL]


@dataclass(frozen=True, slots=True)
class Sample:
    """One load run, and the CPU time the server used during it."""

    load: LoadResult
    server_cpu: float

    @property
    def cpu_per_review(self) -> float:
        """The server's cost of one review: CPU time, so work that other
        processes on a shared machine steal from the core does not count."""
        return self.server_cpu / self.load.requests if self.load.requests else 0.0


Matrix = dict[Point, list[Sample]]


def measure(
    workspace: Workspace,
    generator: LoadGenerator,
    plan: Plan,
    cores: Cores,
    progress: Callable[[str], None],
) -> Matrix:
    """Every point `plan.repeats` times, round-robin, so a noisy minute on the
    machine spreads over all points instead of spoiling one."""
    server = WebhookServer(workspace, cpu=cores.server, name="webhook")
    try:
        answer = check_answers(workspace, server)
        reference = ReferenceServer(workspace, answer, cpu=cores.server)
        try:
            return _measure(workspace, generator, plan, server, reference, progress)
        finally:
            reference.child.stop()
    finally:
        server.child.stop()


def _spec(workspace: Workspace, point: Point, url: str, seconds: float) -> LoadSpec:
    body = workspace.bodies[SMALL if point.pod == REFERENCE else point.pod]
    return LoadSpec(url, body, point.concurrency, seconds, point.new_connections)


def _measure(
    workspace: Workspace,
    generator: LoadGenerator,
    plan: Plan,
    server: WebhookServer,
    reference: ReferenceServer,
    progress: Callable[[str], None],
) -> Matrix:
    def url(point: Point) -> str:
        return reference.url if point.pod == REFERENCE else server.url

    def pid(point: Point) -> int:
        return reference.child.pid if point.pod == REFERENCE else server.child.pid

    # Warm both servers (first handshakes, the tag cache) without recording.
    for point in (KEY_POINT, LARGE_POINT, Point(NO_MATCH, False, 16), REFERENCE_POINT):
        generator.run(_spec(workspace, point, url(point), min(plan.seconds, 1.0)))
    results: Matrix = defaultdict(list)
    schedule = [*points(), REFERENCE_POINT]
    for repeat in range(plan.repeats):
        progress(f"webhook load, round {repeat + 1} of {plan.repeats}")
        for point in schedule:
            spec = _spec(workspace, point, url(point), plan.seconds)
            before = cpu_seconds(pid(point))
            load = generator.run(spec)
            results[point].append(Sample(load, cpu_seconds(pid(point)) - before))
    return results


# --- rows ---------------------------------------------------------------------


def _median(samples: Sequence[Sample], field: str) -> float:
    return report.median(float(getattr(s.load, field)) for s in samples)


def _cost(samples: Sequence[Sample]) -> float:
    return report.median(s.cpu_per_review for s in samples)


def _describe(samples: Sequence[Sample]) -> str:
    text = (
        f"{report.rate(_median(samples, 'rate'))}, "
        f"p50 {report.millis(_median(samples, 'p50'))}, "
        f"p99 {report.millis(_median(samples, 'p99'))}; "
        f"{report.millis(_cost(samples))} CPU/review"
    )
    errors = sum(s.load.errors for s in samples)
    return f"{text}; {errors} errors" if errors else text


def _with_capacity(samples: Sequence[Sample]) -> str:
    """The description, plus the rate one free core would give at that cost:
    on a shared machine the measured rate also shows what others took."""
    cost = _cost(samples)
    capacity = f" (= {report.rate(1 / cost)} per free core)" if cost > 0 else ""
    return _describe(samples) + capacity


def _target(point: Point, samples: Sequence[Sample]) -> tuple[str, Verdict]:
    if any(s.load.errors for s in samples):
        return "no errors", Verdict.MISS
    if point == KEY_POINT:
        return (
            f">= {RATE_TARGET:,.0f}/s, p99 <= {P99_TARGET * 1000:g} ms",
            report.both(
                report.at_least(_median(samples, "rate"), RATE_TARGET),
                report.at_most(_median(samples, "p99"), P99_TARGET),
            ),
        )
    if point == NEW_CONNECTION_POINT:
        verdict = report.at_least(_median(samples, "rate"), NEW_CONNECTION_RATE_TARGET)
        return f">= {NEW_CONNECTION_RATE_TARGET:,.0f}/s", verdict
    return report.NO_TARGET, Verdict.INFO


def paired_ratio(matrix: Matrix, numerator: Point, denominator: Point) -> float:
    """Median over rounds of numerator's CPU per review / denominator's, both
    from the same round."""
    return report.median(
        a.cpu_per_review / b.cpu_per_review
        for a, b in zip(matrix[numerator], matrix[denominator], strict=True)
        if b.cpu_per_review > 0
    )


def rows(matrix: Matrix) -> list[Row]:
    out = []
    for point in points():
        samples = matrix[point]
        target, verdict = _target(point, samples)
        text = (
            _describe(samples) if verdict is Verdict.INFO else _with_capacity(samples)
        )
        out.append(Row(SECTION, point.describe(), text, target, verdict))
    large = paired_ratio(matrix, LARGE_POINT, KEY_POINT)
    out.append(
        Row(
            SECTION,
            "80-container pod / 8 KB pod, CPU per review (kept-alive, c16)",
            report.ratio(large),
            f"<= {LARGE_COST_TARGET:g}x",
            report.at_most(large, LARGE_COST_TARGET),
        )
    )
    out.append(
        Row(
            SECTION,
            f"floor: {REFERENCE}, same parse and answer bytes, 8 KB pod, c16",
            _describe(matrix[REFERENCE_POINT]),
        )
    )
    out.append(
        Row(
            SECTION,
            "8 KB pod, kept-alive, c16: webhook / floor, CPU per review",
            report.ratio(paired_ratio(matrix, KEY_POINT, REFERENCE_POINT)),
        )
    )
    return out


# --- memory -------------------------------------------------------------------


def measure_memory(
    workspace: Workspace,
    generator: LoadGenerator,
    counter: LoadGenerator,
    plan: Plan,
    cores: Cores,
    progress: Callable[[str], None],
) -> Row:
    """RSS after the first 1,000 reviews against RSS after `memory_requests`,
    on a server of its own: 8 KB pods at c16, nine parts kept-alive to one
    part new connections, so connection set-up and tear-down are in it too."""
    metric = (
        f"server RSS after {FIRST_MEMORY_READING:,} reviews vs after "
        f"{plan.memory_requests:,}"
    )
    target = f"within {MEMORY_GROWTH_TARGET:.0%}"
    server = WebhookServer(workspace, cpu=cores.server, name="webhook-memory")
    try:
        body = workspace.bodies[SMALL]
        kept = LoadSpec(server.url, body, 16, plan.seconds)
        fresh = LoadSpec(server.url, body, 16, 1.0, new_connections=True)
        counter.run(kept, requests=FIRST_MEMORY_READING)
        time.sleep(SETTLE_SECONDS)
        first, first_count = rss_mib(server.child.pid), server.served()
        _drive(server, generator, kept, fresh, plan, progress)
        time.sleep(SETTLE_SECONDS)
        last, last_count = rss_mib(server.child.pid), server.served()
    finally:
        server.child.stop()
    growth = last / first - 1
    measured = (
        f"{report.mib(first)} after {first_count:,} -> {report.mib(last)} after "
        f"{last_count:,} ({growth:+.1%})"
    )
    if last_count < plan.memory_requests:
        measured += "; the time cap came first"
    verdict = report.at_most(abs(growth), MEMORY_GROWTH_TARGET)
    return Row(SECTION, metric, measured, target, verdict)


def _drive(
    server: WebhookServer,
    generator: LoadGenerator,
    kept: LoadSpec,
    fresh: LoadSpec,
    plan: Plan,
    progress: Callable[[str], None],
) -> None:
    # Bounded twice: by the count and by the plan's time cap.
    wanted = plan.memory_requests
    deadline = time.monotonic() + plan.memory_seconds
    served, rate = server.served(), 1_000.0
    while served < wanted and time.monotonic() < deadline - 1:
        left = min(wanted - served, (deadline - time.monotonic()) * rate)
        seconds = min(9.0, max(1.0, left / rate))
        result = generator.run(LoadSpec(kept.url, kept.body, 16, seconds))
        rate = max(rate, result.rate)
        generator.run(fresh)
        served = server.served()
        progress(f"memory: {served:,} of {wanted:,} reviews")
