"""Running the load generator as a process and watching the server meanwhile."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.reliability.loadgen import Plan, Result, load_result, read_progress
from tests.reliability.loadgen import write_plan as _write_plan
from tests.reliability.support import Process, Processes


@dataclass
class LoadRun:
    process: Process
    progress_path: Path
    result_path: Path
    rss_samples: list[tuple[int, int]] = field(default_factory=list)
    """(answers so far, server RSS in bytes)."""

    def progress(self) -> int:
        return read_progress(self.progress_path)

    def running(self) -> bool:
        return self.process.alive()

    def result(self, *, timeout: float) -> Result:
        code = self.process.popen.wait(timeout=timeout)
        assert code == 0, f"the load generator failed:\n{self.process.log()[-3000:]}"
        return load_result(self.result_path)


def start_load(processes: Processes, directory: Path, plan: Plan) -> LoadRun:
    plan.progress_file = plan.progress_file or str(directory / "progress")
    plan_path = _write_plan(plan, directory / f"plan-{plan.uid_prefix}.json")
    result_path = directory / f"result-{plan.uid_prefix}.json"
    process = processes.start(
        "loadgen",
        [
            sys.executable,
            "-m",
            "tests.reliability.loadgen",
            str(plan_path),
            str(result_path),
        ],
    )
    return LoadRun(process, Path(plan.progress_file), result_path)


def watch(
    run: LoadRun,
    server: Process,
    *,
    every: float = 0.5,
    limit: float,
    also: Callable[[], None] | None = None,
) -> None:
    """Sample the server's memory against progress until the run ends."""
    deadline = time.monotonic() + limit
    while run.running() and time.monotonic() < deadline:
        run.rss_samples.append((run.progress(), server.rss()))
        if also is not None:
            also()
        time.sleep(every)
    run.rss_samples.append((run.progress(), server.rss()))
