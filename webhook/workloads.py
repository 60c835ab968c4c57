"""The `workloads` report: which pods hold which identity, what each pod holds
against what the rules give it now, and the drift, as JSON and as text.

The `drift` summary has one entry per (kind, identity) with its number of
pods: unfiltered, exactly what workload_identity_drift_pods exports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webhook.drift import Assessment, Drift, DriftKind, drift_counts, token_note
from webhook.identities import Identity, Provider
from webhook.owners import Workload, advice


@dataclass(frozen=True, slots=True)
class Filters:
    identity: str | None = None
    project: str | None = None
    namespace: str | None = None
    drift_only: bool = False
    every_pod: bool = False
    """List pods that neither hold nor should hold an identity, too."""

    def keeps(self, assessment: Assessment) -> bool:
        pod = assessment.pod
        if self.namespace is not None and pod.namespace != self.namespace:
            return False
        if self.project is not None and assessment.project != self.project:
            return False
        if self.identity is not None and self.identity not in _names(assessment):
            return False
        if self.drift_only:
            return bool(self.drifts_of(assessment))
        return self.every_pod or bool(_names(assessment))

    def drifts_of(self, assessment: Assessment) -> list[Drift]:
        return [
            d
            for d in assessment.drifts
            if self.identity is None or d.identity == self.identity
        ]


def _names(assessment: Assessment) -> set[str]:
    return (
        set(assessment.holds.values())
        | set(assessment.expected.values())
        | {d.identity for d in assessment.drifts}
    )


def _by_provider(values: Mapping[Provider, str]) -> dict[str, str]:
    return {p.value: v for p, v in sorted(values.items())}


def _token(drift: Drift, signing_mode: str) -> dict[str, Any] | None:
    if drift.kind is DriftKind.MISSING:
        return None
    issuer = signing_mode != "key"
    return {
        "signingMode": signing_mode or None,
        "refusedAtNextRefresh": issuer if signing_mode else None,
        "expiresWithinSeconds": drift.token_lifetime if issuer else None,
        "note": token_note(drift, signing_mode),
    }


def _drift_json(
    drift: Drift, assessment: Assessment, workload: Workload
) -> dict[str, Any]:
    return {
        "kind": drift.kind.value,
        "provider": drift.provider.value,
        "identity": drift.identity,
        "holds": drift.held,
        "expected": drift.expected,
        "reason": drift.reason,
        "token": _token(drift, assessment.pod.signing_mode),
        "action": advice(workload),
    }


def _pod_json(
    assessment: Assessment, workload: Workload, filters: Filters
) -> dict[str, Any]:
    pod = assessment.pod
    return {
        "namespace": pod.namespace,
        "name": pod.name,
        "workload": workload.as_json(),
        "project": assessment.project,
        "holds": _by_provider(assessment.holds),
        "expected": _by_provider(assessment.expected),
        "ineligible": assessment.ineligible or None,
        "drift": [
            _drift_json(d, assessment, workload) for d in filters.drifts_of(assessment)
        ],
    }


def _identities_json(
    assessments: Sequence[Assessment],
    identities: Sequence[Identity],
    invalid: frozenset[str],
    workload: Callable[[Assessment], Workload],
    filters: Filters,
) -> list[dict[str, Any]]:
    known: dict[str, dict[str, Any]] = {
        i.name: {"name": i.name, "provider": i.provider.value, "exists": True}
        for i in identities
    }
    holders: dict[str, list[dict[str, Any]]] = {name: [] for name in known}
    for assessment in assessments:
        pod = assessment.pod
        for provider, name in sorted(assessment.holds.items()):
            if name not in known:
                known[name] = {
                    "name": name,
                    "provider": provider.value,
                    "exists": False,
                    "invalid": name in invalid,
                }
                holders[name] = []
            holders[name].append(
                {
                    "namespace": pod.namespace,
                    "name": pod.name,
                    "workload": workload(assessment).as_json(),
                }
            )
    return [
        {**known[name], "pods": holders[name]}
        for name in sorted(known)
        if filters.identity is None or name == filters.identity
    ]


def workloads_report(
    assessments: Sequence[Assessment],
    *,
    identities: Sequence[Identity],
    invalid: frozenset[str],
    workload: Callable[[Assessment], Workload],
    filters: Filters,
) -> dict[str, Any]:
    """The report as JSON-ready data. `workload` names each pod's workload."""
    scoped = [
        a
        for a in assessments
        if Filters(
            namespace=filters.namespace, project=filters.project, every_pod=True
        ).keeps(a)
    ]
    counts = drift_counts(scoped)
    return {
        "identities": _identities_json(scoped, identities, invalid, workload, filters),
        "pods": [
            _pod_json(a, workload(a), filters) for a in scoped if filters.keeps(a)
        ],
        "drift": [
            {"kind": kind.value, "identity": identity, "pods": pods}
            for (kind, identity), pods in counts.items()
            if filters.identity is None or identity == filters.identity
        ],
    }


# --- text -------------------------------------------------------------------


def _pairs(values: Mapping[str, str]) -> str:
    return ", ".join(f"{p}={n}" for p, n in values.items()) or "-"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in rows
    ]


def render_text(report: Mapping[str, Any]) -> str:
    lines = ["Identities and the pods that hold them:"]
    if not report["identities"]:
        lines.append("  (no identities)")
    for identity in report["identities"]:
        state = "" if identity["exists"] else ", does not exist"
        if identity.get("invalid"):
            state = ", invalid"
        count = len(identity["pods"])
        lines.append(
            f"  {identity['name']} ({identity['provider']}{state}): "
            f"{count or 'no'} pod{'s' if count != 1 else ''}"
        )
        lines += [
            f"    {p['namespace']}/{p['name']}  "
            f"{p['workload']['kind']}/{p['workload']['name']}"
            for p in identity["pods"]
        ]
    lines += ["", "Pods: what each holds, and what the rules give it now:"]
    rows = [["POD", "WORKLOAD", "HOLDS", "RULES GIVE", "STATE"]]
    for pod in report["pods"]:
        kinds = sorted({d["kind"] for d in pod["drift"]})
        state = ",".join(kinds) or ("ok" if not pod["ineligible"] else "not eligible")
        rows.append(
            [
                f"{pod['namespace']}/{pod['name']}",
                f"{pod['workload']['kind']}/{pod['workload']['name']}",
                _pairs(pod["holds"]),
                _pairs(pod["expected"]),
                state,
            ]
        )
    lines += [f"  {row}" for row in _table(rows)] if len(rows) > 1 else ["  (no pods)"]
    drifted = [p for p in report["pods"] if p["drift"]]
    lines += ["", f"Drift: {len(drifted)} pod{'s' if len(drifted) != 1 else ''}"]
    for pod in drifted:
        for drift in pod["drift"]:
            lines.append(
                f"  {drift['kind'].upper()} {pod['namespace']}/{pod['name']} "
                f"({pod['workload']['kind']}/{pod['workload']['name']}): {drift['reason']}"
            )
            if drift["token"] is not None:
                lines.append(f"    tokens: {drift['token']['note']}")
            lines.append(f"    to fix: {drift['action']}")
    ineligible = [p for p in report["pods"] if p["ineligible"] and not p["drift"]]
    if ineligible:
        lines += ["", "Not eligible (the webhook would inject nothing):"]
        lines += [
            f"  {p['namespace']}/{p['name']}: {p['ineligible']}" for p in ineligible
        ]
    return "\n".join(lines) + "\n"
