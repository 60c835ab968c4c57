"""What the reliability tests share: the fast and soak forms, measured figures,
processes started for a test, TLS clients and metrics pages.

Every server binds 127.0.0.1 on a free port; every process is started with an
environment that holds nothing of this machine's (no WI_ settings, no proxy),
and is killed when its test ends.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from tests.log_scan import secrets_in

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
SOAK: Final = os.environ.get("WI_SOAK", "").lower() in {"1", "true", "yes", "on"}
"""`make soak` sets WI_SOAK=1: the same tests, with the long counts."""

T = TypeVar("T")


def scaled(fast: int, soak: int) -> int:
    """A count for the fast form (`make test`) or the soak form (`make soak`)."""
    return soak if SOAK else fast


def budget(fast: float, soak: float) -> float:
    """A time limit in seconds for the fast or the soak form."""
    return soak if SOAK else fast


# --- measured figures ----------------------------------------------------------


@dataclass
class Figures:
    """What the suite measured, by section, for the README table."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, section: str, **values: Any) -> None:
        with self._lock:
            self.values.setdefault(section, {}).update(values)

    def add(self, section: str, name: str, amount: int) -> None:
        with self._lock:
            entry = self.values.setdefault(section, {})
            entry[name] = int(entry.get(name, 0)) + amount

    def dump(self) -> str:
        return json.dumps(
            {"form": "soak" if SOAK else "fast", "figures": self.values},
            indent=2,
            sort_keys=True,
        )


# --- small things ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without WI_ settings or proxies, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("WI_") and "proxy" not in key.lower()
    }
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_for(
    condition: Callable[[], T | bool | None],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `condition()` until it is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()[:16]


def rss_bytes(pid: int) -> int:
    """Resident memory of a live process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


MIB: Final = 1024 * 1024


# --- processes -----------------------------------------------------------------


@dataclass
class Process:
    """A process started for one test; its stderr goes to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    forbidden: list[str] = field(default_factory=list)
    """Secrets this process must never print (tokens it handled, keys)."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def terminate(self, *, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit code."""
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
        self.popen.wait(timeout=10)

    def secrets_logged(self) -> list[str]:
        return secrets_in(self.log(), self.forbidden)


class Processes:
    """Starts processes for a test and, when it ends, kills what is left and
    fails the test if any of them logged a secret."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Process] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> Process:
        log_path = self.directory / f"{name}-{len(self.started)}.log"
        with log_path.open("wb") as stderr:
            popen = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=dict(env) if env is not None else clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=preexec_fn,
            )
        process = Process(name, popen, log_path)
        self.started.append(process)
        return process

    def python(self, name: str, *args: str, **kwargs: Any) -> Process:
        return self.start(name, [sys.executable, *args], **kwargs)

    def finish(self) -> list[str]:
        """Kill what still runs; what any of them logged that looks secret."""
        for process in self.started:
            process.kill()
        return [
            f"{process.name}: {hit}"
            for process in self.started
            for hit in process.secrets_logged()
        ]


# --- TLS and HTTP --------------------------------------------------------------


def client_context(cafile: Path | str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class HttpsClient:
    """One keep-alive HTTPS connection to 127.0.0.1:port, reopened when the
    server closes it."""

    def __init__(self, port: int, cafile: Path | str, *, timeout: float = 30.0):
        self.port = port
        self.context = client_context(cafile)
        self.timeout = timeout
        self._connection: http.client.HTTPSConnection | None = None

    def _open(self) -> http.client.HTTPSConnection:
        if self._connection is None:
            self._connection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, context=self.context, timeout=self.timeout
            )
        return self._connection

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        connection = self._open()
        try:
            connection.request(method, path, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            data = response.read()
        except (http.client.HTTPException, OSError):
            self.close()
            raise
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        return Answer(response.status, data, dict(response.getheaders()))

    def post_json(self, path: str, body: bytes, **headers: str) -> Answer:
        return self.request(
            "POST", path, body, {"Content-Type": "application/json", **headers}
        )

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def http_get(url: str, *, timeout: float = 5.0) -> tuple[int, str]:
    """A plain-HTTP GET on 127.0.0.1 (metrics and probes); (0, "") if nobody answers."""
    host_port = url.removeprefix("http://").split("/", 1)
    host, _, port = host_port[0].partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("GET", "/" + (host_port[1] if len(host_port) > 1 else ""))
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    except OSError:
        return 0, ""
    finally:
        connection.close()


def samples(page: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page: (name, sorted labels) -> value."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def sample(page: str, name: str, **labels: str) -> float:
    """One sample's value; 0 when the page lacks it."""
    return samples(page).get((name, tuple(sorted(labels.items()))), 0.0)


def total(page: str, name: str, **labels: str) -> float:
    """The sum of `name` over every series whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(
        value
        for (found, pairs), value in samples(page).items()
        if found == name and wanted <= set(pairs)
    )


def metric_labels(page: str) -> Iterable[str]:
    """Every label value on a metrics page."""
    for family in text_string_to_metric_families(page):
        for item in family.samples:
            yield from item.labels.values()
