"""Golden pods: each file in golden/ holds its inputs and the exact answer.

A new case is a new file. After an intended change of behaviour, rewrite the
expectations with `UPDATE_GOLDEN=1 pytest tests/webhook/test_golden.py` and
review the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.webhook.casefiles import Webhook, review_for
from webhook.sidecar_spec import SidecarMode, SidecarSettings, SigningMode

GOLDEN = Path(__file__).parent / "golden"
FILES = sorted(GOLDEN.glob("*.yaml"))


def answer(case: dict[str, Any]) -> dict[str, Any]:
    options = case.get("settings", {})
    settings = SidecarSettings(
        mode=SidecarMode(options.get("mode", "native")),
        signing=SigningMode(options.get("signing", "issuer")),
        issuer_url="https://oidc.example.com",
    )
    webhook = Webhook(case["identities"], case["namespaces"], settings=settings)
    review = review_for(
        case["pod"], uid="golden", namespace=case["pod"]["metadata"]["namespace"]
    )
    admitted = webhook.admit(review)
    return {
        "allowed": admitted.response["allowed"],
        "patch": admitted.patch,
        "warnings": admitted.warnings,
        "second_pass_patch": webhook.readmit(admitted, uid="again").patch,
    }


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_golden_pod(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    actual = answer(case)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        case["expected"] = actual
        path.write_text(yaml.safe_dump(case, sort_keys=False, width=100))
    assert actual == case["expected"]


def test_there_are_golden_pods() -> None:
    assert len(FILES) >= 8
