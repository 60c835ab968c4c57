"""Adversarial AdmissionReviews against the webhook process, over TLS: no
crash, no hang, and every answer a well-formed AdmissionReview for the
request or a 4xx that says what is wrong."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.reliability.adversarial import BASES, check_answer, request_bodies
from tests.reliability.support import Figures, Processes, budget, scaled, total
from tests.reliability.webhook_rig import start_webhook

FUZZ_INPUTS = scaled(1_000, 100_000)


@pytest.mark.timeout(budget(120, 3000))
def test_adversarial_reviews_get_a_well_formed_review_or_a_4xx(
    processes: Processes, tmp_path: Path, figures: Figures
) -> None:
    webhook = start_webhook(processes, tmp_path)
    client = webhook.client(timeout=30)
    kinds: Counter[str] = Counter()
    slowest = 0.0

    @settings(
        max_examples=FUZZ_INPUTS,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request_bodies())
    def answer_is_well_formed(sent: tuple[bytes, object]) -> None:
        nonlocal slowest
        data, value = sent
        started = time.perf_counter()
        answer = client.post_json("/mutate", data)
        slowest = max(slowest, time.perf_counter() - started)
        kinds[check_answer(answer.status, answer.body, value)] += 1

    try:
        answer_is_well_formed()
    finally:
        client.close()

    assert webhook.process.alive()
    log = webhook.process.log()
    assert "Traceback" not in log and "admission failed" not in log
    errors = total(
        webhook.metrics(), "workload_identity_admission_requests_total", outcome="error"
    )
    assert errors == 0
    figures.record(
        "fuzzed admission",
        inputs=sum(kinds.values()),
        answers=dict(sorted(kinds.items())),
        slowest_answer_s=round(slowest, 2),
        crashes=0,
    )


ATHERIS_RUNS = scaled(50_000, 2_000_000)
TOKENS = [
    "apiVersion", "admission.k8s.io/v1", "admission.k8s.io/v1beta1", "AdmissionReview",
    "request", "uid", "kind", "Pod", "namespace", "payments", "batch", "plain",
    "operation", "CREATE", "UPDATE", "object", "metadata", "annotations", "spec",
    "containers", "initContainers", "name", "env", "value", "valueFrom",
    "volumeMounts", "mountPath", "volumes", "restartPolicy", "Always", "os",
    "windows", "nodeSelector", "workloadidentity.dev/tags",
    "workloadidentity.dev/inject", "workloadidentity.dev/skip-containers",
    "AWS_ROLE_ARN", "GOOGLE_APPLICATION_CREDENTIALS", "dryRun", "subResource",
]  # fmt: skip


@pytest.mark.timeout(budget(120, 3000))
def test_coverage_guided_fuzzing_of_the_decision_finds_no_crash(
    tmp_path: Path, processes: Processes, figures: Figures
) -> None:
    """atheris (libFuzzer) is in the `test` extra for CPython 3.11 to 3.13 on
    Linux x86_64, the only platforms it has wheels for; skipped elsewhere."""
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, base in enumerate(BASES):
        (corpus / f"seed-{index}.json").write_text(json.dumps(base))
    dictionary = tmp_path / "admission.dict"
    dictionary.write_text("".join(f'"{token}"\n' for token in TOKENS))
    fuzzer = processes.python(
        "atheris",
        "-m",
        "tests.reliability.atheris_admission",
        str(corpus),
        f"-runs={ATHERIS_RUNS}",
        f"-dict={dictionary}",
        "-max_len=16384",
        "-timeout=10",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={tmp_path}/",
    )
    code = fuzzer.popen.wait(timeout=budget(110, 2900))
    log = fuzzer.log()
    assert code == 0, log[-3000:]
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))
    done = re.search(r"Done (\d+) runs", log)
    assert done is not None and int(done.group(1)) == ATHERIS_RUNS
    figures.record("fuzzed admission", atheris_runs=ATHERIS_RUNS, atheris_crashes=0)
