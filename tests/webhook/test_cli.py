"""`python -m webhook review` and `explain` on files, as an admin runs them."""

from __future__ import annotations

import base64
import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.webhook.casefiles import load_case
from webhook.cli import main
from webhook.server import Services, create_app


def write_case_files(
    tmp_path: Path, case_id: str, case: dict[str, Any] | None = None
) -> tuple[Path, Path, dict[str, Any]]:
    case = case or load_case(case_id)
    identities = tmp_path / "identities.yaml"
    identities.write_text(yaml.safe_dump_all(case["given"]["identities"]))
    namespaces = tmp_path / "namespaces.yaml"
    namespaces.write_text(yaml.safe_dump_all(case["given"].get("namespaces", [])))
    return identities, namespaces, case


def review_file(tmp_path: Path, case: dict[str, Any]) -> Path:
    """The case's AdmissionReview as a JSON file, as an admin would save it."""
    path = tmp_path / "review.json"
    path.write_text(json.dumps(case["given"]["admission_review"]))
    return path


def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue()


async def test_review_prints_byte_for_byte_what_the_server_answers(
    tmp_path: Path, aiohttp_client: Any, services: Services
) -> None:
    identities, namespaces, case = write_case_files(tmp_path, "case-01")
    review = review_file(tmp_path, case)
    code, printed = run(
        [
            "review",
            "--identities",
            str(identities),
            "--namespaces",
            str(namespaces),
            "--issuer-url",
            "https://issuer.test",
            str(review),
        ]
    )
    assert code == 0
    client = await aiohttp_client(create_app(services))
    served = await (
        await client.post(
            "/mutate",
            data=review.read_bytes(),
            headers={"Content-Type": "application/json"},
        )
    ).read()
    assert printed.rstrip("\n").encode() == served


def test_review_with_a_project_flag_needs_no_namespaces_file(tmp_path: Path) -> None:
    identities, _, case = write_case_files(tmp_path, "case-03")
    review = review_file(tmp_path, case)
    code, printed = run(
        [
            "review",
            "--identities",
            str(identities),
            "--project",
            "ml-platform",
            str(review),
        ]
    )
    assert code == 0
    assert "patch" in json.loads(printed)["response"]


