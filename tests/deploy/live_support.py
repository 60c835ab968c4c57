"""Helpers for the deploy/ tests that run the product: loopback ports, HTTP
without proxies, bounded waits and processes that are always stopped.

Everything listens on 127.0.0.1 only, on ports the kernel hands out.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

LOOPBACK = "127.0.0.1"

#: Variables of the product (sidecar and webhook) that a developer's shell
#: may hold; the processes started here get only what each test sets.
_PRODUCT_ENV_PREFIX = "WI_"

#: A process gets this long to stop on SIGTERM before it is killed.
STOP_SECONDS = 10.0

_T = TypeVar("_T")


def free_port() -> int:
    """A port on 127.0.0.1 that nobody listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def http(
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 3.0,
) -> tuple[int, bytes]:
    """GET (or POST with `body`); (status, body), or (0, b"") when nobody answers."""
    assert url.startswith((f"http://{LOOPBACK}:", f"https://{LOOPBACK}:")), url
    # The assertion above limits the scheme (and the host) to loopback HTTP(S).
    request = urllib.request.Request(url, data=body, headers=dict(headers or {}))  # noqa: S310
    # No proxy, whatever the environment says: every request is for 127.0.0.1.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def get_json(url: str) -> Any:
    status, body = http(url)
    assert status == 200, f"GET {url}: {status} {body[:500]!r}"
    return json.loads(body)


def wait_until(
    condition: Callable[[], _T | None],
    *,
    timeout: float,
    what: str,
    details: Callable[[], str] = lambda: "",
    processes: Processes | None = None,
    interval: float = 0.2,
) -> _T:
    """Poll `condition()` until it returns something truthy; fail after `timeout`,
    or as soon as one of `processes` has exited."""
    deadline = time.monotonic() + timeout
    while True:
        if processes is not None:
            processes.assert_running()
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:g} s waiting for {what}\n{details()}")
        time.sleep(interval)


def child_env(**settings: str) -> dict[str, str]:
    """This environment without the product's own variables, plus `settings`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_PRODUCT_ENV_PREFIX)
    }
    env.update(settings)
    return env


class Processes:
    """Processes started by one test or module, each with its output in a file.

    `stop_all()` ends every one of them, by its own handle, SIGTERM first.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._started: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
    ) -> subprocess.Popen[bytes]:
        assert name not in self._started, f"{name} started twice"
        with self.output(name).open("wb") as output:
            process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self._started[name] = process
        return process

    def output(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.output(name)
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def report(self) -> str:
        """The last lines of every process's output, for a failure message."""
        return "\n".join(
            f"--- {name} (exit code {process.poll()}):\n{self.tail(name)}"
            for name, process in self._started.items()
        )

    def assert_running(self) -> None:
        exited = [name for name, p in self._started.items() if p.poll() is not None]
        assert not exited, f"{', '.join(exited)} exited early\n{self.report()}"

    def stop(self, name: str) -> int:
        """SIGTERM, then SIGKILL after STOP_SECONDS; the exit code."""
        process = self._started[name]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def stop_all(self) -> None:
        for name in reversed(list(self._started)):
            self.stop(name)
