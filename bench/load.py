"""Load from a process of its own, pinned to the load CPU: Debian's wrk when it
is installed, else `python -m bench.client`. Both report the same figures."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from bench.system import BenchError, clean_env, python_command

WRK_TIMEOUT: Final = "10s"
"""wrk counts a slower answer as an error; none of ours should come near it."""

_WRK_SCRIPT: Final = """\
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"seconds":%f,"p50":%f,"p99":%f,"errors":%d}\\n',
    summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1e6, latency:percentile(99) / 1e6,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One load run against one URL."""

    url: str
    body: Path
    concurrency: int
    seconds: float
    new_connections: bool = False
    headers: tuple[str, ...] = field(default=())
    """Extra `Name: value` headers."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    seconds: float
    p50: float
    p99: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def parse(cls, output: str, *, tool: str) -> LoadResult:
        for line in reversed(output.splitlines()):
            if line.startswith("{"):
                data = json.loads(line)
                return cls(
                    requests=int(data["requests"]),
                    seconds=float(data["seconds"]),
                    p50=float(data["p50"]),
                    p99=float(data["p99"]),
                    errors=int(data["errors"]),
                )
        raise BenchError(f"{tool} printed no result:\n{output[-2000:]}")


class LoadGenerator(Protocol):
    name: str

    def run(self, spec: LoadSpec, *, requests: int | None = None) -> LoadResult:
        """Run the load; `requests` asks for an exact count (in place of a
        duration) where the generator supports it."""
        ...


def _run(argv: list[str], *, env: dict[str, str], cpu: int | None, limit: float) -> str:
    if cpu is not None:
        argv = ["taskset", "--cpu-list", str(cpu), *argv]
    try:
        finished = subprocess.run(
            argv, capture_output=True, env=env, timeout=limit, check=False, text=True
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{argv[0]} ran past {limit:g} s") from exc
    if finished.returncode != 0:
        raise BenchError(
            f"{' '.join(argv[:4])}... exited {finished.returncode}: "
            f"{finished.stderr[-2000:] or finished.stdout[-2000:]}"
        )
    return finished.stdout


class Wrk:
    """Debian's wrk: one thread, as many connections as the concurrency.

    Its latency runs from writing a request to reading the answer, so in the
    new-connection runs the handshake counts in the rate, not the latency.
    """

    name = "wrk"

    def __init__(self, workdir: Path, *, cpu: int | None) -> None:
        self._script = workdir / "post.lua"
        self._script.write_text(_WRK_SCRIPT)
        self._cpu = cpu

    @staticmethod
    def available() -> bool:
        return shutil.which("wrk") is not None

    def run(self, spec: LoadSpec, *, requests: int | None = None) -> LoadResult:
        # wrk runs for whole seconds only; an exact count is left to the client.
        seconds = max(1, math.ceil(spec.seconds))
        argv = [
            "wrk", "--threads", "1", "--connections", str(spec.concurrency),
            "--duration", f"{seconds}s", "--timeout", WRK_TIMEOUT,
            "--script", str(self._script),
        ]  # fmt: skip
        headers = list(spec.headers)
        if spec.new_connections:
            headers.append("Connection: close")
        for header in headers:
            argv += ["--header", header]
        argv.append(spec.url)
        env = clean_env(BENCH_BODY=str(spec.body))
        output = _run(argv, env=env, cpu=self._cpu, limit=seconds + 60)
        return LoadResult.parse(output, tool="wrk")


class PythonClient:
    """`python -m bench.client` (aiohttp) in its own process."""

    name = "python"

    def __init__(self, *, ca: Path | None, cpu: int | None) -> None:
        self._ca = ca
        self._cpu = cpu

    def run(self, spec: LoadSpec, *, requests: int | None = None) -> LoadResult:
        seconds = spec.seconds if requests is None else 600.0
        argv = python_command(
            "bench.client", spec.url, "--body", str(spec.body),
            "--concurrency", str(spec.concurrency), "--seconds", f"{seconds:g}",
        )  # fmt: skip
        if self._ca is not None:
            argv += ["--ca", str(self._ca)]
        if requests is not None:
            argv += ["--requests", str(requests)]
        if spec.new_connections:
            argv.append("--new-connections")
        for header in spec.headers:
            argv += ["--header", header]
        output = _run(argv, env=clean_env(), cpu=self._cpu, limit=seconds + 60)
        return LoadResult.parse(output, tool="bench.client")
