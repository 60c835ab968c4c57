"""The benchmark's parts: what it sends, how it reads its tools, how it judges
and prints, and its process harness against real servers. No figure it
measures is asserted: the machines it runs on are shared and noisy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import decision, fixtures, report, sidecar_bench
from bench.cli import build_parser, plan_from
from bench.load import LoadResult, LoadSpec, PythonClient
from bench.plan import QUICK
from bench.report import Row, Verdict
from bench.servers import WebhookServer
from bench.webhook_bench import check_answers
from bench.workspace import Workspace, prepare
from webhook import admission
from webhook.identities import parse_identities
from webhook.namespaces import namespaces_from_documents
from webhook.scope import IdentityIndex
from webhook.sidecar_spec import SidecarSettings


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return prepare(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def webhook(workspace: Workspace) -> Iterator[WebhookServer]:
    server = WebhookServer(workspace, cpu=None, name="webhook-test")
    try:
        yield server
    finally:
        server.child.stop()


def test_the_regular_pod_review_is_8_kb_and_the_large_pod_has_80_containers() -> None:
    bodies = fixtures.bodies()
    assert 7_900 <= len(bodies["8 KB pod"]) <= 8_192
    large = fixtures.eighty_container_pod()["spec"]
    assert len(large["initContainers"]) + len(large["containers"]) == 80


@pytest.mark.parametrize("count", [10, 1_000])
def test_every_population_gives_each_pod_the_same_answer(count: int) -> None:
    loaded = parse_identities(fixtures.identity_documents(count))
    assert not loaded.errors
    assert len(loaded.identities) == count
    index = IdentityIndex(loaded.identities)
    namespace = namespaces_from_documents(
        fixtures.namespace_documents(), webhook_namespace="workload-identity-system"
    )[fixtures.NAMESPACE]
    answers = {}
    for pod, body in fixtures.bodies().items():
        review = admission.parse_review(json.loads(body))
        answers[pod] = admission.decide(
            review, namespace=namespace, index=index, settings=SidecarSettings()
        )
    expected = {"aws": "payments-reports-s3", "gcp": "payments-reports-gcs"}
    assert answers["8 KB pod"].identities == expected
    assert answers["80-container pod"].identities == expected
    assert answers["no-match pod"].outcome is admission.Outcome.UNCHANGED


def test_a_population_needs_the_two_serving_identities() -> None:
    with pytest.raises(ValueError, match="at least"):
        fixtures.identity_documents(1)


def test_the_table_puts_rows_under_their_section_and_notes_below() -> None:
    rows = [
        Row("webhook", "rate", "5,100/s", ">= 5,000/s", Verdict.PASS),
        Row("webhook", "memory", "+12%", "within 10%", Verdict.MISS),
        Row("sidecar", "idle CPU", "0.02% of a core"),
    ]
    lines = report.format_table(rows, notes=["one note"]).splitlines()
    header = [cell.strip() for cell in lines[0].split(" | ")]
    assert header == ["metric", "measured (median)", "target", "result"]
    assert [line.split(" | ")[0].rstrip() for line in lines[2:]] == [
        "webhook",
        "  rate",
        "  memory",
        "sidecar",
        "  idle CPU",
        "note: one note",
    ]
    assert lines[4].endswith("| miss")
    assert lines[6].endswith("| info")


def test_verdicts_compare_against_the_target_and_any_miss_wins() -> None:
    assert report.at_least(800, 800) is Verdict.PASS
    assert report.at_least(799, 800) is Verdict.MISS
    assert report.at_most(2.0, 2.0) is Verdict.PASS
    assert report.both(Verdict.PASS, Verdict.MISS) is Verdict.MISS
    assert report.both(Verdict.MISS, Verdict.FAILED) is Verdict.FAILED


def test_a_load_result_is_read_from_the_last_json_line_of_the_output() -> None:
    output = "Running 3s test @ https://127.0.0.1:1/mutate\n" + json.dumps(
        {"requests": 300, "seconds": 3.0, "p50": 0.001, "p99": 0.004, "errors": 0}
    )
    result = LoadResult.parse(output, tool="wrk")
    assert result.requests == 300
    assert result.rate == 100


def test_identity_count_ratios_are_judged_per_pod() -> None:
    costs = {
        (pod, count): 100e-6 * (3 if pod == "no-match pod" and count > 10 else 1)
        for pod in ("8 KB pod", "no-match pod")
        for count in (10, 1_000, 10_000)
    }
    costs[("8 KB pod, parse + decide + serialize", 1_000)] = 200e-6
    costs[("80-container pod, parse + decide + serialize", 1_000)] = 2_000e-6
    verdicts = {r.metric: r.verdict for r in decision.rows(costs)}
    assert verdicts["8 KB pod: cost at 10,000 / cost at 10"] is Verdict.PASS
    assert verdicts["no-match pod: cost at 10,000 / cost at 10"] is Verdict.MISS


def test_quick_mode_is_shorter_and_flags_override_it() -> None:
    args = build_parser().parse_args(["--quick", "--repeats", "2"])
    plan = plan_from(args)
    assert plan.repeats == 2
    assert plan.memory_requests == QUICK.memory_requests


def test_the_client_process_sends_exactly_the_count_asked_for(
    workspace: Workspace, webhook: WebhookServer
) -> None:
    check_answers(workspace, webhook)
    before = webhook.served()
    client = PythonClient(ca=workspace.cert, cpu=None)
    spec = LoadSpec(webhook.url, workspace.bodies["8 KB pod"], 4, 60.0)
    result = client.run(spec, requests=25)
    assert (result.requests, result.errors) == (25, 0)
    assert webhook.served() == before + 25


def test_new_connections_are_answered_like_kept_alive_ones(
    workspace: Workspace, webhook: WebhookServer
) -> None:
    client = PythonClient(ca=workspace.cert, cpu=None)
    body = workspace.bodies["no-match pod"]
    spec = LoadSpec(webhook.url, body, 2, 60.0, new_connections=True)
    result = client.run(spec, requests=6)
    assert (result.requests, result.errors) == (6, 0)


def test_a_key_mode_sidecar_is_started_timed_and_measured(workspace: Workspace) -> None:
    result, sidecar = sidecar_bench.start_and_measure(
        workspace, "key", 1, cpu=None, token_url=""
    )
    try:
        assert len(result.first_token) == 1
        assert result.rss > 0
        tokens = sidecar.directory / "tokens"
        assert {p.name for p in Path(tokens).iterdir()} >= {"aws-token", "gcp-token"}
    finally:
        sidecar.child.stop()
