"""`status`: every identity as installed, pending or failed, and what differs
between what was installed and what the spec asks for now. Pure functions.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from webhook.cloud.state import InstallRecord


class InstallState(StrEnum):
    INSTALLED = "installed"
    PENDING = "pending"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class IdentityStatus:
    name: str
    provider: str
    state: InstallState
    summary: str
    difference: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "provider": self.provider,
            "state": self.state.value,
            "summary": self.summary,
            "difference": list(self.difference),
        }


def _pretty(value: Any) -> list[str]:
    return json.dumps(value, indent=2, sort_keys=True).splitlines()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; lists and documents stay whole."""
    if isinstance(value, Mapping) and prefix != "permissions.policyDocument":
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def snapshot_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable lines: what changed from `old` (installed) to `new`."""
    before, after = _flatten(old), _flatten(new)
    lines: list[str] = []
    for key in sorted(set(before) | set(after)):
        was, now = before.get(key), after.get(key)
        if was == now:
            continue
        if isinstance(was, list) and isinstance(now, list):
            added = sorted(set(map(str, now)) - set(map(str, was)))
            removed = sorted(set(map(str, was)) - set(map(str, now)))
            lines.append(f"{key}:")
            lines += [f"  + {item}" for item in added]
            lines += [f"  - {item}" for item in removed]
        elif isinstance(was, Mapping) or isinstance(now, Mapping):
            lines.append(f"{key}:")
            diff = difflib.unified_diff(
                _pretty(was) if was is not None else [],
                _pretty(now) if now is not None else [],
                "installed",
                "spec",
                lineterm="",
                n=1,
            )
            lines += [
                f"  {line}" for line in list(diff)[2:] if not line.startswith("@@")
            ]
        else:
            lines.append(f"{key}: {json.dumps(was)} -> {json.dumps(now)}")
    return lines


def _what_was_installed(record: InstallRecord) -> str:
    # A file has no generations; an object in a cluster starts at 1.
    if record.installed_generation:
        return f"generation {record.installed_generation}"
    return "the spec"


def identity_status(
    name: str,
    provider: str,
    snapshot: Mapping[str, Any],
    spec_hash: str,
    permissions_hash: str,
    record: InstallRecord | None,
) -> IdentityStatus:
    """Failed when the last attempt at this very spec failed; installed when
    this spec was installed; pending otherwise, with the difference.

    A record without a snapshot (a cluster's `.status` holds only the
    permissions hash) is compared on `spec.permissions` alone."""
    if record is not None and record.failure and record.failure.spec_hash == spec_hash:
        return IdentityStatus(
            name,
            provider,
            InstallState.FAILED,
            f"install failed at {record.failure.at}: {record.failure.message}",
        )
    compared = (
        (record.installed_hash, spec_hash)
        if record is not None and record.installed_hash
        else (record.installed_permissions_hash if record else "", permissions_hash)
    )
    if record is None or not compared[0]:
        return IdentityStatus(
            name, provider, InstallState.PENDING, "never installed: run install"
        )
    if compared[0] == compared[1]:
        return IdentityStatus(
            name,
            provider,
            InstallState.INSTALLED,
            f"{_what_was_installed(record)} installed"
            + (f" at {record.installed_at}" if record.installed_at else ""),
        )
    difference = (
        tuple(snapshot_difference(record.installed, snapshot))
        if record.installed is not None
        else ("spec.permissions changed",)
    )
    return IdentityStatus(
        name,
        provider,
        InstallState.PENDING,
        f"changed since {_what_was_installed(record)} was installed: run install",
        difference,
    )


def render_status(
    statuses: Iterable[IdentityStatus], orphans: Iterable[InstallRecord] = ()
) -> list[str]:
    rows = list(statuses)
    width = max([len(s.name) for s in rows] + [8])
    lines = [f"{'IDENTITY':<{width}}  PROVIDER  STATE      DETAIL"]
    for status in rows:
        lines.append(
            f"{status.name:<{width}}  {status.provider:<8}  {status.state.value:<9}  "
            f"{status.summary}"
        )
        lines += [f"{'':<{width}}    {line}" for line in status.difference]
    for record in orphans:
        lines.append(
            f"{record.identity:<{width}}  {record.provider:<8}  {'removed':<9}  "
            "no longer in the identities file; its cloud resources remain: "
            "delete them by hand if unused"
        )
    return lines
