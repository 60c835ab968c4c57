"""What the drift report tells admins on the workload itself: one Warning
Event per workload, drift kind and identity, when that drift first appears.

The Event names the identity, says what happened and what to do (usually a
rollout restart, since the webhook acts only when a pod is created). For
stale and orphaned drift it says what happens to the pods' tokens meanwhile:
in issuer mode /token refuses them at the next refresh, so the current token
is the last, and it expires at most one token lifetime after the drift was
first seen.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from webhook.drift import Assessment, Drift, DriftKind
from webhook.identities import Provider
from webhook.owners import Workload, advice
from webhook.status import timestamp

COMPONENT: Final = "workload-identity-webhook"
REASONS: Final = {
    DriftKind.MISSING: "IdentityMissing",
    DriftKind.STALE: "IdentityStale",
    DriftKind.ORPHANED: "IdentityOrphaned",
}
_MAX_MESSAGE: Final = 1024
_NAMED_PODS: Final = 3


@dataclass(frozen=True, slots=True, order=True)
class Notice:
    """One drift of one workload: what an Event is about."""

    namespace: str
    workload_kind: str
    workload_name: str
    kind: DriftKind
    provider: Provider
    identity: str


@dataclass(frozen=True, slots=True)
class Finding:
    """A drifted pod, with its workload and when the drift was first seen."""

    assessment: Assessment
    drift: Drift
    workload: Workload
    since: float


def notice_of(finding: Finding) -> Notice:
    w, d = finding.workload, finding.drift
    return Notice(w.namespace, w.kind, w.name, d.kind, d.provider, d.identity)


@dataclass(frozen=True, slots=True)
class _Words:
    """The words that change between one pod and several."""

    they: str
    them: str
    their: str
    hold: str
    does: str
    were: str
    sidecars_are: str
    sidecars_sign: str
    keep: str
    new_tokens: str
    tokens_expire: str

    @classmethod
    def of(cls, count: int) -> _Words:
        if count == 1:
            return cls(
                "it", "it", "its", "holds", "does", "was", "sidecar is",
                "sidecar signs", "keeps", "a new token", "token expires",
            )  # fmt: skip
        return cls(
            "they", "them", "their", "hold", "do", "were", "sidecars are",
            "sidecars sign", "keep", "new tokens", "tokens expire",
        )  # fmt: skip


def _subject(findings: Sequence[Finding]) -> str:
    """ "pod x", or "3 pods (a, b, c) of Deployment/api"."""
    workload = findings[0].workload
    names = sorted({f.assessment.pod.name for f in findings})
    if workload.kind == "Pod":
        return f"pod {workload.name}"
    shown = ", ".join(names[:_NAMED_PODS])
    more = f" and {len(names) - _NAMED_PODS} more" if len(names) > _NAMED_PODS else ""
    count = f"{len(names)} pod{'s' if len(names) != 1 else ''}"
    return f"{count} ({shown}{more}) of {workload}"


def _token_note(findings: Sequence[Finding], w: _Words) -> str:
    modes = {f.assessment.pod.signing_mode for f in findings}
    if modes == {"key"}:
        return (
            f"{w.their.capitalize()} {w.sidecars_sign} {w.their} own tokens (key "
            f"mode), so {w.they} {w.keep} this identity until re-created."
        )
    if all(f.drift.token_lifetime for f in findings):
        latest = max(f.since + (f.drift.token_lifetime or 0) for f in findings)
        moment = datetime.datetime.fromtimestamp(latest, datetime.UTC)
        expiry = f"by {timestamp(moment)} at the latest"
    else:
        expiry = "within the identity's token lifetime"
    refused = (
        f"/token refuses {w.them} {w.new_tokens} at {w.their} next refresh, and "
        f"{w.their} current {w.tokens_expire} {expiry}."
    )
    if modes == {"issuer"}:
        return f"In issuer mode, {refused}"
    return f"If {w.their} {w.sidecars_are} in issuer mode, {refused}"


def notice_message(findings: Sequence[Finding]) -> str:
    """The Event's message for the findings of one Notice."""
    drift, workload = findings[0].drift, findings[0].workload
    w = _Words.of(len({f.assessment.pod.name for f in findings}))
    what = f"{drift.provider.value} identity {drift.identity}"
    subject = _subject(findings)
    if drift.kind is DriftKind.MISSING:
        told = (
            f"{subject} should hold {what} but {w.does} not: {w.they} {w.were} "
            "created while the webhook was unavailable, or before the identity "
            f"covered {w.them}."
        )
        message = f"{told} To fix this, {advice(workload)}."
    else:
        now = (
            f"the rules choose {drift.expected} now"
            if drift.expected
            else f"the rules give {w.them} no {drift.provider.value} identity now"
        )
        if drift.kind is DriftKind.ORPHANED:
            told = f"{subject} {w.hold} {what}, which {drift.cause}; {now}."
        else:
            told = f"{subject} {w.hold} {what}, but {now}: {drift.cause}."
        todo = f"To give {w.them} what the rules say now, {advice(workload)}."
        message = f"{told} {_token_note(findings, w)} {todo}"
    return (message[0].upper() + message[1:])[:_MAX_MESSAGE]


def drift_event(
    notice: Notice,
    findings: Sequence[Finding],
    *,
    instance: str,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """A core/v1 Event on the workload, in its namespace."""
    workload = findings[0].workload
    stamp = timestamp(now)
    involved: Mapping[str, Any] = {
        "apiVersion": workload.api_version,
        "kind": workload.kind,
        "name": workload.name,
        "namespace": workload.namespace,
        **({"uid": workload.uid} if workload.uid else {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            # An object name is at most 253 characters; the suffix takes 17.
            "name": f"{workload.name[:236]}.{time.time_ns():x}",
            "namespace": notice.namespace,
        },
        "involvedObject": dict(involved),
        "type": "Warning",
        "reason": REASONS[notice.kind],
        "message": notice_message(findings),
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
