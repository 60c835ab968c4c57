"""The servers under load, each in a process of its own on the server CPU."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request

from bench.system import Child, clean_env, free_port, python_command, wait_until
from bench.workspace import Workspace

START_TIMEOUT_SECONDS = 60.0


def _answers(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(  # noqa: S310 - http(s) on 127.0.0.1 only
            url, context=context, timeout=2
        ) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


class WebhookServer:
    """`python -m webhook serve` with the workspace's identities and TLS pair."""

    def __init__(self, workspace: Workspace, *, cpu: int | None, name: str) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        argv = python_command(
            "webhook", "serve", "--shutdown-delay", "0",
            "--identities", str(workspace.identities),
            "--namespaces", str(workspace.namespaces),
            "--state-dir", str(workspace.state_dir),
            "--listen", f"127.0.0.1:{self.port}",
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
        )  # fmt: skip
        env = clean_env(WI_LOG_LEVEL="WARNING")
        self.child = Child(
            argv, log_path=workspace.root / f"{name}.log", env=env, cpu=cpu
        )
        context = workspace.client_context()
        wait_until(
            lambda: _answers(f"https://127.0.0.1:{self.port}/healthz", context),
            timeout=START_TIMEOUT_SECONDS,
            what="webhook serve",
            child=self.child,
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/mutate"

    def served(self) -> int:
        """AdmissionReviews answered so far, from the server's own counter."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return int(
            sum(
                float(line.rpartition(" ")[2])
                for line in text.splitlines()
                if line.startswith("workload_identity_admission_requests_total{")
            )
        )


class ReferenceServer:
    """`python -m bench.reference`: the bare handler, sending `answer`."""

    def __init__(
        self, workspace: Workspace, answer: object, *, cpu: int | None
    ) -> None:
        self.port = free_port()
        answer_path = workspace.root / "reference-answer.json"
        answer_path.write_text(json.dumps(answer))
        argv = python_command(
            "bench.reference", "--port", str(self.port),
            "--cert", str(workspace.cert), "--key", str(workspace.tls_key),
            "--answer", str(answer_path),
        )  # fmt: skip
        self.child = Child(
            argv, log_path=workspace.root / "reference.log", env=clean_env(), cpu=cpu
        )
        wait_until(
            lambda: _tcp_open(self.port),
            timeout=START_TIMEOUT_SECONDS,
            what="bench.reference",
            child=self.child,
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/mutate"


class TokenStandIn:
    """`python -m bench.standin`: the webhook's /token endpoint, its TokenReview
    answered in memory."""

    def __init__(self, workspace: Workspace, *, cpu: int | None) -> None:
        self.port = free_port()
        argv = python_command(
            "bench.standin", "--port", str(self.port),
            "--cert", str(workspace.cert), "--key", str(workspace.tls_key),
            "--signing-key", str(workspace.signing_key),
            "--issuer-url", f"https://127.0.0.1:{self.port}",
            "--identities", str(workspace.identities),
            "--namespaces", str(workspace.namespaces),
        )  # fmt: skip
        self.child = Child(
            argv, log_path=workspace.root / "standin.log", env=clean_env(), cpu=cpu
        )
        wait_until(
            lambda: _tcp_open(self.port),
            timeout=START_TIMEOUT_SECONDS,
            what="bench.standin",
            child=self.child,
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/token"


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
