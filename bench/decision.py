"""The cost of one decision, in this process: `webhook.admission.decide` with
10, 1,000 and 10,000 identities loaded, and the whole in-process path
(parse, decide, serialize) for the 8 KB and the 80-container pod."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from bench import fixtures, report
from bench.plan import IDENTITY_COUNTS, Plan
from bench.report import Row, Verdict
from webhook import admission
from webhook.identities import parse_identities
from webhook.namespaces import NamespaceInfo, namespaces_from_documents
from webhook.scope import IdentityIndex
from webhook.sidecar_spec import SidecarSettings

SECTION: Final = "webhook decision, in process (admission.decide)"
IDENTITY_COST_TARGET: Final = 2.0


@dataclass(frozen=True, slots=True)
class Case:
    """One decision to time: a pod against a population."""

    pod: str
    identities: int
    call: Callable[[], object]


def _namespace() -> NamespaceInfo:
    known = namespaces_from_documents(
        fixtures.namespace_documents(), webhook_namespace="workload-identity-system"
    )
    return known[fixtures.NAMESPACE]


def _index(count: int) -> IdentityIndex:
    loaded = parse_identities(fixtures.identity_documents(count))
    if loaded.errors:
        raise ValueError(f"invalid benchmark identities: {loaded.errors[0]}")
    return IdentityIndex(loaded.identities)


def _decider(
    body: bytes, index: IdentityIndex, namespace: NamespaceInfo
) -> Callable[[], admission.Answer]:
    review = admission.parse_review(json.loads(body))
    settings = SidecarSettings()

    def decide() -> admission.Answer:
        return admission.decide(
            review, namespace=namespace, index=index, settings=settings
        )

    return decide


def _whole_path(
    body: bytes, index: IdentityIndex, namespace: NamespaceInfo
) -> Callable[[], bytes]:
    settings = SidecarSettings()

    def path() -> bytes:
        review = admission.parse_review(json.loads(body))
        answer = admission.decide(
            review, namespace=namespace, index=index, settings=settings
        )
        return json.dumps(answer.review, separators=(",", ":")).encode()

    return path


def cases() -> Iterator[Case]:
    namespace = _namespace()
    bodies = fixtures.bodies()
    for count in IDENTITY_COUNTS:
        index = _index(count)
        for pod in ("8 KB pod", "no-match pod"):
            yield Case(pod, count, _decider(bodies[pod], index, namespace))
    index = _index(1_000)
    for pod in ("8 KB pod", "80-container pod"):
        yield Case(
            f"{pod}, parse + decide + serialize",
            1_000,
            _whole_path(bodies[pod], index, namespace),
        )


def _calibrate(call: Callable[[], object], seconds: float) -> int:
    """How many calls make one timed run last about `seconds`."""
    call()  # the first call fills per-project caches
    number, elapsed = 1, 0.0
    while elapsed < seconds / 10:
        number *= 2
        started = time.perf_counter()
        for _ in range(number):
            call()
        elapsed = time.perf_counter() - started
    return max(1, int(number * seconds / elapsed))


def time_cases(plan: Plan) -> dict[tuple[str, int], float]:
    """Median seconds per call of every case; runs go round-robin over the
    cases so that drift on the machine touches them all alike."""
    all_cases = list(cases())
    numbers = [_calibrate(c.call, plan.decision_run_seconds) for c in all_cases]
    runs: dict[tuple[str, int], list[float]] = {
        (c.pod, c.identities): [] for c in all_cases
    }
    for _ in range(plan.decision_runs):
        for case, number in zip(all_cases, numbers, strict=True):
            call = case.call
            started = time.perf_counter()
            for _ in range(number):
                call()
            runs[(case.pod, case.identities)].append(
                (time.perf_counter() - started) / number
            )
    return {key: report.median(values) for key, values in runs.items()}


def rows(costs: dict[tuple[str, int], float]) -> list[Row]:
    out = []
    for pod in ("8 KB pod", "no-match pod"):
        for count in IDENTITY_COUNTS:
            out.append(
                Row(
                    SECTION,
                    f"{pod}, {count:,} identities",
                    report.micros(costs[(pod, count)]),
                )
            )
        ratio = costs[(pod, IDENTITY_COUNTS[-1])] / costs[(pod, IDENTITY_COUNTS[0])]
        out.append(
            Row(
                SECTION,
                f"{pod}: cost at {IDENTITY_COUNTS[-1]:,} / cost at {IDENTITY_COUNTS[0]:,}",
                report.ratio(ratio),
                f"<= {IDENTITY_COST_TARGET:g}x",
                report.at_most(ratio, IDENTITY_COST_TARGET),
            )
        )
    small = costs[("8 KB pod, parse + decide + serialize", 1_000)]
    large = costs[("80-container pod, parse + decide + serialize", 1_000)]
    out.append(
        Row(
            SECTION,
            "80-container / 8 KB pod, parse + decide + serialize",
            f"{report.micros(large)} / {report.micros(small)} = {report.ratio(large / small)}",
            verdict=Verdict.INFO,
        )
    )
    return out
