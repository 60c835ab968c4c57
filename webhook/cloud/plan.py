"""Plans (the calls `install` makes) and findings (what `verify` saw), and
how both are printed. A dry run prints the plan and makes none of its calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

_VERBS = {"PATCH": "update", "DELETE": "delete"}


@dataclass(frozen=True, slots=True)
class ReadDenied:
    """A read the credentials may not make: the resource may well exist."""

    permission: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class Call:
    """One mutating cloud call, exactly as it would be made."""

    api: str
    """`iam` or `sts` for AWS; the Google API host for GCP."""
    action: str
    """The AWS operation (`CreateRole`), or a Google method and path
    (`POST v1/projects/1/locations/global/workloadIdentityPools?...`)."""
    params: Mapping[str, Any]
    """AWS request parameters, or the Google request body."""
    why: str
    permission: str = ""
    """The permission the call needs, printed with the plan."""
    long_running: bool = False
    """A Google long-running operation: the executor waits until it is done."""
    deferred: bool = False
    """Made in a later round, once the resource it needs exists and can be
    read again (a policy set with the etag of a new resource)."""

    def headline(self) -> str:
        return f"{self.api} {self.action}"

    def short(self) -> str:
        """`CreateRole`, `create workloadIdentityPools`, `setIamPolicy serviceAccounts`."""
        if " " not in self.action:
            return self.action
        method, path = self.action.split(" ", 1)
        parts = path.split("?", 1)[0].split("/")
        if ":" in parts[-1]:
            return f"{parts[-1].split(':', 1)[1]} {parts[-2]}"
        if method == "POST":
            return f"create {parts[-1]}"
        return f"{_VERBS.get(method, method)} {parts[-2]}"


class Check(StrEnum):
    OK = "ok"
    WRONG = "wrong"
    UNKNOWN = "unknown"
    """Could not be checked, typically for lack of read permission: the
    setup may well be right."""


@dataclass(frozen=True, slots=True)
class Finding:
    check: Check
    subject: str
    message: str
    hint: str = ""

    def text(self) -> str:
        text = f"{self.subject}: {self.message}"
        return f"{text}; {self.hint}" if self.hint else text

    def line(self) -> str:
        mark = {Check.OK: "ok     ", Check.WRONG: "WRONG  ", Check.UNKNOWN: "UNKNOWN"}
        return f"{mark[self.check]} {self.text()}"


def ok(subject: str, message: str) -> Finding:
    return Finding(Check.OK, subject, message)


def wrong(subject: str, message: str, hint: str = "") -> Finding:
    return Finding(Check.WRONG, subject, message, hint)


def unknown(subject: str, message: str, hint: str = "") -> Finding:
    return Finding(Check.UNKNOWN, subject, message, hint)


@dataclass(frozen=True, slots=True)
class Plan:
    identity: str
    provider: str
    calls: tuple[Call, ...] = ()
    notes: tuple[str, ...] = ()
    """Instructions (manual setup, trust an existing role needs) and warnings."""
    blockers: tuple[Finding, ...] = ()
    """Problems that stop `install` for this identity before any call."""
    setup: Mapping[str, Any] = field(default_factory=dict)
    """The provider setup to record: mode and the cloud resource it names."""

    @property
    def changes(self) -> bool:
        return bool(self.calls)


def _decoded(value: Any) -> Any:
    """A JSON document passed as a string (IAM policies) shown as JSON."""
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _params(params: Mapping[str, Any]) -> list[str]:
    shown = {key: _decoded(value) for key, value in params.items()}
    return json.dumps(shown, indent=2, sort_keys=True).splitlines()


def render_call(index: int, call: Call) -> list[str]:
    lines = [f"  {index}. {call.headline()}", f"     why: {call.why}"]
    if any(_decoded(v) is not v for v in call.params.values()):
        lines.append("     (policy documents are sent as JSON strings; shown decoded)")
    if call.permission:
        lines.append(f"     needs: {call.permission}")
    if call.long_running:
        lines.append("     (a long-running operation: waits until it is done)")
    if call.deferred:
        lines.append(
            "     (after the calls above: reads the new resource again for its etag)"
        )
    lines.extend(f"     {line}" for line in _params(call.params))
    return lines


def render_plan(plan: Plan, *, dry_run: bool) -> list[str]:
    """The plan of one identity, as `install` and `install --dry-run` print it."""
    head = f"{plan.identity} ({plan.provider})"
    lines: list[str] = []
    if plan.blockers:
        lines.append(f"{head}: cannot install:")
        lines.extend(f"  {finding.line()}" for finding in plan.blockers)
    elif not plan.calls:
        lines.append(f"{head}: up to date, nothing to change")
    elif dry_run:
        count = len(plan.calls)
        lines.append(
            f"{head}: dry run: would make {count} call{'s' * (count != 1)}, made none:"
        )
    else:
        count = len(plan.calls)
        lines.append(f"{head}: making {count} call{'s' * (count != 1)}:")
    if not plan.blockers:
        for index, call in enumerate(plan.calls, start=1):
            lines.extend(render_call(index, call))
    lines.extend(note_lines(plan.notes))
    return lines


def note_lines(notes: Iterable[str]) -> list[str]:
    lines: list[str] = []
    for note in notes:
        first, *rest = note.splitlines() or [""]
        lines.append(f"  note: {first}")
        lines.extend(f"        {line}" for line in rest)
    return lines


def render_findings(
    identity: str, provider: str, findings: Iterable[Finding]
) -> list[str]:
    found = list(findings)
    worst = verdict(found)
    lines = [f"{identity} ({provider}): {worst.value if worst else 'nothing to check'}"]
    lines.extend(f"  {finding.line()}" for finding in found)
    return lines


def verdict(findings: Iterable[Finding]) -> Check | None:
    """WRONG beats UNKNOWN beats OK; None when there was nothing to check."""
    checks = {finding.check for finding in findings}
    for check in (Check.WRONG, Check.UNKNOWN, Check.OK):
        if check in checks:
            return check
    return None
