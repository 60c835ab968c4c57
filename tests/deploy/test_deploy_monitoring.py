"""Alerts, scrape configuration and the Grafana dashboard."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    DEPLOY,
    SERVICE,
    Obj,
    interface_metrics,
    metrics_in,
    only,
    render,
)

MONITORING = DEPLOY / "monitoring"
RULES = MONITORING / "rules" / "workload-identity.rules.yaml"
RULE_TESTS = MONITORING / "rules" / "workload-identity.rules.test.yaml"
DASHBOARD = MONITORING / "dashboards" / "workload-identity.json"
WEBHOOK_JOB = "workload-identity-webhook"

REQUIRED_ALERTS = {
    "WorkloadIdentityTokenRefreshFailing",
    "WorkloadIdentityTokenNearExpiry",
    "WorkloadIdentityTokenExpired",
    "WorkloadIdentityWebhookErrors",
    "WorkloadIdentityWebhookLatencyHigh",
    "WorkloadIdentityWebhookAbsent",
}


def rule_groups() -> list[Obj]:
    groups: list[Obj] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def alerts() -> dict[str, Obj]:
    return {r["alert"]: r for g in rule_groups() for r in g["rules"] if "alert" in r}


def dashboard() -> Obj:
    found: Obj = json.loads(DASHBOARD.read_text())
    return found


def dashboard_targets() -> list[Obj]:
    return [
        target
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def run(tool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_prometheus_rule_embeds_exactly_the_rules_file() -> None:
    rule = only(render("monitoring"), "PrometheusRule", "workload-identity")
    assert rule["spec"]["groups"] == rule_groups()


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_required_alerts_exist_with_severity_and_text() -> None:
    found = alerts()
    assert set(found) >= REQUIRED_ALERTS
    for name, rule in found.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name
        assert rule.get("for"), f"{name} would page on a single evaluation"


def test_alert_expressions_read_documented_metrics_only() -> None:
    for name, rule in alerts().items():
        used = metrics_in(rule["expr"])
        assert used <= interface_metrics(), f"{name}: {used - interface_metrics()}"


def test_alerts_follow_the_contract() -> None:
    found = alerts()
    expr = {name: " ".join(rule["expr"].split()) for name, rule in found.items()}
    assert (
        "workload_identity_sidecar_refresh_failures_total"
        in expr["WorkloadIdentityTokenRefreshFailing"]
    )
    assert "increase(" in expr["WorkloadIdentityTokenRefreshFailing"]
    near = expr["WorkloadIdentityTokenNearExpiry"]
    assert (
        "workload_identity_sidecar_token_expiry_timestamp_seconds - time() < 300"
        in near
    )
    assert "workload_identity_sidecar_token_valid == 1" in near
    assert (
        expr["WorkloadIdentityTokenExpired"]
        == "workload_identity_sidecar_token_valid == 0"
    )
    assert 'outcome="error"' in expr["WorkloadIdentityWebhookErrors"]
    latency = expr["WorkloadIdentityWebhookLatencyHigh"]
    assert "histogram_quantile(0.99," in latency
    assert "workload_identity_admission_duration_seconds_bucket" in latency
    assert latency.endswith("> 0.25")
    absent = 'absent(up{job="' + WEBHOOK_JOB + '"}'
    assert expr["WorkloadIdentityWebhookAbsent"].startswith(absent)


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fires >= set(alerts()), set(alerts()) - fires
    assert silent >= set(alerts()), set(alerts()) - silent


def test_service_monitor_scrapes_the_metrics_port_as_the_alerts_job() -> None:
    monitor = only(render("monitoring"), "ServiceMonitor")
    service = only(render("base"), "Service", SERVICE)
    labels = service["metadata"]["labels"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(labels.get(k) == v for k, v in selector.items())
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [
        service["metadata"]["namespace"]
    ]
    assert labels[monitor["spec"]["jobLabel"]] == WEBHOOK_JOB
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert "metrics" in ports


def test_pod_monitor_scrapes_the_sidecar_port_everywhere() -> None:
    monitor = only(render("monitoring"), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["wi-metrics"]


def test_dashboard_is_valid_json_with_unique_panel_ids() -> None:
    board = dashboard()
    assert board["uid"] == "workload-identity"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_queries_documented_metrics_only() -> None:
    used: set[str] = set()
    for target in dashboard_targets():
        used |= metrics_in(target["expr"])
    assert used <= interface_metrics(), used - interface_metrics()
    assert used >= {
        "workload_identity_sidecar_refresh_attempts_total",
        "workload_identity_sidecar_refresh_failures_total",
        "workload_identity_sidecar_token_expiry_timestamp_seconds",
        "workload_identity_sidecar_token_valid",
        "workload_identity_admission_requests_total",
        "workload_identity_admission_duration_seconds",
        "workload_identity_identities_loaded",
        "workload_identity_cache_synced",
    }


def test_dashboard_shows_failures_by_reason_and_latency_percentiles() -> None:
    exprs = [" ".join(t["expr"].split()) for t in dashboard_targets()]
    assert any(
        "by (provider, reason)" in e and "refresh_failures_total" in e for e in exprs
    )
    assert any("by (outcome)" in e and "admission_requests_total" in e for e in exprs)
    for quantile in ("0.5", "0.99"):
        assert any(
            f"histogram_quantile({quantile}," in e and "admission_duration_seconds" in e
            for e in exprs
        )


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses each query as a recording rule, with Grafana's
    variables replaced by values."""
    substitutions = {
        "$__rate_interval": "5m",
        "$__range": "1h",
        "$namespace": ".*",
    }
    rules: list[dict[str, Any]] = []
    for index, target in enumerate(dashboard_targets()):
        expr = target["expr"]
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown variable in {target['expr']}"
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_config_map_carries_the_file_for_grafana() -> None:
    config = only(render("monitoring"), "ConfigMap", "workload-identity-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config["data"]["workload-identity.json"]) == dashboard()


@pytest.mark.parametrize("name", sorted(REQUIRED_ALERTS))
def test_alert_names_follow_the_product_prefix(name: str) -> None:
    assert re.fullmatch(r"WorkloadIdentity[A-Z][A-Za-z]+", name)
