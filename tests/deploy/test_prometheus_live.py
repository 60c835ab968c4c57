"""A real Prometheus scrapes a real webhook and a real sidecar with the alert
rules of deploy/monitoring loaded; a sidecar that cannot sign fires the
refresh-failure alert.

Everything runs on 127.0.0.1 on free ports: `python -m webhook serve` with
the example identities, `python -m sidecar` in key mode with 20-second
tokens, and Debian's `prometheus` with 1-second scrape and evaluation
intervals, no Alertmanager and no remote write. The module starts them once
and stops them at the end.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, REPO, Obj
from live_support import (
    LOOPBACK,
    Processes,
    child_env,
    free_port,
    get_json,
    http,
    wait_until,
)

RULES = DEPLOY / "monitoring" / "rules" / "workload-identity.rules.yaml"
DASHBOARD = DEPLOY / "monitoring" / "dashboards" / "workload-identity.json"
IDENTITIES = DEPLOY / "examples" / "identities.yaml"
NAMESPACES = DEPLOY / "examples" / "namespaces.yaml"
ADMISSION_REVIEW = DEPLOY / "examples" / "admission-review.json"

#: The job names of a cluster: the alerts expect the webhook's (the
#: ServiceMonitor sets it); the sidecars' is what the PodMonitor produces.
WEBHOOK_JOB = "workload-identity-webhook"
SIDECAR_JOB = "workload-identity-system/workload-identity-sidecars"
#: The target labels the PodMonitor gives a sidecar in a cluster.
SIDECAR_POD = {"namespace": "demo-app", "pod": "reports-7d9f8b6c5d-x2x4q"}

REFRESH_ALERT = "WorkloadIdentityTokenRefreshFailing"
#: The refresh alert waits 10 minutes in the real rules; the copy loaded here
#: waits this long instead. Every other rule is loaded unchanged.
REFRESH_ALERT_FOR = "2s"
TOKEN_SECONDS = 20

#: Series that only `serve --source kubernetes` exports (watches, /token, the
#: drift report of the Lease holder); the webhook here reads files.
KUBERNETES_SOURCE_ONLY = {
    "workload_identity_watch_restarts_total",
    "workload_identity_tokens_issued_total",
    "workload_identity_drift_pods",
}

STARTUP_SECONDS = 30.0
#: The first refresh is due at most 10 s after the first token (20 s tokens,
#: `iat` backdated 30 s, refresh at 70-80% of the 50 s); then one scrape, two
#: evaluations and REFRESH_ALERT_FOR. The bound leaves room for a busy machine.
ALERT_SECONDS = 45.0


def rules_with_a_short_refresh_alert(into: Path) -> Path:
    """deploy/monitoring's rules file with only the refresh alert's `for:` cut."""
    rules = yaml.safe_load(RULES.read_text())
    shortened = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == REFRESH_ALERT:
                rule["for"] = REFRESH_ALERT_FOR
                shortened += 1
    assert shortened == 1, f"{REFRESH_ALERT} not found once in {RULES}"
    path = into / "workload-identity.rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def prometheus_config(*, rules: Path, webhook: str, sidecar: str) -> Obj:
    """Scrape exactly the two loopback targets; no alerting, no remote write."""
    return {
        "global": {
            "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "evaluation_interval": "1s",
        },
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": WEBHOOK_JOB,
                "static_configs": [{"targets": [webhook]}],
            },
            {
                "job_name": SIDECAR_JOB,
                "static_configs": [{"targets": [sidecar], "labels": SIDECAR_POD}],
            },
        ],
    }


@dataclass
class PrometheusApi:
    base: str

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        answer = get_json(f"{self.base}/api/v1/{path}{query}")
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[Obj]:
        result: list[Obj] = self.get("query", query=expr)["result"]
        return result

    def targets(self) -> list[Obj]:
        active: list[Obj] = self.get("targets", state="active")["activeTargets"]
        return active

    def alerting_rules(self) -> list[Obj]:
        """Every alerting rule, with its group's last evaluation time added."""
        found = []
        for group in self.get("rules", type="alert")["groups"]:
            for rule in group["rules"]:
                found.append({**rule, "groupLastEvaluation": group["lastEvaluation"]})
        return found

    def alerts(self) -> list[Obj]:
        alerts: list[Obj] = self.get("alerts")["alerts"]
        return alerts


@dataclass
class Stack:
    api: PrometheusApi
    processes: Processes
    key_file: Path
    webhook_metrics: str
    sidecar_metrics: str
    up_since: float
    """Wall time at which both targets had been scraped successfully."""

    def report(self) -> str:
        return self.processes.report()


