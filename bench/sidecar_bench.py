"""The token sidecar: start to tokens on disk, resident memory after the first
tokens and a metrics scrape, and CPU used while idle, in key and issuer mode."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench import report
from bench.report import Row, Verdict
from bench.system import (
    BenchError,
    Child,
    clean_env,
    cpu_seconds,
    free_port,
    python_command,
    rss_mib,
)
from bench.workspace import Workspace

SECTION: Final = "sidecar (python -m sidecar, one AWS and one GCP identity)"
MODES: Final = ("key", "issuer")
RSS_TARGETS: Final = {"key": 32.0, "issuer": 20.0}
FIRST_TOKEN_TARGET: Final = 0.300
IDLE_CPU_TARGET: Final = 0.001
"""Fraction of one core."""
TOKEN_TIMEOUT_SECONDS: Final = 30.0
_CLOSED: Final = "https://127.0.0.1:9"
"""Where URLs the sidecar only writes down (never calls) point."""
GCP_AUDIENCE: Final = (
    "//iam.googleapis.com/projects/123456789012/locations/global/"
    "workloadIdentityPools/k8s-pool/providers/k8s-oidc"
)


@dataclass(slots=True)
class ModeResult:
    mode: str
    first_token: list[float] = field(default_factory=list)
    rss: float = float("nan")
    idle_cpu: float = float("nan")
    error: str = ""


def _env(
    workspace: Workspace, mode: str, run: Path, *, token_url: str
) -> dict[str, str]:
    settings = {
        "MODE": mode,
        "TOKEN_DIR": str(run / "tokens"),
        "AWS_IDENTITY": "payments-reports-s3",
        "GCP_IDENTITY": "payments-reports-gcs",
        "GCP_AUDIENCE": GCP_AUDIENCE,
        "GCP_SERVICE_ACCOUNT": "reports@payments-prod.iam.gserviceaccount.com",
        "GCP_STS_URL": f"{_CLOSED}/v1/token",
        "GCP_IAM_CREDENTIALS_URL": _CLOSED,
        "PROJECT": "payments",
        "NAMESPACE": "payments-prod",
        "POD_NAME": "reports-7d9f8b6c5d-x2v7q",
        "SERVICE_ACCOUNT": "reports",
        "LISTEN": f"127.0.0.1:{free_port()}",
        "LOG_LEVEL": "WARNING",
    }
    if mode == "key":
        settings.update(ISSUER=_CLOSED, KEY_FILE=str(workspace.signing_key))
    else:
        sa_token = run / "sa-token"
        sa_token.write_text("bench.serviceaccount.token\n")
        settings.update(
            ISSUER_TOKEN_URL=token_url,
            ISSUER_CA_FILE=str(workspace.cert),
            SA_TOKEN_FILE=str(sa_token),
        )
    return clean_env(**{f"WI_{k}": v for k, v in settings.items()})


class Sidecar:
    def __init__(
        self,
        workspace: Workspace,
        mode: str,
        run: int,
        *,
        cpu: int | None,
        token_url: str,
    ) -> None:
        self.directory = workspace.root / f"sidecar-{mode}-{run}"
        (self.directory / "tokens").mkdir(parents=True)
        env = _env(workspace, mode, self.directory, token_url=token_url)
        self.listen = env["WI_LISTEN"]
        self.child = Child(
            python_command("sidecar"),
            log_path=self.directory / "sidecar.log",
            env=env,
            cpu=cpu,
        )

    def wait_for_tokens(self) -> float:
        """Seconds from exec to both tokens on disk (written by rename, so a
        file that exists is complete)."""
        wanted = [self.directory / "tokens" / n for n in ("aws-token", "gcp-token")]
        deadline = self.child.started + TOKEN_TIMEOUT_SECONDS
        while not all(p.exists() for p in wanted):
            now = time.monotonic()
            if not self.child.alive() or now > deadline:
                raise BenchError(
                    f"the sidecar wrote no tokens within {TOKEN_TIMEOUT_SECONDS:g} s"
                    f"\n{self.child.log_tail()}"
                )
            time.sleep(0.001)
        return time.monotonic() - self.child.started

    def scrape(self) -> None:
        url = f"http://{self.listen}/metrics"
        # The first tokens are written before the listener opens: wait for it.
        deadline = time.monotonic() + TOKEN_TIMEOUT_SECONDS
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    page = response.read()
                break
            except urllib.error.URLError as exc:
                refused = isinstance(exc.reason, ConnectionRefusedError)
                if not refused or time.monotonic() > deadline or not self.child.alive():
                    raise BenchError(
                        f"the sidecar's /metrics did not answer: {exc.reason}"
                        f"\n{self.child.log_tail()}"
                    ) from exc
                time.sleep(0.01)
        if b"workload_identity_sidecar_" not in page:
            raise BenchError("the sidecar's /metrics has none of its metrics")


def start_and_measure(
    workspace: Workspace, mode: str, runs: int, *, cpu: int | None, token_url: str
) -> tuple[ModeResult, Sidecar]:
    """Time `runs` starts; the last sidecar is left running, scraped once and
    measured, for the idle part."""
    result = ModeResult(mode)
    for run in range(runs):
        sidecar = Sidecar(workspace, mode, run, cpu=cpu, token_url=token_url)
        try:
            result.first_token.append(sidecar.wait_for_tokens())
            if run == runs - 1:
                sidecar.scrape()
                result.rss = rss_mib(sidecar.child.pid)
                return result, sidecar
        except BaseException:
            sidecar.child.stop()
            raise
        sidecar.child.stop()
    raise ValueError("start_and_measure needs at least one run")


def measure_idle(
    sidecars: dict[str, Sidecar],
    results: dict[str, ModeResult],
    seconds: float,
    meanwhile: Callable[[], None],
) -> None:
    """CPU time of each idle sidecar over `seconds` (at least), while
    `meanwhile` runs on the other CPU."""
    started = time.monotonic()
    before = {mode: cpu_seconds(s.child.pid) for mode, s in sidecars.items()}
    meanwhile()
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    elapsed = time.monotonic() - started
    for mode, sidecar in sidecars.items():
        if not sidecar.child.alive():
            results[mode].error = f"exited while idle\n{sidecar.child.log_tail()}"
            continue
        results[mode].idle_cpu = (
            cpu_seconds(sidecar.child.pid) - before[mode]
        ) / elapsed


def rows(results: dict[str, ModeResult], *, idle_seconds: float) -> list[Row]:
    out = []
    for mode, result in results.items():
        label = f"{mode} mode"
        if result.error:
            reason = result.error.splitlines()[0][:100]
            out.append(Row(SECTION, label, reason, verdict=Verdict.FAILED))
            continue
        first = report.median(result.first_token)
        out += [
            Row(
                SECTION,
                f"{label}: exec to tokens on disk ({len(result.first_token)} starts)",
                report.millis(first),
                f"<= {FIRST_TOKEN_TARGET * 1000:.0f} ms",
                report.at_most(first, FIRST_TOKEN_TARGET),
            ),
            Row(
                SECTION,
                f"{label}: RSS after the first tokens and a /metrics scrape",
                report.mib(result.rss),
                f"<= {RSS_TARGETS[mode]:.0f} MiB",
                report.at_most(result.rss, RSS_TARGETS[mode]),
            ),
            Row(
                SECTION,
                f"{label}: CPU while idle for {idle_seconds:g} s",
                f"{result.idle_cpu:.3%} of a core",
                f"< {IDLE_CPU_TARGET:.1%}",
                Verdict.PASS if result.idle_cpu < IDLE_CPU_TARGET else Verdict.MISS,
            ),
        ]
    return out
