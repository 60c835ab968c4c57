"""How long and how often each part runs: the default (`make bench`, under ten
minutes), `--quick` (a smoke run) and `--full` (a million requests)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

CONCURRENCIES: Final = (1, 16, 64)
IDENTITY_COUNTS: Final = (10, 1_000, 10_000)


@dataclass(frozen=True, slots=True)
class Plan:
    seconds: float = 3.0
    """Length of one load run (wrk rounds up to whole seconds)."""
    repeats: int = 3
    """Runs of every load point; the table shows their median."""
    memory_requests: int = 200_000
    """Requests before the second memory reading (the first is after 1,000)."""
    memory_seconds: float = 180.0
    """Time cap on reaching `memory_requests`, so that a busy machine cannot
    push `make bench` past ten minutes (the row then says so)."""
    idle_seconds: float = 60.0
    """How long the sidecars are left idle while their CPU time is counted."""
    first_token_runs: int = 5
    """Sidecar starts per mode, timed from exec to the tokens on disk."""
    decision_runs: int = 7
    """Timed runs per identity count; each run lasts `decision_run_seconds`."""
    decision_run_seconds: float = 0.25
    load: str = "auto"
    """wrk, python, or auto (wrk when installed)."""


DEFAULT: Final = Plan()
FULL: Final = replace(DEFAULT, memory_requests=1_000_000, memory_seconds=1_500.0)
QUICK: Final = Plan(
    seconds=0.5,
    repeats=1,
    memory_requests=3_000,
    memory_seconds=60.0,
    idle_seconds=2.0,
    first_token_runs=1,
    decision_runs=3,
    decision_run_seconds=0.02,
)

FIRST_MEMORY_READING: Final = 1_000
