"""A WorkloadIdentity's `.status`: what `install` installed, whether the
current spec is pending install, and conditions.

`install --source kubernetes` writes what it applied
(`webhook.cloud.cluster_state`), `status` reads it, and the webhook keeps the
`Valid` condition and the `installed` flag current. Fields
(deploy/crd/workloadidentity.yaml):

- `installedPermissionsHash`: `permissions_hash(spec.permissions)` as installed;
  the spec is pending install while its own hash differs;
- `installedGeneration`, `installedAt`, `installedSpecHash`,
  `installedSnapshot`, `providerSetup`: what install applied, when, and to
  which cloud resources;
- `lastInstallFailure`: the last install that failed, until one succeeds;
- `installed`: whether the installed permissions are the current spec's (the
  `Installed` printer column);
- `observedGeneration`: the generation the status was last written for;
- `conditions`: `Valid` and `Installed`, keyed by type; `lastTransitionTime`
  moves only when a condition's status does.

Writes go through the status subresource carrying the resourceVersion read, so
two writers (two webhook replicas, or the webhook and `install`) never
overwrite each other: the one that loses with 409 reads again and recomputes.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from kubernetes_asyncio.client.exceptions import ApiException

from webhook.identities import IdentityError, parse_identity
from webhook.kube import GROUP, PLURAL, VERSION, Kube, call_json

CONDITION_VALID: Final = "Valid"
"""True when the webhook serves the identity; False with the field at fault."""

CONDITION_INSTALLED: Final = "Installed"
"""True when the permissions of the current spec are installed; False while
they are pending or the last install of this generation failed."""

_MAX_MESSAGE: Final = 32_768
"""The CRD's limit on a condition message."""

WRITE_ATTEMPTS: Final = 5
"""Conflicts (409) come from a concurrent writer; each retry reads afresh."""


def permissions_hash(permissions: Mapping[str, Any] | None) -> str:
    """A stable digest of `spec.permissions`: key order and spacing do not count."""
    canonical = json.dumps(
        permissions or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def timestamp(now: datetime.datetime | None = None) -> str:
    """RFC 3339 in UTC with seconds, as Kubernetes writes metav1.Time."""
    moment = now or datetime.datetime.now(datetime.UTC)
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str
    """"True", "False" or "Unknown"."""
    reason: str
    """CamelCase, for machines."""
    message: str
    """A sentence for people."""
    observed_generation: int = 0

    def matches(self, raw: Mapping[str, Any]) -> bool:
        """Whether `raw` says the same; its lastTransitionTime is not compared."""
        return (
            raw.get("type") == self.type
            and raw.get("status") == self.status
            and raw.get("reason") == self.reason
            and raw.get("message") == self.message[:_MAX_MESSAGE]
            and raw.get("observedGeneration", 0) == self.observed_generation
        )

    def to_dict(self, last_transition: str) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message[:_MAX_MESSAGE],
            "observedGeneration": self.observed_generation,
            "lastTransitionTime": last_transition,
        }


def validity(error: IdentityError | None, generation: int) -> Condition:
    """The `Valid` condition for an identity the webhook parsed."""
    if error is None:
        return Condition(
            CONDITION_VALID, "True", "Accepted", "the webhook serves this identity",
            generation,
        )  # fmt: skip
    return Condition(
        CONDITION_VALID,
        "False",
        "InvalidSpec",
        f"{error.faults()}; the webhook ignores this identity until the field is fixed",
        generation,
    )


@dataclass(frozen=True, slots=True)
class IdentityStatus:
    """The status of one identity as read, with what it implies."""

    name: str
    generation: int
    permissions_hash: str
    """Of the current `spec.permissions`."""
    installed_generation: int | None
    installed_permissions_hash: str | None
    """None when install never ran for this identity."""
    conditions: tuple[Mapping[str, Any], ...] = ()

    @property
    def installed(self) -> bool:
        """The permissions of the current spec are the ones installed."""
        return self.installed_permissions_hash == self.permissions_hash

    @property
    def pending(self) -> bool:
        """The current spec's permissions still have to be installed."""
        return not self.installed

    def condition(self, kind: str) -> Mapping[str, Any] | None:
        return next((c for c in self.conditions if c.get("type") == kind), None)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def status_of(obj: Mapping[str, Any]) -> IdentityStatus:
    """Read the status of a WorkloadIdentity object (a dict as the API serves it)."""
    metadata = _mapping(obj.get("metadata"))
    spec = _mapping(obj.get("spec"))
    status = _mapping(obj.get("status"))
    installed_hash = status.get("installedPermissionsHash")
    conditions = status.get("conditions")
    return IdentityStatus(
        name=str(metadata.get("name", "")),
        generation=_integer(metadata.get("generation")) or 0,
        permissions_hash=permissions_hash(_mapping(spec.get("permissions"))),
        installed_generation=_integer(status.get("installedGeneration")),
        installed_permissions_hash=(
            installed_hash
            if isinstance(installed_hash, str) and installed_hash
            else None
        ),
        conditions=tuple(
            c
            for c in (conditions if isinstance(conditions, list) else [])
            if isinstance(c, Mapping)
        ),
    )


def with_condition(
    status: Mapping[str, Any],
    condition: Condition,
    *,
    now: datetime.datetime | None = None,
) -> dict[str, Any] | None:
    """`status` with `condition` set, or None when it already says the same."""
    raw = status.get("conditions")
    conditions = [
        dict(c)
        for c in (raw if isinstance(raw, list) else [])
        if isinstance(c, Mapping)
    ]
    for index, current in enumerate(conditions):
        if current.get("type") != condition.type:
            continue
        if condition.matches(current):
            return None
        unchanged = current.get("status") == condition.status
        since = current.get("lastTransitionTime") if unchanged else None
        conditions[index] = condition.to_dict(since or timestamp(now))
        break
    else:
        conditions.append(condition.to_dict(timestamp(now)))
    return {**status, "conditions": conditions}


