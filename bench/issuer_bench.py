"""The issuer: tokens signed per second at /token, kept-alive TLS at c16."""

from __future__ import annotations

import json
from typing import Final

from bench import report
from bench.load import LoadGenerator, LoadResult, LoadSpec
from bench.plan import Plan
from bench.report import Row, Verdict
from bench.workspace import Workspace

SECTION: Final = "issuer /token"
CONCURRENCY: Final = 16


def measure(
    workspace: Workspace, generator: LoadGenerator, plan: Plan, *, url: str
) -> list[LoadResult]:
    body = workspace.root / "token-request.json"
    body.write_text(json.dumps({"provider": "aws", "identity": "payments-reports-s3"}))
    spec = LoadSpec(
        url,
        body,
        CONCURRENCY,
        plan.seconds,
        headers=("Authorization: Bearer bench.serviceaccount.token",),
    )
    generator.run(LoadSpec(url, body, CONCURRENCY, 1.0, headers=spec.headers))
    return [generator.run(spec) for _ in range(plan.repeats)]


def rows(results: list[LoadResult]) -> list[Row]:
    rate = report.median(r.rate for r in results)
    p99 = report.median(r.p99 for r in results)
    errors = sum(r.errors for r in results)
    measured = f"{report.rate(rate)}, p99 {report.millis(p99)}"
    verdict = Verdict.INFO
    if errors:
        measured += f", {errors} errors"
        verdict = Verdict.MISS
    return [
        Row(
            SECTION,
            f"tokens signed, RS256 key, kept-alive c{CONCURRENCY}",
            measured,
            verdict=verdict,
        )
    ]