def parse_time(value: str) -> float:
    """Prometheus' RFC 3339 times (nanoseconds are cut to microseconds)."""
    return dt.datetime.fromisoformat(value).timestamp()


def start_webhook(processes: Processes, tmp: Path) -> tuple[str, str]:
    """Its metrics address and its issuer URL."""
    port, metrics_port = free_port(), free_port()
    argv = [
        sys.executable, "-m", "webhook", "serve", "--shutdown-delay", "0",
        "--identities", str(IDENTITIES),
        "--namespaces", str(NAMESPACES),
        "--state-dir", str(tmp / "webhook-state"),
        "--listen", f"{LOOPBACK}:{port}",
        "--metrics-listen", f"{LOOPBACK}:{metrics_port}",
    ]  # fmt: skip
    processes.start("webhook", argv, env=child_env(), cwd=REPO)
    metrics = f"{LOOPBACK}:{metrics_port}"
    wait_until(
        lambda: http(f"http://{metrics}/metrics")[0] == 200,
        timeout=STARTUP_SECONDS,
        what="the webhook's metrics",
        details=processes.report,
        processes=processes,
    )
    context = ssl.create_default_context(cafile=str(tmp / "webhook-state" / "tls.crt"))
    # One admitted pod, so that the admission series exist.
    status, body = http(
        f"https://{LOOPBACK}:{port}/mutate",
        body=ADMISSION_REVIEW.read_bytes(),
        headers={"Content-Type": "application/json"},
        context=context,
    )
    assert status == 200, body
    assert json.loads(body)["response"]["allowed"] is True
    return metrics, f"https://{LOOPBACK}:{port}"


def start_sidecar(processes: Processes, tmp: Path, *, issuer: str) -> tuple[str, Path]:
    """A key-mode sidecar for the demo pod; its key file's directory stands for
    the mounted Secret."""
    key_file = tmp / "signing" / "key.pem"
    key_file.parent.mkdir()
    subprocess.run(
        [sys.executable, "-m", "webhook", "issuer", "keygen", "--out", str(key_file)],
        cwd=REPO,
        env=child_env(),
        check=True,
        capture_output=True,
        timeout=60,
    )
    token_dir = tmp / "tokens"
    token_dir.mkdir()
    listen = f"{LOOPBACK}:{free_port()}"
    processes.start(
        "sidecar",
        [sys.executable, "-m", "sidecar"],
        env=child_env(
            WI_MODE="key",
            WI_ISSUER=issuer,
            WI_KEY_FILE=str(key_file),
            WI_TOKEN_DIR=str(token_dir),
            WI_AWS_IDENTITY="demo-s3",
            WI_AWS_EXPIRATION_SECONDS=str(TOKEN_SECONDS),
            WI_PROJECT="demo",
            WI_NAMESPACE=SIDECAR_POD["namespace"],
            WI_POD_NAME=SIDECAR_POD["pod"],
            WI_SERVICE_ACCOUNT="reports",
            WI_LISTEN=listen,
        ),
        cwd=REPO,
    )
    wait_until(
        lambda: http(f"http://{listen}/readyz")[0] == 200,
        timeout=STARTUP_SECONDS,
        what="the sidecar's first token",
        details=processes.report,
        processes=processes,
    )
    return listen, key_file


def start_prometheus(
    processes: Processes, tmp: Path, prometheus: str, *, webhook: str, sidecar: str
) -> PrometheusApi:
    config = tmp / "prometheus.yml"
    rules = rules_with_a_short_refresh_alert(tmp)
    config.write_text(
        yaml.safe_dump(prometheus_config(rules=rules, webhook=webhook, sidecar=sidecar))
    )
    listen = f"{LOOPBACK}:{free_port()}"
    processes.start(
        "prometheus",
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address={listen}",
            "--log.level=warn",
        ],
        env=child_env(),
        cwd=tmp,
    )
    wait_until(
        lambda: http(f"http://{listen}/-/ready")[0] == 200,
        timeout=STARTUP_SECONDS,
        what="Prometheus to be ready",
        details=processes.report,
        processes=processes,
    )
    return PrometheusApi(f"http://{listen}")


def both_targets_up(api: PrometheusApi) -> bool:
    targets = api.targets()
    return len(targets) == 2 and all(t["health"] == "up" for t in targets)