def test_an_invalid_identity_file_stops_review_with_the_field_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    identities, _, case = write_case_files(tmp_path, "case-29")
    review = review_file(tmp_path, case)
    code, _ = run(
        [
            "review",
            "--identities",
            str(identities),
            "--project",
            "data-eng",
            str(review),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "half-configured" in err
    assert "spec.gcp.providerId" in err


def test_unreadable_and_malformed_files_are_reported_plainly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed")
    code, _ = run(["review", "--identities", str(broken), str(broken)])
    assert code == 2
    assert "not valid YAML" in capsys.readouterr().err
    code, _ = run(["review", "--identities", str(tmp_path / "missing.yaml")])
    assert code == 2
    assert "cannot read identities file" in capsys.readouterr().err


def explain(
    tmp_path: Path,
    case_id: str,
    pod: dict[str, Any],
    *extra: str,
    case: dict[str, Any] | None = None,
) -> dict[str, Any]:
    identities, namespaces, _ = write_case_files(tmp_path, case_id, case)
    pod_file = tmp_path / "pod.yaml"
    pod_file.write_text(yaml.safe_dump(pod))
    code, printed = run(
        [
            "explain",
            "--identities",
            str(identities),
            "--namespaces",
            str(namespaces),
            "-o",
            "json",
            *extra,
            str(pod_file),
        ]
    )
    assert code == 0
    result: dict[str, Any] = json.loads(printed)
    return result


def reasons(result: dict[str, Any]) -> dict[str, str]:
    return {i["name"]: i["reason"] for i in result["identities"]}


def test_explain_names_the_cause_for_missing_and_empty_project_rules(
    tmp_path: Path,
) -> None:
    case = load_case("case-27")
    pod = case["given"]["admission_review_template"]["request"]["object"]
    pod["metadata"]["namespace"] = "team-a"
    result = explain(tmp_path, "case-27", pod)
    why = reasons(result)
    assert "no scope" in why["no-scope-block"]
    assert "no project names" in why["forgotten-scope"]
    assert "no project names" in why["empty-project-list"]
    assert result["selection"] == {}


def test_explain_reports_the_tie_break_and_the_empty_tag_list(tmp_path: Path) -> None:
    case = load_case("case-25")
    pod = case["given"]["admission_review_template"]["request"]["object"]
    pod["metadata"]["annotations"] = {"workloadidentity.dev/tags": "web,eu"}
    result = explain(tmp_path, "case-25", pod)
    why = reasons(result)
    assert result["selection"] == {"aws": "alpha-reader", "gcp": "gcp-storage-a"}
    assert "tie-break" in why["alpha-reader-2"]
    assert "tie-break" in why["zeta-writer"]
    assert "team-b" in why["aardvark-nomatch"]
    case = load_case("case-26")
    pod = case["given"]["admission_review_template"]["request"]["object"]
    why = reasons(explain(tmp_path, "case-26", pod))
    assert "lists no tags" in why["tags-empty-all"]
    assert "lists no tags" in why["tags-empty-any"]


@pytest.mark.parametrize("variant", ["main", "mislabelled"])
def test_explain_never_matches_in_system_namespaces(
    tmp_path: Path, variant: str
) -> None:
    case = load_case("case-20")
    if variant == "mislabelled":
        case["given"]["namespaces"] = case["given"]["variant_mislabelled_namespaces"][
            "namespaces"
        ]
    pod = case["given"]["requests"][0]["object"]
    result = explain(tmp_path, "case-20", pod, case=case)
    assert result["selection"] == {}
    [platform] = result["identities"]
    assert platform["matched"] is False
    expected = (
        "no workloadidentity.dev/project label"
        if variant == "main"
        else "system namespace"
    )
    assert expected in platform["reason"]


def test_explain_text_output_reads_as_a_report(tmp_path: Path) -> None:
    identities, namespaces, case = write_case_files(tmp_path, "case-01")
    pod_file = tmp_path / "review.json"
    pod_file.write_text(json.dumps(case["given"]["admission_review"]))
    code, printed = run(
        [
            "explain",
            "--identities",
            str(identities),
            "--namespaces",
            str(namespaces),
            str(pod_file),
        ]
    )
    assert code == 0
    assert "MATCH s3-reader (aws): matched and selected" in printed
    assert "selected for aws: s3-reader" in printed


def test_explain_refuses_what_is_not_a_pod(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    identities, namespaces, _ = write_case_files(tmp_path, "case-01")
    code, _ = run(
        [
            "explain",
            "--identities",
            str(identities),
            "--namespaces",
            str(namespaces),
            "tests/webhook/cases/case-01.yaml",
        ]
    )
    assert code == 2
    assert "neither a Pod nor an AdmissionReview" in capsys.readouterr().err


def test_explain_says_when_the_namespace_is_unknown_rather_than_unlabelled(
    tmp_path: Path,
) -> None:
    case = load_case("case-01")
    pod = copy.deepcopy(case["given"]["admission_review"]["request"]["object"])
    identities, _, _ = write_case_files(tmp_path, "case-01")
    pod_file = tmp_path / "pod.yaml"
    pod_file.write_text(yaml.safe_dump(pod))
    code, printed = run(
        ["explain", "--identities", str(identities), "-o", "json", str(pod_file)]
    )
    assert code == 0
    assert "unknown: pass --namespaces" in json.loads(printed)["blocked"]


def test_a_label_opt_out_counts_like_the_annotation(tmp_path: Path) -> None:
    case = load_case("case-01")
    review = copy.deepcopy(case["given"]["admission_review"])
    review["request"]["object"]["metadata"]["labels"]["workloadidentity.dev/inject"] = (
        "false"
    )
    result = explain(tmp_path, "case-01", review)
    assert result["selection"] == {}
    assert "opts out" in result["blocked"]
    from tests.webhook.casefiles import Webhook

    assert "patch" not in Webhook.for_case(case).admit(review).response


def test_the_issuer_ca_bundle_reaches_the_sidecar_inline(tmp_path: Path) -> None:
    """In a cluster the sidecar cannot mount the webhook's Secret (another
    namespace), so the webhook hands it the CA in WI_ISSUER_CA."""
    from webhook.tls import write_self_signed

    write_self_signed(str(tmp_path / "ca.crt"), str(tmp_path / "ca.key"), hosts=["x"])
    pem = (tmp_path / "ca.crt").read_text()
    identities, namespaces, case = write_case_files(tmp_path, "case-03")
    argv = ["review", "--identities", str(identities), "--namespaces", str(namespaces),
            str(review_file(tmp_path, case))]  # fmt: skip
    code, printed = run([*argv, "--issuer-ca-bundle", str(tmp_path / "ca.crt")])
    assert code == 0
    patch = json.loads(base64.b64decode(json.loads(printed)["response"]["patch"]))
    (sidecar,) = [
        op["value"]
        for op in patch
        if isinstance(op.get("value"), dict)
        and op["value"].get("name") == "workload-identity"
    ]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["WI_ISSUER_CA"] == pem.strip() + "\n"

    (tmp_path / "bad.crt").write_text("not a certificate")
    code = main(
        [*argv, "--issuer-ca-bundle", str(tmp_path / "bad.crt")], out=io.StringIO()
    )
    assert code == 2
