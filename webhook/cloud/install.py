"""install, verify and status: observe, plan, apply and record, per identity.

One identity's failure never stops the others. A dry run observes and plans
exactly like install and prints every call, but makes none and records
nothing. A call that loses a race (an etag that changed) makes install read
again and plan afresh, and so does a call that must wait for a resource made
in the same run (a policy on a new service account needs its etag).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, TextIO

from webhook.cloud.errors import CloudError, ErrorKind
from webhook.cloud.plan import (
    Call,
    Check,
    Finding,
    Plan,
    render_findings,
    render_plan,
    verdict,
    wrong,
)
from webhook.cloud.report import IdentityStatus, InstallState, identity_status
from webhook.cloud.spec import (
    InstallOptions,
    RoleMode,
    canonical,
    parse_permissions,
    snapshot_hash,
)
from webhook.cloud.state import IdentityGone, InstallRecord, RecordError, StatusStore
from webhook.identities import Identity, IdentityError, Provider
from webhook.status import permissions_hash

ROUNDS: Final = 4
"""Observe-plan-apply rounds per identity: a lost race (a changed etag) or a
call deferred until a new resource exists each take one more round."""


class CloudSide(Protocol):
    """One cloud, as install and verify use it (AwsCloud, GcpCloud)."""

    def plan(self, identity: Identity, options: InstallOptions) -> Plan: ...

    def apply(self, identity: Identity, call: Call) -> None: ...

    def verify(self, identity: Identity, options: InstallOptions) -> list[Finding]: ...


@dataclass(slots=True)
class Clouds:
    """Each cloud is made on first use: an AWS-only run needs no Google
    credentials, and the reverse."""

    factories: Mapping[Provider, Callable[[], CloudSide]]
    _made: dict[Provider, CloudSide] = field(default_factory=dict)

    def get(self, provider: Provider) -> CloudSide:
        if provider not in self._made:
            self._made[provider] = self.factories[provider]()
        return self._made[provider]


@dataclass(frozen=True, slots=True)
class Outcome:
    identity: str
    ok: bool
    changed: bool = False
    message: str = ""
    calls: tuple[Call, ...] = ()
    """What was called (or, in a dry run, would be)."""


def shared_role_conflicts(identities: Sequence[Identity]) -> dict[str, Finding]:
    """Managed AWS roles are owned by one identity: two identities writing
    the same role's trust policy would lock each other out."""
    owners: dict[str, list[str]] = {}
    for identity in identities:
        if identity.aws is None:
            continue
        try:
            mode = parse_permissions(identity).mode
        except IdentityError:
            continue
        if mode is RoleMode.MANAGED:
            owners.setdefault(identity.aws.role_arn, []).append(identity.name)
    conflicts: dict[str, Finding] = {}
    for role, names in owners.items():
        if len(names) > 1:
            for name in names:
                conflicts[name] = wrong(
                    "role",
                    f"{role} is managed by {', '.join(names)}",
                    "give each identity its own role, or set permissions.mode: existing "
                    "on all but one",
                )
    return conflicts


def _without_planned(plan: Plan, planned: dict[str, str]) -> Plan:
    """In a dry run, a call an earlier identity already planned (a shared
    provider or pool) is listed once."""
    if plan.blockers:
        return plan
    kept: list[Call] = []
    notes = list(plan.notes)
    for call in plan.calls:
        key = f"{call.api} {call.action} {canonical(dict(call.params))}"
        if key in planned:
            notes.append(f"{call.headline()} is planned above, for {planned[key]}")
            continue
        planned[key] = plan.identity
        kept.append(call)
    return dataclasses.replace(plan, calls=tuple(kept), notes=tuple(notes))


def _write(out: TextIO, lines: Sequence[str]) -> None:
    for line in lines:
        out.write(line + "\n")


