"""Processes the benchmark starts: pinned to a CPU, measured through /proc,
and always stopped, however the benchmark ends."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_SECONDS: Final = 10.0


@dataclass(frozen=True, slots=True)
class Cores:
    """Where the measured server runs and where its load comes from.

    With fewer than two CPUs both are None: nothing is pinned, and the table
    says so, because load and server then share one core.
    """

    server: int | None
    load: int | None

    @classmethod
    def detect(cls) -> Cores:
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < 2:
            return cls(None, None)
        return cls(allowed[0], allowed[1])

    @property
    def pinned(self) -> bool:
        return self.server is not None

    def describe(self) -> str:
        if not self.pinned:
            return "fewer than 2 CPUs: server and load share a core (not pinned)"
        return f"servers pinned to CPU {self.server}, load and bench to CPU {self.load}"


def pin_self(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _pinner(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child: nothing inherited that could change what it
    does (WI_ settings, proxies, cloud credentials), and metadata fallbacks
    pointed at a closed loopback port."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("WI_", "AWS_", "GOOGLE_", "GCE_"))
        and "proxy" not in key.lower()
    }
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        PYTHONUNBUFFERED="1",
        AWS_EC2_METADATA_DISABLED="true",
        GCE_METADATA_HOST="127.0.0.1:9",
        GCE_METADATA_IP="127.0.0.1:9",
        NO_GCE_CHECK="True",
    )
    env.update(extra)
    return env


def python_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class Child:
    """A started process, its log file, and how to stop it."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str],
        cpu: int | None,
        stdout: int | IO[bytes] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            self.argv,
            stdout=self._log if stdout is None else stdout,
            stderr=self._log,
            env=dict(env),
            cwd=REPO_ROOT,
            # Set before exec, so every thread the child starts inherits it.
            preexec_fn=_pinner(cpu),
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within the timeout."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_SECONDS)
        self._log.close()
        return self.process.returncode


@contextlib.contextmanager
def running(child: Child) -> Iterator[Child]:
    try:
        yield child
    finally:
        child.stop()


class BenchError(Exception):
    """A measurement could not be made (a process did not start, a tool failed)."""


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    child: Child | None = None,
    interval: float = 0.02,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if child is not None and not child.alive():
            raise BenchError(f"{what}: the process exited\n{child.log_tail()}")
        if time.monotonic() > deadline:
            tail = f"\n{child.log_tail()}" if child is not None else ""
            raise BenchError(f"{what}: not within {timeout:g} s{tail}")
        time.sleep(interval)


# --- /proc --------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by every thread of `pid`.

    schedstat counts nanoseconds; /proc/PID/stat counts 10 ms ticks, too
    coarse for an idle minute, so it is only the fallback.
    """
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks = int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")
    return total / 1e9