@pytest.fixture(scope="module")
def stack(prometheus: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("prometheus-live")
    processes = Processes(tmp)
    try:
        webhook_metrics, issuer = start_webhook(processes, tmp)
        sidecar_metrics, key_file = start_sidecar(processes, tmp, issuer=issuer)
        api = start_prometheus(
            processes, tmp, prometheus, webhook=webhook_metrics, sidecar=sidecar_metrics
        )
        wait_until(
            lambda: both_targets_up(api),
            timeout=STARTUP_SECONDS,
            what="Prometheus to scrape both targets",
            details=lambda: f"{api.targets()}\n{processes.report()}",
            processes=processes,
        )
        yield Stack(
            api=api,
            processes=processes,
            key_file=key_file,
            webhook_metrics=webhook_metrics,
            sidecar_metrics=sidecar_metrics,
            up_since=time.time(),
        )
    finally:
        processes.stop_all()


def test_prometheus_scrapes_the_webhook_and_the_sidecar_as_their_jobs(
    stack: Stack,
) -> None:
    targets = {t["labels"]["job"]: t for t in stack.api.targets()}
    assert set(targets) == {WEBHOOK_JOB, SIDECAR_JOB}
    assert (
        targets[WEBHOOK_JOB]["scrapeUrl"] == f"http://{stack.webhook_metrics}/metrics"
    )
    assert (
        targets[SIDECAR_JOB]["scrapeUrl"] == f"http://{stack.sidecar_metrics}/metrics"
    )
    assert stack.api.query(f'up{{job="{WEBHOOK_JOB}"}} == 1'), "alerts key on this job"
    (valid,) = stack.api.query("workload_identity_sidecar_token_valid")
    assert valid["metric"] | SIDECAR_POD == valid["metric"]
    assert valid["metric"]["provider"] == "aws"
    assert valid["value"][1] == "1"


def test_every_alert_of_the_rules_file_is_loaded(stack: Stack) -> None:
    expected = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    loaded = {rule["name"]: rule for rule in stack.api.alerting_rules()}
    assert set(loaded) == expected
    assert loaded[REFRESH_ALERT]["duration"] == 2


def test_alerts_and_dashboard_read_series_the_product_exports(stack: Stack) -> None:
    """Every metric the alerts and the dashboard query is one Prometheus has
    scraped from the real processes, under the exported name."""
    exported = set(stack.api.get("label/__name__/values"))
    queried = set()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            queried |= metric_names(rule["expr"])
    for expr in dashboard_exprs(json.loads(DASHBOARD.read_text())):
        queried |= metric_names(expr)
    assert not exported & KUBERNETES_SOURCE_ONLY, "exported here: drop the exemption"
    missing = queried - exported - KUBERNETES_SOURCE_ONLY
    assert not missing, f"queried but never exported: {sorted(missing)}"
    # The label values the queries select on are the ones exported.
    assert stack.api.query(
        'workload_identity_admission_requests_total{outcome="mutated",dry_run="false"}'
    )


def test_all_is_calm_until_the_sidecar_cannot_sign_then_the_refresh_alert_fires(
    stack: Stack,
) -> None:
    api = stack.api

    # Healthy: every rule has been evaluated on the real series since both
    # targets were up, without error, and none is pending or firing.
    def calm() -> bool:
        rules = api.alerting_rules()
        evaluated = all(
            parse_time(r["groupLastEvaluation"]) > stack.up_since + 1 for r in rules
        )
        return evaluated and all(
            r["health"] == "ok" and r["state"] == "inactive" for r in rules
        )

    wait_until(
        calm,
        timeout=15,
        what="every alert to be evaluated and inactive",
        details=lambda: rule_states(api),
    )
    assert api.alerts() == []

    # The Secret's key turns into something that is not a key: the sidecar
    # reloads it at the next refresh and fails to sign from then on.
    stack.key_file.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n")

    def firing() -> list[Obj]:
        stack.processes.assert_running()
        return [
            alert
            for alert in api.alerts()
            if alert["labels"]["alertname"] == REFRESH_ALERT
            and alert["state"] == "firing"
        ]

    (alert,) = wait_until(
        firing,
        timeout=ALERT_SECONDS,
        what=f"{REFRESH_ALERT} to fire",
        details=lambda: f"{api.alerts()}\n{stack.report()}",
    )
    assert alert["labels"] == {
        "alertname": REFRESH_ALERT,
        "severity": "warning",
        "provider": "aws",
        **SIDECAR_POD,
    }
    assert SIDECAR_POD["pod"] in alert["annotations"]["summary"]
    failures = api.query(
        "sum by (reason) (workload_identity_sidecar_refresh_failures_total) > 0"
    )
    assert [f["metric"] for f in failures] == [{"reason": "signing"}]


def rule_states(api: PrometheusApi) -> str:
    return "\n".join(
        f"{rule['name']}: {rule['state']}, health {rule['health']} "
        f"{rule.get('lastError', '')} (group evaluated {rule['groupLastEvaluation']})"
        for rule in api.alerting_rules()
    )


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bworkload_identity_[a-z_]+", expr))


def dashboard_exprs(board: Obj) -> list[str]:
    return [
        target["expr"]
        for panel in board["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
