"""Drift: what each running pod holds against what the rules give it now.

The webhook decides once, when a pod is created, and the pod keeps what it
was given. A pod's holdings are its `workloadidentity.dev/aws` and
`workloadidentity.dev/gcp` annotations, which the webhook writes with every
injection. Per pod and provider, drift is one of:

- missing: the rules give the pod an identity and it holds none (it was
  created while the webhook was unavailable, or before the identity or its
  scope covered it);
- stale: it holds an identity that the rules no longer give it (its scope was
  narrowed, the pod's tags or its namespace's project changed, it opted out
  since) or the rules now choose another one;
- orphaned: it holds an identity that no longer exists (deleted, or invalid
  and so served to no pod).

Not drift: pods that have finished or are being deleted, pods of namespaces
the webhook never serves (system namespaces, its own), and pods that hold
nothing where the webhook would inject nothing (opted out, static pods,
Windows, a namespace that is no project).
The rules are the ones admission and /token apply (webhook.scope).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from webhook.admission import MIRROR_ANNOTATION
from webhook.identities import Identity, Provider
from webhook.mutation import ANNOTATION_PREFIX, INJECT_ANNOTATION
from webhook.namespaces import PROJECT_LABEL, NamespaceInfo
from webhook.pods import PodRecord
from webhook.scope import IdentityIndex, Selection, evaluate, pod_tags


class DriftKind(StrEnum):
    MISSING = "missing"
    STALE = "stale"
    ORPHANED = "orphaned"


@dataclass(frozen=True, slots=True)
class Drift:
    kind: DriftKind
    provider: Provider
    identity: str
    """The identity it is about: the one the pod should hold when missing,
    the one it holds otherwise."""
    held: str | None
    expected: str | None
    cause: str = ""
    """Stale: why the held identity is not the pod's now; orphaned: what
    became of it."""
    token_lifetime: int | None = None
    """Stale or orphaned: the identity's token lifetime, the longest the
    pod's current token can still be valid; None when unknown."""

    @property
    def reason(self) -> str:
        """One sentence about one pod."""
        what = f"{self.provider.value} identity"
        if self.kind is DriftKind.MISSING:
            return (
                f"the rules give it {what} {self.identity} but it holds none: it "
                "was created while the webhook was unavailable, or before the "
                "identity covered it"
            )
        now = (
            f"the rules choose {self.expected} now"
            if self.expected
            else f"the rules give it no {what} now"
        )
        if self.kind is DriftKind.ORPHANED:
            return f"it holds {self.identity}, which {self.cause}; {now}"
        return f"it holds {self.identity}, but {now}: {self.cause}"


@dataclass(frozen=True, slots=True)
class Assessment:
    """One pod: what it holds, what the rules give it now, and the drift."""

    pod: PodRecord
    project: str | None
    holds: Mapping[Provider, str]
    expected: Mapping[Provider, str]
    ineligible: str
    """Why the webhook would inject nothing into this pod now, or ""."""
    drifts: tuple[Drift, ...] = ()


def held_identities(annotations: Mapping[str, str]) -> dict[Provider, str]:
    """The identity recorded per provider by the webhook's annotations."""
    held: dict[Provider, str] = {}
    for provider in Provider:
        value = annotations.get(f"{ANNOTATION_PREFIX}{provider.value}", "").strip()
        if value:
            held[provider] = value
    return held


def ineligible_reason(pod: PodRecord, namespace: NamespaceInfo | None) -> str:
    """Why admission would inject nothing into this pod, in its order of
    checks; "" when it would apply the scope rules."""
    if pod.finished:
        return "the pod has finished"
    if pod.terminating:
        return "the pod is being deleted"
    if pod.annotations.get(INJECT_ANNOTATION, "").strip().lower() == "false":
        return f'the pod opts out with {INJECT_ANNOTATION}: "false"'
    if MIRROR_ANNOTATION in pod.annotations:
        return "a static (mirror) pod, which the webhook never changes"
    if namespace is None or namespace.project is None:
        return (
            f"namespace {pod.namespace} has no {PROJECT_LABEL} label, so it is "
            "no project"
        )
    if namespace.excluded:
        return f"{namespace.excluded}: the webhook never injects there"
    if pod.windows:
        return "a Windows pod: the token sidecar is Linux only"
    return ""


