"""A coverage-guided fuzz target for the admission decision (atheris, when it
is installed): bytes in as the HTTP layer gets them, and no exception may
escape but the one that means "not an AdmissionReview" (HTTP 400).

libFuzzer's own mutations flip bytes, and nine in ten of the inputs they make
from a review are no longer JSON, so they never reach the decision. Most
mutations here are made on the parsed document instead (a value replaced by
one of another type or a known word, a key dropped or added, a subtree copied
elsewhere), and the result is serialised again; the rest are libFuzzer's.

    python -m tests.reliability.atheris_admission CORPUS_DIR -runs=N ...
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

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


WORDS = (
    "apiVersion", "admission.k8s.io/v1", "AdmissionReview", "request", "uid",
    "kind", "Pod", "namespace", "payments", "batch", "operation", "CREATE",
    "UPDATE", "object", "metadata", "annotations", "spec", "containers",
    "initContainers", "ephemeralContainers", "name", "env", "value",
    "valueFrom", "volumeMounts", "mountPath", "volumes", "restartPolicy",
    "Always", "os", "windows", "workloadidentity.dev/tags",
    "workloadidentity.dev/inject", "workloadidentity.dev/skip-containers",
    "false", "s3, bq", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS", "/var/run/secrets/workload-identity",
    "workload-identity", "dryRun", "subResource", "serviceAccountName",
)  # fmt: skip
"""Field names and values the decision looks at."""


def _nodes(value: Any, found: list[Any]) -> list[Any]:
    """Every dict and list in `value`, depth first."""
    if isinstance(value, dict | list):
        found.append(value)
        for item in value.values() if isinstance(value, dict) else value:
            _nodes(item, found)
    return found


def _replacement(rng: random.Random, nodes: list[Any]) -> Any:
    choice = rng.randrange(9)
    if choice == 0:
        return None
    if choice == 1:
        return rng.random() < 0.5
    if choice == 2:
        return rng.choice((0, -1, 2**63, 10**30, 3.5))
    if choice == 3:
        return ""
    if choice == 4:
        return []
    if choice == 5:
        return {}
    if choice == 6:
        return json.loads(json.dumps(rng.choice(nodes)))  # a copy of a subtree
    return rng.choice(WORDS)


def mutate_structure(document: Any, rng: random.Random) -> Any:
    """`document` with one structural change."""
    nodes = _nodes(document, [])
    if not nodes:
        return _replacement(rng, [{}])
    node = rng.choice(nodes)
    if isinstance(node, dict):
        action = rng.randrange(3)
        if action == 0 and node:
            del node[rng.choice(list(node))]
        elif action == 1:
            node[rng.choice(WORDS)] = _replacement(rng, nodes)
        elif node:
            node[rng.choice(list(node))] = _replacement(rng, nodes)
    else:
        action = rng.randrange(3)
        if action == 0 and node:
            node.pop(rng.randrange(len(node)))
        elif action == 1 and node:
            node.append(json.loads(json.dumps(rng.choice(node))))
        else:
            node.insert(rng.randrange(len(node) + 1), _replacement(rng, nodes))
    return document


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)  # noqa: S311 - libFuzzer needs replayable choices
    if rng.random() < 0.8:
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
        else:
            mutated = json.dumps(mutate_structure(document, rng)).encode()
            if len(mutated) <= max_size:
                return mutated
    return bytes(atheris.Mutate(data, max_size))


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()