_FROM_OPTIONS: Final = ("issuer", "inlineJwksSha256")
"""Parts of an install snapshot that come from install's flags, not the spec."""

INSTALL_HINT: Final = "run `python -m webhook install --source kubernetes`"


def spec_installed(obj: Mapping[str, Any]) -> bool | None:
    """Whether what install applied covers `obj`'s current spec: its cloud
    target and permissions as in `installedSnapshot` (or, for a record without
    one, `spec.permissions` alone). None when install never succeeded."""
    current = status_of(obj)
    if current.installed_permissions_hash is None:
        return None
    snapshot = _mapping(_mapping(obj.get("status")).get("installedSnapshot"))
    if not snapshot:
        return current.installed
    # Imported here: the cloud side is not needed for anything else in here.
    from webhook.cloud.spec import canonical, install_snapshot

    try:
        now = install_snapshot(parse_identity(obj), str(snapshot.get("issuer", "")))
    except IdentityError:
        return current.installed  # the Valid condition says what is wrong
    from_spec = [
        {k: v for k, v in body.items() if k not in _FROM_OPTIONS}
        for body in (now, snapshot)
    ]
    return canonical(from_spec[0]) == canonical(from_spec[1])


def install_condition(obj: Mapping[str, Any]) -> Condition | None:
    """The `Installed` condition that `obj`'s status fields imply for its current
    spec, or None for an identity install never ran for.

    A failure counts while the spec is still the generation it failed for; a
    later edit makes the identity pending again (install has not seen it yet).
    """
    return _install_condition(obj, spec_installed(obj))


def _install_condition(
    obj: Mapping[str, Any], installed: bool | None
) -> Condition | None:
    status = _mapping(obj.get("status"))
    current = status_of(obj)
    failure = _mapping(status.get("lastInstallFailure"))
    if failure and failure.get("generation") == current.generation:
        return Condition(
            CONDITION_INSTALLED,
            "False",
            "InstallFailed",
            f"install of generation {current.generation} failed at "
            f"{failure.get('at', '?')}: {failure.get('message', '')}",
            current.generation,
        )
    if installed is None:
        if not failure:
            return None
        return Condition(
            CONDITION_INSTALLED,
            "False",
            "Pending",
            f"never installed; the spec changed since generation "
            f"{failure.get('generation', '?')} failed to install: {INSTALL_HINT}",
            current.generation,
        )
    if installed:
        return Condition(
            CONDITION_INSTALLED,
            "True",
            "Installed",
            "the cloud target and permissions of the current spec are installed "
            f"(generation {current.installed_generation})",
            current.generation,
        )
    return Condition(
        CONDITION_INSTALLED,
        "False",
        "Pending",
        "the cloud target or permissions changed since generation "
        f"{current.installed_generation} was installed: {INSTALL_HINT}",
        current.generation,
    )


def with_install_state(
    obj: Mapping[str, Any], *, now: datetime.datetime | None = None
) -> dict[str, Any] | None:
    """`obj`'s status with `installed` and the `Installed` condition brought up to
    date with its current spec, or None when they already are.

    The webhook calls it for every identity it watches, so an edit that needs
    an install turns the Installed column to false without anyone running
    `status`.
    """
    installed = spec_installed(obj)  # parses the spec: once per call
    condition = _install_condition(obj, installed)
    if condition is None:
        return None
    status = dict(_mapping(obj.get("status")))
    changed = status.get("installed") is not bool(installed)
    status["installed"] = bool(installed)
    updated = with_condition(status, condition, now=now)
    if updated is None:
        return status if changed else None
    return updated


# --- on the API server ------------------------------------------------------

StatusChange = Callable[[Mapping[str, Any]], dict[str, Any] | None]
"""From the object as just read to its new status, or None to leave it."""


async def get_identity(kube: Kube, name: str) -> dict[str, Any]:
    """The WorkloadIdentity `name`; ApiException 404 when there is none."""
    found: dict[str, Any] = await call_json(
        kube.custom.get_cluster_custom_object,
        GROUP,
        VERSION,
        PLURAL,
        name,
        request_timeout=kube.timeout,
    )
    return found


async def read_identity_status(kube: Kube, name: str) -> IdentityStatus:
    return status_of(await get_identity(kube, name))


async def update_status(kube: Kube, name: str, change: StatusChange) -> bool:
    """Read `name`, apply `change`, write the status back; True if written.

    A 409 (someone wrote in between) reads again and reapplies `change`, up to
    WRITE_ATTEMPTS times; other errors propagate.
    """
    attempt = 0
    while True:
        attempt += 1
        obj = await get_identity(kube, name)
        status = change(obj)
        if status is None:
            return False
        try:
            await call_json(
                kube.custom.replace_cluster_custom_object_status,
                GROUP,
                VERSION,
                PLURAL,
                name,
                {**obj, "status": status},
                request_timeout=kube.timeout,
            )
        except ApiException as exc:
            if exc.status == 409 and attempt < WRITE_ATTEMPTS:
                continue
            raise
        return True


async def write_condition(kube: Kube, name: str, condition: Condition) -> bool:
    """Set `condition` on `name`; False when the status already said so."""
    return await update_status(
        kube, name, lambda obj: with_condition(_mapping(obj.get("status")), condition)
    )