def _stale_cause(
    held: Identity, provider: Provider, want: Identity | None, why_not: str
) -> str:
    if held.provider is not provider:
        return f"{held.name} is a {held.provider.value} identity"
    if want is not None and not why_not:
        return f"{held.name} still matches, but {want.name} sorts first and wins"
    return why_not


def _drift(
    provider: Provider,
    held: str | None,
    want: Identity | None,
    *,
    index: IdentityIndex,
    why_not: str,
    invalid: Collection[str],
    lifetimes: Mapping[str, int],
) -> Drift | None:
    """The drift of one provider; `why_not` says why the held identity does
    not serve the pod now ("" when it would)."""
    if held is None:
        if want is None:
            return None
        return Drift(DriftKind.MISSING, provider, want.name, None, want.name)
    expected = want.name if want is not None else None
    identity = index.by_name.get(held)
    if identity is None:
        gone = (
            "is invalid, so it serves no pod" if held in invalid else "no longer exists"
        )
        return Drift(
            DriftKind.ORPHANED,
            provider,
            held,
            held,
            expected,
            gone,
            lifetimes.get(held),
        )
    if expected == held:
        return None
    return Drift(
        DriftKind.STALE,
        provider,
        held,
        held,
        expected,
        _stale_cause(identity, provider, want, why_not),
        identity.expiration_seconds,
    )


def assess(
    pod: PodRecord,
    namespace: NamespaceInfo | None,
    index: IdentityIndex,
    *,
    invalid: Collection[str] = (),
    lifetimes: Mapping[str, int] | None = None,
) -> Assessment:
    """One pod against the rules now. `invalid` names identities that exist
    but failed validation; `lifetimes` remembers the token lifetime of
    identities that may have gone since."""
    holds = held_identities(pod.annotations)
    project = namespace.project if namespace is not None else None
    blocked = ineligible_reason(pod, namespace)
    excluded = namespace is not None and bool(namespace.excluded)
    if pod.finished or pod.terminating or excluded:
        return Assessment(pod, project, holds, {}, blocked)
    tags = pod_tags(pod.annotations)
    selection = Selection() if blocked else index.select(project, tags)
    drifts: list[Drift] = []
    for provider in Provider:
        held = holds.get(provider)
        why_not = blocked
        if not why_not and held in index.by_name:
            verdict = evaluate(index.by_name[held], project, tags)
            why_not = "" if verdict.matched else verdict.reason
        found = _drift(
            provider,
            held,
            selection.get(provider),
            index=index,
            why_not=why_not,
            invalid=invalid,
            lifetimes=lifetimes or {},
        )
        if found is not None:
            drifts.append(found)
    expected = {p: i.name for p, i in selection.chosen.items()}
    return Assessment(pod, project, holds, expected, blocked, tuple(drifts))


def survey(
    pods: Iterable[PodRecord],
    namespaces: Mapping[str, NamespaceInfo],
    index: IdentityIndex,
    *,
    invalid: Collection[str] = (),
    lifetimes: Mapping[str, int] | None = None,
) -> list[Assessment]:
    """Every pod that still runs, assessed, in namespace and name order."""
    return [
        assess(
            pod,
            namespaces.get(pod.namespace),
            index,
            invalid=invalid,
            lifetimes=lifetimes,
        )
        for pod in sorted(pods, key=lambda p: p.key)
        if not pod.finished
    ]


DriftKey = tuple[DriftKind, str]
"""(kind, identity): the labels of workload_identity_drift_pods."""


def drift_counts(assessments: Iterable[Assessment]) -> dict[DriftKey, int]:
    """Drifted pods by kind and identity; a pod counts once per pair."""
    counts: Counter[DriftKey] = Counter()
    for assessment in assessments:
        counts.update({(d.kind, d.identity) for d in assessment.drifts})
    return dict(sorted(counts.items()))


def token_note(drift: Drift, signing_mode: str) -> str:
    """What happens to the pod's tokens meanwhile, for stale and orphaned
    drift ("" for missing)."""
    if drift.kind is DriftKind.MISSING:
        return ""
    if signing_mode == "key":
        return (
            "its sidecar signs its own tokens (key mode), so it keeps this "
            "identity until the pod is re-created"
        )
    within = (
        f"within {drift.token_lifetime} s (the identity's token lifetime)"
        if drift.token_lifetime
        else "within the identity's token lifetime"
    )
    note = (
        f"/token refuses it a new token at its next refresh, and its current "
        f"token expires {within}"
    )
    return note if signing_mode == "issuer" else f"in issuer mode, {note}"
