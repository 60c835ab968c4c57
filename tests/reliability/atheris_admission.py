"""A coverage-guided fuzz target for the admission decision (atheris, when it
is installed): bytes in as the HTTP layer gets them, and no exception may
escape but the one that means "not an AdmissionReview" (HTTP 400).

    python -m tests.reliability.atheris_admission CORPUS_DIR -runs=N ...
"""

from __future__ import annotations

import json
import sys

import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

with atheris.instrument_imports():
    from webhook import admission
    from webhook.identities import parse_identities
    from webhook.namespaces import namespaces_from_documents
    from webhook.scope import IdentityIndex
    from webhook.sidecar_spec import SidecarSettings

from tests.reliability.webhook_rig import IDENTITIES, NAMESPACES

INDEX = IdentityIndex(parse_identities(IDENTITIES).identities)
KNOWN = namespaces_from_documents(
    NAMESPACES, webhook_namespace="workload-identity-system"
)
SETTINGS = SidecarSettings()


def one_input(data: bytes) -> None:
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return  # the handler answers 400
    try:
        review = admission.parse_review(body)
        answer = admission.decide(
            review,
            namespace=KNOWN.get(review.namespace),
            index=INDEX,
            settings=SETTINGS,
        )
    except (admission.MalformedReview, RecursionError):
        return  # 400
    json.dumps(answer.review)
    if answer.outcome is admission.Outcome.ERROR:
        raise AssertionError("an internal error for this input")


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
