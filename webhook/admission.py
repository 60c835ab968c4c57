"""AdmissionReview in, AdmissionReview out: the webhook's decision, without HTTP.

Two failure channels (kept apart on purpose):
- a call that is not a well-formed AdmissionReview raises MalformedReview,
  which the HTTP layer turns into a 4xx; the API server logs it;
- a pod the webhook cannot serve correctly is answered `allowed: false` with
  a status code and message, because a pod that silently starts without the
  credentials it should have is worse than one that is refused.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, NotRequired, TypedDict

from webhook.mutation import mutate, opts_out
from webhook.namespaces import NamespaceInfo
from webhook.scope import IdentityIndex, pod_tags
from webhook.sidecar_spec import SidecarSettings

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS: Final = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
MIRROR_ANNOTATION: Final = "kubernetes.io/config.mirror"


class Outcome(StrEnum):
    MUTATED = "mutated"
    UNCHANGED = "unchanged"
    IGNORED = "ignored"
    REFUSED = "refused"
    ERROR = "error"


class MalformedReview(ValueError):
    """The body is not an AdmissionReview this webhook can answer (HTTP 400)."""


class AdmissionStatus(TypedDict, total=False):
    code: int
    message: str


class AdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    patch: NotRequired[str]
    patchType: NotRequired[str]
    warnings: NotRequired[list[str]]
    status: NotRequired[AdmissionStatus]


class AdmissionReviewOut(TypedDict):
    apiVersion: str
    kind: str
    response: AdmissionResponse


@dataclass(frozen=True, slots=True)
class Review:
    """The parts of an AdmissionReview request the decision reads."""

    api_version: str
    uid: str
    operation: str
    kind: str
    sub_resource: str
    namespace: str
    dry_run: bool
    pod: Mapping[str, Any]


@dataclass(slots=True)
class Answer:
    review: AdmissionReviewOut
    outcome: Outcome
    patch: list[dict[str, Any]] = field(default_factory=list)
    identities: dict[str, str] = field(default_factory=dict)


def parse_review(body: Any) -> Review:
    if not isinstance(body, dict):
        raise MalformedReview("the body is not a JSON object")
    api_version = body.get("apiVersion")
    if api_version not in SUPPORTED_VERSIONS:
        raise MalformedReview(
            f"apiVersion {api_version!r} is not supported: send admission.k8s.io/v1"
        )
    if body.get("kind") != "AdmissionReview":
        raise MalformedReview(f"kind {body.get('kind')!r} is not AdmissionReview")
    request = body.get("request")
    if not isinstance(request, dict):
        raise MalformedReview("the AdmissionReview has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise MalformedReview(
            "request.uid is missing: it must be echoed in the response"
        )
    pod = request.get("object")
    kind = request.get("kind")
    kind_name = kind.get("kind") if isinstance(kind, dict) else None
    if kind_name is None and isinstance(pod, dict):
        kind_name = pod.get("kind")
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    namespace = request.get("namespace")
    if not isinstance(namespace, str) and isinstance(metadata, dict):
        namespace = metadata.get("namespace")
    return Review(
        api_version=str(api_version),
        uid=uid,
        operation=str(request.get("operation", "")),
        kind=str(kind_name or ""),
        sub_resource=str(request.get("subResource") or ""),
        namespace=namespace if isinstance(namespace, str) else "",
        dry_run=request.get("dryRun") is True,
        pod=pod if isinstance(pod, dict) else {},
    )


def _envelope(review: Review, response: AdmissionResponse) -> AdmissionReviewOut:
    return {
        "apiVersion": review.api_version,
        "kind": "AdmissionReview",
        "response": response,
    }


def allow(
    review: Review,
    outcome: Outcome = Outcome.IGNORED,
    *,
    warnings: list[str] | None = None,
) -> Answer:
    response: AdmissionResponse = {"uid": review.uid, "allowed": True}
    if warnings:
        response["warnings"] = warnings
    return Answer(_envelope(review, response), outcome)


def refuse(review: Review, message: str, *, code: int = 500) -> Answer:
    response: AdmissionResponse = {
        "uid": review.uid,
        "allowed": False,
        "status": {"code": code, "message": message},
    }
    return Answer(
        _envelope(review, response), Outcome.ERROR if code >= 500 else Outcome.REFUSED
    )


def _is_windows(spec: Mapping[str, Any]) -> bool:
    os_spec = spec.get("os")
    if isinstance(os_spec, dict) and os_spec.get("name") == "windows":
        return True
    selector = spec.get("nodeSelector")
    return isinstance(selector, dict) and selector.get("kubernetes.io/os") == "windows"


KNOWN_ANNOTATIONS: Final = frozenset(
    {"tags", "inject", "skip-containers", "aws", "gcp"}
)


def annotation_warnings(annotations: Mapping[str, Any]) -> list[str]:
    """Warn about workloadidentity.dev/ annotations that nothing reads: usually
    a misspelt key, whose intent would otherwise be silently ignored."""
    warnings = []
    for key in sorted(annotations):
        prefix, _, name = str(key).partition("/")
        if prefix == "workloadidentity.dev" and name not in KNOWN_ANNOTATIONS:
            known = ", ".join(
                f"workloadidentity.dev/{k}" for k in sorted(KNOWN_ANNOTATIONS)
            )
            warnings.append(
                f"annotation {key} is not read by workload-identity and was ignored "
                f"(known: {known}); tokens are always under "
                "/var/run/secrets/workloadidentity.dev/"
            )
    return warnings


def needs_namespace(review: Review) -> bool:
    """Whether deciding this review reads the namespace (pod CREATE only)."""
    return (
        review.operation == "CREATE"
        and review.kind == "Pod"
        and not review.sub_resource
    )


def decide(
    review: Review,
    *,
    namespace: NamespaceInfo | None,
    index: IdentityIndex,
    settings: SidecarSettings,
) -> Answer:
    """The answer for one review, given the pod's namespace as last seen."""
    if not needs_namespace(review):
        return allow(review)
    metadata = review.pod.get("metadata")
    spec = review.pod.get("spec")
    if not isinstance(metadata, dict) or not isinstance(spec, dict):
        raise MalformedReview(
            "request.object is not a pod: metadata and spec are required"
        )
    annotations = metadata.get("annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    if opts_out(metadata):
        return allow(review)
    if MIRROR_ANNOTATION in annotations:
        return allow(review)
    if namespace is None or namespace.project is None or namespace.excluded:
        return allow(review)
    if _is_windows(spec):
        return allow(
            review,
            warnings=[
                "workload-identity skipped this Windows pod: its token sidecar is "
                "Linux only; give the pod credentials another way"
            ],
        )

    # Select per provider, then compute the narrow patch towards it.
    tags = pod_tags(annotations)
    selection = index.select(namespace.project, tags)
    warnings = annotation_warnings(annotations)
    unknown = sorted(tags - index.known_tags(namespace.project))
    if unknown:
        warnings.append(
            f"tag(s) {unknown} are used by no WorkloadIdentity of project "
            f"{namespace.project!r}: check the spelling of workloadidentity.dev/tags"
        )
    mutation = mutate(
        review.pod,
        selection,
        namespace=review.namespace,
        project=namespace.project,
        settings=settings,
    )
    identities = {p.value: i.name for p, i in selection.chosen.items()}
    mutation.warnings[:0] = warnings
    if not mutation.patch:
        answer = allow(review, Outcome.UNCHANGED, warnings=mutation.warnings)
        answer.identities = identities
        return answer
    # The patch is built from fresh objects and parsed JSON, so it holds no
    # cycle: the encoder's cycle check would only cost time (~15%).
    patch = json.dumps(mutation.patch, separators=(",", ":"), check_circular=False)
    encoded = base64.b64encode(patch.encode())
    response: AdmissionResponse = {
        "uid": review.uid,
        "allowed": True,
        "patchType": "JSONPatch",
        "patch": encoded.decode(),
    }
    if mutation.warnings:
        response["warnings"] = mutation.warnings
    return Answer(
        _envelope(review, response), Outcome.MUTATED, mutation.patch, identities
    )


def describe(answer: Answer, review: Review) -> str:
    """One log line's worth of context for a decision (never a token)."""
    chosen = (
        ", ".join(f"{p}={n}" for p, n in sorted(answer.identities.items())) or "none"
    )
    return (
        f"uid={review.uid} namespace={review.namespace} operation={review.operation} "
        f"outcome={answer.outcome.value} identities={chosen} ops={len(answer.patch)}"
    )