@dataclass(slots=True)
class Installer:
    options: InstallOptions
    clouds: Clouds
    store: StatusStore | None
    out: TextIO
    dry_run: bool = False
    _planned: dict[str, str] = field(default_factory=dict)

    def run(self, identities: Sequence[Identity]) -> list[Outcome]:
        records = self.store.load() if self.store is not None else {}
        conflicts = shared_role_conflicts(identities)
        outcomes = []
        for identity in identities:
            record = records.get(identity.name) or InstallRecord(
                identity.name, identity.provider.value
            )
            outcomes.append(self._one(identity, record, conflicts.get(identity.name)))
        return outcomes

    def _fail(
        self,
        record: InstallRecord,
        spec_hash: str,
        generation: int,
        message: str,
        *,
        shown: bool = False,
    ) -> Outcome:
        if not shown:
            self.out.write(f"  FAILED: {message}\n")
        if self.store is not None and not self.dry_run:
            try:
                self.store.save(record.failed(spec_hash, generation, message))
            except RecordError as exc:
                self.out.write(f"  and the failure could not be recorded: {exc}\n")
        return Outcome(record.identity, ok=False, message=message)

    def _one(
        self, identity: Identity, record: InstallRecord, conflict: Finding | None
    ) -> Outcome:
        head = f"{identity.name} ({identity.provider.value})"
        try:
            snapshot = self.options.snapshot(identity)
        except IdentityError as exc:
            self.out.write(f"{head}: cannot install:\n")
            return self._fail(record, "", identity.generation, str(exc))
        spec_hash = snapshot_hash(snapshot)
        if conflict is not None:
            self.out.write(f"{head}: cannot install:\n  {conflict.line()}\n")
            return self._fail(
                record, spec_hash, identity.generation, conflict.text(), shown=True
            )
        side = self.clouds.get(identity.provider)
        made: list[Call] = []
        for attempt in range(1, ROUNDS + 1):
            try:
                plan = side.plan(identity, self.options)
            except CloudError as exc:
                self.out.write(f"{head}: cannot read the current state:\n")
                return self._fail(record, spec_hash, identity.generation, str(exc))
            if self.dry_run:
                plan = _without_planned(plan, self._planned)
            if attempt == 1 or plan.blockers:
                _write(self.out, render_plan(plan, dry_run=self.dry_run))
            else:
                _write(
                    self.out,
                    [f"  read again; next: {c.headline()}" for c in plan.calls],
                )
            if plan.blockers:
                message = "; ".join(finding.text() for finding in plan.blockers)
                return self._fail(
                    record, spec_hash, identity.generation, message, shown=True
                )
            if self.dry_run:
                return Outcome(
                    identity.name, ok=True, changed=plan.changes, calls=plan.calls
                )
            now = [call for call in plan.calls if not call.deferred]
            try:
                for call in now:
                    side.apply(identity, call)
                    made.append(call)
            except CloudError as exc:
                if exc.kind is ErrorKind.CONFLICT and attempt < ROUNDS:
                    self.out.write(f"  changed meanwhile ({exc.what}); reading again\n")
                    continue
                return self._fail(record, spec_hash, identity.generation, str(exc))
            if len(now) == len(plan.calls):
                return self._succeeded(
                    identity, record, plan.setup, made, snapshot, spec_hash
                )
        message = f"the cloud did not settle after {ROUNDS} rounds; run install again"
        return self._fail(record, spec_hash, identity.generation, message)

    def _succeeded(
        self,
        identity: Identity,
        record: InstallRecord,
        setup: Mapping[str, object],
        made: Sequence[Call],
        snapshot: Mapping[str, object],
        spec_hash: str,
    ) -> Outcome:
        if made:
            self.out.write(f"  installed: {len(made)} change(s) made\n")
        unchanged_record = (
            record.installed_hash == spec_hash
            and record.failure is None
            and dict(record.setup) == dict(setup)
        )
        if self.store is not None and not unchanged_record:
            try:
                self.store.save(
                    record.succeeded(
                        snapshot,
                        spec_hash,
                        permissions_hash(identity.permissions),
                        identity.generation,
                        setup,
                    )
                )
            except IdentityGone as exc:
                # Deleted meanwhile: what was made in the cloud stays, as after
                # any deletion (install never deletes cloud resources).
                self.out.write(f"  installed, but not recorded: {exc}\n")
                return Outcome(identity.name, ok=True, changed=bool(made))
            except RecordError as exc:
                message = f"installed in the cloud, but not recorded: {exc}"
                self.out.write(f"  FAILED: {message}\n")
                return Outcome(identity.name, ok=False, message=message)
            if not made:
                self.out.write(
                    "  nothing changed in the cloud; recorded as installed\n"
                )
        return Outcome(identity.name, ok=True, changed=bool(made), calls=tuple(made))


def verify(
    identities: Sequence[Identity],
    options: InstallOptions,
    clouds: Clouds,
    out: TextIO,
) -> Check | None:
    """Print what is right, wrong or unreadable per identity; the worst."""
    everything: list[Finding] = []
    for identity in identities:
        try:
            findings = clouds.get(identity.provider).verify(identity, options)
        except IdentityError as exc:
            findings = [wrong("spec", str(exc))]
        except CloudError as exc:
            # An error that is not about the setup (no credentials, an endpoint
            # out of reach) proves nothing either way.
            check = Check.WRONG if exc.kind is ErrorKind.INVALID else Check.UNKNOWN
            findings = [Finding(check, "cloud", f"cannot verify: {exc.what}", exc.hint)]
        _write(out, render_findings(identity.name, identity.provider.value, findings))
        everything += findings
    return verdict(everything)


def statuses(
    identities: Sequence[Identity],
    options: InstallOptions,
    records: Mapping[str, InstallRecord],
) -> list[IdentityStatus]:
    result = []
    for identity in identities:
        try:
            snapshot = options.snapshot(identity)
        except IdentityError as exc:
            result.append(
                IdentityStatus(
                    identity.name,
                    identity.provider.value,
                    InstallState.FAILED,
                    f"invalid spec: {exc}",
                )
            )
            continue
        result.append(
            identity_status(
                identity.name,
                identity.provider.value,
                snapshot,
                snapshot_hash(snapshot),
                permissions_hash(identity.permissions),
                records.get(identity.name),
            )
        )
    return result
