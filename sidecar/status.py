"""What the probes answer, as plain functions of the refresh state and time.

Readiness: every expected file holds what the apps need, and each token has
more than the ready margin left. The native sidecar's startupProbe uses it, so
no app container starts without credentials.

Liveness: the refresh loop still makes progress, and no file holds a token
that has expired. A restart may help with the first; the second tells the
kubelet, and anyone looking, that the pod has lost its credentials.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sidecar.refresh import ProviderState


def readiness(
    states: Sequence[ProviderState], *, now: float, margin_seconds: float
) -> tuple[bool, dict[str, Any]]:
    """(ready, JSON body with one entry per expected file)."""
    report: dict[str, dict[str, Any]] = {}
    for state in states:
        for companion in state.config.companion_files:
            report[companion.path.name] = (
                {"ok": True, "status": "written"}
                if state.companions_written
                else {"ok": False, "status": "not written yet"}
            )
        report[state.config.token_path.name] = _token_file_status(
            state, now=now, margin_seconds=margin_seconds
        )
    ready = all(entry["ok"] for entry in report.values())
    return ready, {"ready": ready, "files": report}


def _token_file_status(
    state: ProviderState, *, now: float, margin_seconds: float
) -> dict[str, Any]:
    token = state.token
    entry: dict[str, Any] = {"provider": state.provider}
    if token is None:
        entry.update(ok=False, status="no token yet")
    else:
        left = token.expires_at - now
        entry.update(expiresAt=token.expires_at, secondsLeft=round(left, 3))
        if left <= 0:
            entry.update(ok=False, status="expired")
        elif left <= margin_seconds:
            entry.update(ok=False, status=f"expires within {margin_seconds:g} s")
        else:
            entry.update(ok=True, status="valid")
    if state.last_error is not None:
        entry["lastFailure"] = state.last_error.reason
    return entry


def liveness(
    states: Sequence[ProviderState],
    *,
    now: float,
    since_progress: float,
    stall_after: float,
) -> tuple[bool, dict[str, Any]]:
    """(live, JSON body); `since_progress` is the time since the last tick."""
    problems: list[str] = []
    if since_progress > stall_after:
        problems.append(
            f"the refresh loop has made no progress for {since_progress:.0f} s"
        )
    for state in states:
        token = state.token
        if token is not None and token.expires_at <= now:
            problems.append(f"the {state.provider} token in the file has expired")
    return not problems, {
        "live": not problems,
        "problems": problems,
        "secondsSinceProgress": round(since_progress, 3),
    }
