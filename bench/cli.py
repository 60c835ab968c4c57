"""`python -m bench`: measure the webhook, the sidecar and the issuer, then
print one table (metric, measured median, target, result).

Servers run pinned to one CPU and their load (wrk, or `python -m
bench.client`) to another. A missed target is reported, never raised: the
exit code is 1 only when a measurement could not be made at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import decision, issuer_bench, plan, sidecar_bench, webhook_bench
from bench.load import LoadGenerator, PythonClient, Wrk
from bench.report import Row, Verdict, format_table
from bench.servers import TokenStandIn
from bench.system import BenchError, Cores, pin_self
from bench.workspace import SERVER_IDENTITIES, Workspace, prepare


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="a smoke run of every part (~1 minute)"
    )
    size.add_argument(
        "--full",
        action="store_true",
        help="the memory check over 1,000,000 reviews (adds ~6 minutes)",
    )
    parser.add_argument("--seconds", type=float, help="length of each load run")
    parser.add_argument("--repeats", type=int, help="runs per load point (median)")
    parser.add_argument(
        "--memory-requests", type=int, help="reviews before the second memory reading"
    )
    parser.add_argument(
        "--memory-seconds", type=float, help="time cap on the memory check's load"
    )
    parser.add_argument("--idle-seconds", type=float, help="how long sidecars idle")
    parser.add_argument(
        "--first-token-runs", type=int, help="sidecar starts timed per mode"
    )
    parser.add_argument(
        "--load",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator: Debian's wrk or the aiohttp client (auto: wrk if "
        "installed)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the working directory (logs, files)"
    )
    return parser


def plan_from(args: argparse.Namespace) -> plan.Plan:
    base = plan.QUICK if args.quick else plan.FULL if args.full else plan.DEFAULT
    overrides = {
        "seconds": args.seconds,
        "repeats": args.repeats,
        "memory_requests": args.memory_requests,
        "memory_seconds": args.memory_seconds,
        "idle_seconds": args.idle_seconds,
        "first_token_runs": args.first_token_runs,
        "load": args.load,
    }
    chosen = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(base, **chosen)


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def choose_generator(chosen: str, workspace: Workspace, cores: Cores) -> LoadGenerator:
    if chosen == "wrk" or (chosen == "auto" and Wrk.available()):
        if not Wrk.available():
            raise BenchError("--load wrk: wrk is not installed (apt-get install wrk)")
        return Wrk(workspace.root, cpu=cores.load)
    return PythonClient(ca=workspace.cert, cpu=cores.load)


def guarded(section: str, what: str, step: Callable[[], list[Row]]) -> list[Row]:
    """The step's rows, or one `failed` row saying why it could not run."""
    try:
        return step()
    except BenchError as exc:
        progress(f"{what} failed: {exc}")
        reason = str(exc).splitlines()[0][:100]
        return [Row(section, what, reason, verdict=Verdict.FAILED)]


class Bench:
    """One run: every part in turn, each part's failure contained in its rows."""

    def __init__(self, current: plan.Plan, workspace: Workspace, cores: Cores) -> None:
        self.plan = current
        self.workspace = workspace
        self.cores = cores
        self.generator = choose_generator(current.load, workspace, cores)
        # Exact request counts need the client, whichever tool makes the load.
        self.counter = PythonClient(ca=workspace.cert, cpu=cores.load)

    def notes(self, load_before: float) -> list[str]:
        load = f"load from {self.generator.name}"
        if self.generator.name == "wrk":
            load += " (latency runs from request write to answer, so new-connection "
            load += "latency leaves the handshake out; the rate does not)"
        return [
            self.cores.describe(),
            load,
            f"medians of {self.plan.repeats} run(s) of {self.plan.seconds:g} s per "
            f"load point; CPU/review is the server's CPU time over its reviews",
            f"the webhook serves {SERVER_IDENTITIES:,} identities over 100 projects",
            "issuer rows: the webhook's /token code (bench/standin.py) with its "
            "TokenReview and pod read answered in memory",
            f"machine load average (1 min) {load_before:.2f} before the run and "
            f"{os.getloadavg()[0]:.2f} after it, on {os.cpu_count()} CPUs",
        ]

    def run(self) -> list[Row]:
        rows = guarded(webhook_bench.SECTION, "webhook load", self._webhook)
        rows += guarded(webhook_bench.SECTION, "webhook memory", self._memory)
        try:
            standin = TokenStandIn(self.workspace, cpu=self.cores.server)
        except BenchError as exc:
            progress(f"the /token server did not start: {exc}")
            return rows + guarded(decision.SECTION, "decision", self._decisions_only)
        try:
            rows += self._sidecars_and_decisions(standin.url)
            rows += guarded(
                issuer_bench.SECTION, "issuer /token", lambda: self._issuer(standin.url)
            )
        finally:
            standin.child.stop()
        return rows

    def _webhook(self) -> list[Row]:
        progress(f"webhook under load ({self.generator.name})")
        matrix = webhook_bench.measure(
            self.workspace, self.generator, self.plan, self.cores, progress
        )
        return webhook_bench.rows(matrix)

    def _memory(self) -> list[Row]:
        progress(f"webhook memory over {self.plan.memory_requests:,} reviews")
        row = webhook_bench.measure_memory(
            self.workspace,
            self.generator,
            self.counter,
            self.plan,
            self.cores,
            progress,
        )
        return [row]

    def _decisions_only(self) -> list[Row]:
        return decision.rows(decision.time_cases(self.plan))

    def _sidecars_and_decisions(self, token_url: str) -> list[Row]:
        """The sidecars idle on the server CPU while the decision timings run
        on the load CPU, which saves a minute."""
        results: dict[str, sidecar_bench.ModeResult] = {}
        running: dict[str, sidecar_bench.Sidecar] = {}
        costs: dict[tuple[str, int], float] = {}

        def time_decisions() -> None:
            progress("decision cost with 10, 1,000 and 10,000 identities")
            costs.update(decision.time_cases(self.plan))

        try:
            for mode in sidecar_bench.MODES:
                runs = self.plan.first_token_runs
                progress(f"sidecar, {mode} mode: {runs} start(s)")
                try:
                    results[mode], running[mode] = sidecar_bench.start_and_measure(
                        self.workspace, mode, runs,
                        cpu=self.cores.server, token_url=token_url,
                    )  # fmt: skip
                except BenchError as exc:
                    results[mode] = sidecar_bench.ModeResult(mode, error=str(exc))
            progress(f"sidecars idle for {self.plan.idle_seconds:g} s")
            sidecar_bench.measure_idle(
                running, results, self.plan.idle_seconds, time_decisions
            )
        finally:
            for sidecar in running.values():
                sidecar.child.stop()
        rows = decision.rows(costs)
        return rows + sidecar_bench.rows(results, idle_seconds=self.plan.idle_seconds)

    def _issuer(self, token_url: str) -> list[Row]:
        progress("issuer /token under load")
        measured = issuer_bench.measure(
            self.workspace, self.generator, self.plan, url=token_url
        )
        return issuer_bench.rows(measured)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    current = plan_from(args)
    cores = Cores.detect()
    pin_self(cores.load)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="wi-bench-"))
    try:
        workspace = prepare(root)
        bench = Bench(current, workspace, cores)
        rows = bench.run()
        notes = bench.notes(load_before)
    finally:
        if args.keep:
            progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    notes.append(f"the bench took {time.monotonic() - started:.0f} s")
    print(format_table(rows, notes=notes))
    return 1 if any(r.verdict is Verdict.FAILED for r in rows) else 0
