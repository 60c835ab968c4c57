"""`python -m sidecar` as a process (through `skewed_sidecar`, so that its
wall clock can be stepped), and what a test reads from it: the token file,
the probes and the metrics."""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tests.reliability.support import (
    Process,
    Processes,
    clean_env,
    free_port,
    http_get,
    sample,
    wait_for,
)
from tests.reliability.volumes import ignore_file_size_signal

IDENTITY: Final = "payments-s3"
PREFIX: Final = "workload_identity_sidecar_"


def fake_sa_token() -> str:
    """Shaped like a projected ServiceAccount token (a JWT), so that the log
    scan would catch it anywhere it leaked."""

    def segment(value: dict[str, Any]) -> str:
        return (
            base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
        )

    header = segment({"alg": "RS256", "kid": "sa"})
    payload = segment({"sub": "system:serviceaccount:payments:reports"})
    return f"{header}.{payload}.{secrets.token_urlsafe(32)}"


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


@dataclass
class Sidecar:
    process: Process
    token_path: Path
    probes: str
    clock_file: Path

    def token(self) -> str:
        try:
            return self.token_path.read_text()
        except OSError:
            return ""

    def page(self) -> str:
        status, page = http_get(f"{self.probes}/metrics")
        assert status == 200, (
            f"/metrics answered {status}; log:\n{self.process.log()[-2000:]}"
        )
        return page

    def metric(self, name: str, **labels: str) -> float:
        return sample(self.page(), PREFIX + name, **labels)

    def failures(self, reason: str) -> float:
        return self.metric("refresh_failures_total", provider="aws", reason=reason)

    def valid(self) -> float:
        return self.metric("token_valid", provider="aws")

    def status(self, probe: str) -> int:
        return http_get(f"{self.probes}/{probe}")[0]

    def step_clock(self, seconds: float) -> None:
        """Move the sidecar's wall clock to `seconds` off the real one."""
        staged = self.clock_file.with_suffix(".new")
        staged.write_text(f"{seconds}\n")
        os.replace(staged, self.clock_file)

    def fresh_token(self, *, after: str = "", timeout: float = 30.0) -> str:
        """Wait for a token other than `after` that has not expired."""

        def found() -> str:
            token = self.token()
            if token and token != after and claims(token)["exp"] > time.time():
                return token
            return ""

        return wait_for(found, timeout=timeout, what="a fresh token")


def start_sidecar(
    processes: Processes, directory: Path, token_dir: Path, **settings: str
) -> Sidecar:
    """Start the sidecar for AWS identity payments-s3; return once it is ready."""
    listen = f"127.0.0.1:{free_port()}"
    clock_file = directory / "clock-offset"
    values = {
        "token_dir": str(token_dir),
        "aws_identity": IDENTITY,
        "listen": listen,
        "tick_seconds": "0.25",
        "ready_margin_seconds": "1",
        "log_level": "DEBUG",
        **settings,
    }
    env = clean_env(
        RELIABILITY_CLOCK_FILE=str(clock_file),
        **{f"WI_{name.upper()}": value for name, value in values.items()},
    )
    process = processes.start(
        "sidecar",
        [sys.executable, "-m", "tests.reliability.skewed_sidecar"],
        env=env,
        preexec_fn=ignore_file_size_signal,
    )
    sidecar = Sidecar(process, token_dir / "aws-token", f"http://{listen}", clock_file)

    def ready() -> bool:
        assert process.alive(), f"the sidecar exited:\n{process.log()[-3000:]}"
        return sidecar.status("readyz") == 200

    wait_for(ready, timeout=30, what="the sidecar to be ready")
    return sidecar
